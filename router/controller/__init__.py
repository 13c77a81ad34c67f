"""The adaptive weight controller: Prometheus and health probes in, nginx weights out.

Never on the request path: if it stops, nginx keeps serving with the last
configuration it wrote.
"""
