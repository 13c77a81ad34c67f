"""Making a key store the running gateway's keys: `fleet keys` here, and the
controller when the other gateway of a pair sends its store."""

from __future__ import annotations

from router.config.spec import ClusterSpec
from router.disk import keys
from router.disk.paths import RuntimePaths, write_atomic
from router.render.keys import render_keys_conf
from router.runtime import gateway as gateway_reload


def apply_keys(spec: ClusterSpec, store: keys.KeyStore) -> str:
    """Make ``store`` the gateway's keys; say how it took effect. The store is
    saved only once the running gateway accepted it, so a failed reload
    leaves keys and gateway as they were."""
    paths = RuntimePaths(spec.runtime_dir)
    rendered = render_keys_conf(store)
    if gateway_reload.gateway_pid(paths) is not None:
        seconds = gateway_reload.apply_gateway_file(
            paths, paths.api_keys_conf, rendered.text, version=rendered.version,
            version_url=gateway_reload.status_url(spec.gateway.status_port, "keys"),
            mode=0o600)
        outcome = f"the running gateway uses it (reloaded in {seconds:.2f}s)"
    else:
        outcome = "the gateway is not running; it applies at the next `fleet up`"
        if paths.config_dir.is_dir():
            write_atomic(paths.api_keys_conf, rendered.text, mode=0o600)
    keys.save_store(paths.api_keys, store)
    if not spec.auth.enabled:
        outcome += ("; note: auth.enabled is false in this spec, so keys are not checked "
                    "until you set it to true")
    return outcome
