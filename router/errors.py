"""Exceptions raised by llm-fleet.

Every error that reaches a user carries a one-line message and a hint that
says how to fix it. The CLI prints ``error: <message>`` and ``hint: <hint>``
and maps the class to an exit status.

    FleetError
    ├── SpecError            the cluster spec is unreadable or invalid
    ├── EnvironmentError_    a program or package the cluster needs is missing
    ├── DeviceError          GPU discovery disagrees with the spec
    ├── ModelError           a model is missing or cannot be prepared
    ├── RenderError          a rendered config was rejected (nginx -t, promtool)
    ├── MetricsUnavailable   Prometheus did not answer or refused a query
    ├── NginxReloadFailed    a new upstream was not applied; the old one was restored
    ├── ClusterError         starting, stopping or talking to the cluster failed
    └── BundleError          an offline bundle could not be built or does not check out
"""

from __future__ import annotations


class FleetError(Exception):
    """Base class: ``message`` says what is wrong, ``hint`` how to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class SpecError(FleetError):
    """The cluster spec cannot be read or fails validation; nothing was touched."""

    exit_code = 2

    def __init__(self, message: str, hint: str = "", problems: list[str] | None = None) -> None:
        super().__init__(message, hint)
        self.problems = problems or []


class EnvironmentError_(FleetError):  # noqa: N801 - avoid shadowing the builtin
    """A system program or Python package the cluster needs is not installed."""

    exit_code = 3


class DeviceError(FleetError):
    """The GPUs found do not fit what the spec asks for."""

    exit_code = 2


class ModelError(FleetError):
    """The model is missing from the local cache or could not be prepared."""

    exit_code = 4


class RenderError(FleetError):
    """A rendered configuration failed its check; the running one was kept."""

    exit_code = 5


class MetricsUnavailable(FleetError):
    """Prometheus is down, slow or refused a query; the controller holds weights."""

    exit_code = 7


class NginxReloadFailed(FleetError):
    """An upstream change failed `nginx -t`, the reload or its check; rolled back."""

    exit_code = 5


class NginxTestFailed(NginxReloadFailed):
    """`nginx -t` rejected a new configuration file; it was never loaded."""


class ConfigWriteFailed(NginxReloadFailed):
    """A new config file could not be written (a full disk); the old one serves on."""


class ClusterError(FleetError):
    """The cluster could not be started, reached or stopped."""

    exit_code = 6


class BundleError(FleetError):
    """An offline bundle could not be built, or its parts do not match the manifest."""

    exit_code = 8
