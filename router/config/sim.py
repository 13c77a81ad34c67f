"""Settings of one simulated replica, declared once.

The same model is the `sim` section of the cluster spec (fleet-wide
defaults plus per-replica overrides) and the options of `fleet sim serve`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# What the simulator reports as its vLLM version: the one its metrics and
# response shapes were copied from.
VLLM_VERSION = "0.32.0"


class SimFaults(BaseModel):
    """Faults a simulated replica starts with (all can change at run time)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Refuse connections for this long after start, like vLLM loading weights.
    startup_delay_s: float = Field(default=0.0, ge=0.0, le=3600.0)
    # Speed multiplier on top of `speed` (a throttled GPU is 0.33).
    slow: float = Field(default=1.0, gt=0.0, le=100.0)
    # Fraction of generation requests answered with a 500.
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    # Accept connections but never answer, with sockets left open.
    hang: bool = False
    # Exit with status 1 as it starts while this file exists, like vLLM on a
    # missing model or too little free GPU memory: a crash loop. Removing
    # the file is the fix. Read at start only.
    fail_start_while: str | None = Field(default=None, min_length=1)


# Latency-model constants fitted to a real GPU replica, by name. Each names
# the report whose runs it was fitted to and that says how close it comes.
PROFILES: dict[str, dict[str, Any]] = {
    # vLLM 0.26.0 on one H200, Qwen2.5-7B-Instruct-AWQ's architecture
    # (docs/benchmarks/gpu-h200): ITL 3.7 ms alone and 16 ms at 256 streams.
    "h200-qwen2.5-7b-awq": {
        "decode_step_s": 0.0030,
        "decode_s_per_seq": 0.000035,
        "prefill_s_per_token": 0.000014,
        "max_num_seqs": 256,
        "kv_capacity_tokens": 986_592,
        "max_model_len": 8192,
    },
}


class SimSettings(BaseModel):
    """One simulated replica: capacity, speed and the latency model's constants."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    speed: float = Field(default=1.0, gt=0.0, le=100.0)
    max_num_seqs: int = Field(default=256, ge=1, le=100_000)
    max_model_len: int = Field(default=8192, ge=16)
    kv_capacity_tokens: int = Field(default=200_000, ge=16)
    # Mean length of an answer that ends at a simulated EOS (ignore_eos
    # requests always run to max_tokens).
    mean_output_tokens: int = Field(default=128, ge=1)
    decode_step_s: float = Field(default=0.010, gt=0.0)
    decode_s_per_seq: float = Field(default=0.0002, ge=0.0)
    prefill_s_per_token: float = Field(default=0.00002, ge=0.0)
    seed: int = 0
    # vLLM's automatic prefix caching, on by default as in vLLM
    # (router.sim.prefix_cache): cached prompt blocks are not prefilled.
    prefix_caching: bool = True
    # vLLM's --scheduling-policy: fcfs admits in arrival order; priority
    # admits the lowest `priority` of the waiting requests first (ties in
    # arrival order). Set from the spec's priority.enabled.
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    faults: SimFaults = SimFaults()
    # A name from PROFILES: its constants fill every field not given here.
    profile: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("profile") is None:
            return data
        profile = data["profile"]
        constants = PROFILES.get(profile) if isinstance(profile, str) else None
        if constants is None:
            raise ValueError(f"profile {data['profile']!r} is unknown; profiles are: "
                             + ", ".join(sorted(PROFILES)))
        return {**constants, **data}
