#!/bin/sh
# keepalived's health check of the local llm-fleet gateway: healthy while the
# gateway answers /health (200 as long as one replica in rotation answers).
# Two failures in a row (see `fall` in keepalived.conf) move the virtual IP
# to the other host. Install as /etc/keepalived/check_gateway.sh, owned by
# root, mode 0755.
exec curl --silent --fail --max-time 2 --output /dev/null \
  "http://${LLM_FLEET_GATEWAY:-127.0.0.1:8080}/health"
