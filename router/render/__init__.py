"""How each file of a cluster is written: pure functions, plan in, text out.

Machine facts (run user, console location, executables) come in as a
:class:`router.host.machine.MachineFacts`; nothing here reads the machine.
Writing and checking the files is :mod:`router.runtime.configs`.
"""
