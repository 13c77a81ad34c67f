"""Run one simulated replica in this process (`fleet sim serve`)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import uvicorn

from router.config.sim import SimSettings
from router.sim.server import SimApp

log = logging.getLogger(__name__)


def serve(settings: SimSettings, host: str, port: int, served_model_name: str) -> None:
    """Serve until stopped; with startup_delay_s, refuse connections that long first.

    With fail_start_while naming a file that exists, exit with status 1 at once.
    """
    flag = settings.faults.fail_start_while
    if flag is not None and Path(flag).exists():
        # The shape of vLLM's own last line when it cannot start.
        log.error("ValueError: simulated start-up failure: %s exists "
                  "(faults.fail_start_while); remove it to let this replica start", flag)
        sys.exit(1)
    if settings.faults.startup_delay_s:
        # vLLM binds only once its weights are loaded: until then clients get
        # "connection refused", which is what the gateway must handle.
        log.info("startup_delay: not listening for %.1fs", settings.faults.startup_delay_s)
        time.sleep(settings.faults.startup_delay_s)
    app = SimApp(settings, served_model_name)
    config = uvicorn.Config(app, host=host, port=port, loop="uvloop", http="httptools",
                            lifespan="on", access_log=False, log_level="warning",
                            timeout_keep_alive=75, backlog=4096,
                            # A hung request never ends by itself; do not wait on it.
                            timeout_graceful_shutdown=2)
    log.info("simulated replica of '%s' on %s:%d speed=%g max_num_seqs=%d", served_model_name,
             host, port, settings.speed, settings.max_num_seqs)
    uvicorn.Server(config).run()
