"""A vLLM-compatible simulated replica: a test instrument for fleets no CPU can serve.

Faithful where the gateway and the controller look: the OpenAI endpoints
and response shapes, vLLM's metric names, types, labels and buckets, and a
continuous-batching latency model with faults on demand.
"""

from router.config.sim import SimFaults, SimSettings

__all__ = ["SimFaults", "SimSettings"]
