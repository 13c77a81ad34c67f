"""The cluster spec: one YAML file, parsed into frozen, typed models.

Every default of llm-fleet is declared here, once. Values that depend on the
engine (which model, how much memory to give vLLM) live in
``ENGINE_DEFAULTS`` and are resolved by :func:`resolve_engine_settings`;
everything else is a field default below.

Loading never has side effects: a spec that fails validation raises
:class:`~router.errors.SpecError` listing every problem with the path of the
bad key, and the running cluster is never touched.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from router import REPO_ROOT
from router.affinity import AffinityMode
from router.config.sim import VLLM_VERSION, SimSettings
from router.errors import SpecError

EXAMPLE_SPEC = REPO_ROOT / "deploy" / "cluster.example.yaml"
# Hex digits of a spec generation: enough to tell the specs of one fleet apart.
GENERATION_LENGTH = 8

Engine = Literal["auto", "gpu", "cpu", "sim", "external"]
ResolvedEngine = Literal["gpu", "cpu", "sim", "external"]
VllmEngine = Literal["gpu", "cpu"]
Port = Annotated[int, Field(ge=1, le=65535)]

# nginx size syntax: a number with an optional k/m/g suffix.
_NGINX_SIZE = re.compile(r"^[1-9][0-9]*[kKmMgG]?$")

# A CPU fleet under `replicas: auto` gets one replica per core, but no more than
# this: a third replica on a 2-core box only steals cycles from the other two.
CPU_AUTO_REPLICAS_MAX = 2
# A simulated fleet under `replicas: auto`: the reference box's four GPUs.
SIM_AUTO_REPLICAS = 4
SIM_SERVED_MODEL_NAME = "sim-model"
# One box: eight GPUs with gpu.replicas_per_gpu at its maximum of 8.
MAX_REPLICAS = 64
# What the served name of a dummy-weight model ends with, so no client can
# take its noise for answers.
DUMMY_MARK = "dummy"


def _xdg(var: str, fallback: str) -> Path:
    base = os.environ.get(var)
    return Path(base) if base else Path.home() / fallback


def default_runtime_dir() -> Path:
    """Where a running cluster keeps its configs, logs, sockets and state."""
    return _xdg("XDG_STATE_HOME", ".local/state") / "llm-fleet"


def default_model_cache() -> Path:
    """Where prepared model folders are cached (never written at serve time)."""
    return _xdg("XDG_CACHE_HOME", ".cache") / "llm-fleet" / "models"


@dataclass(frozen=True)
class EngineDefaults:
    """Per-engine defaults, used where the spec leaves a field unset."""

    model: str
    served_model_name: str
    max_num_seqs: int
    max_model_len: int
    gpu_memory_utilization: float


ENGINE_DEFAULTS: dict[VllmEngine, EngineDefaults] = {
    # Reference box: a 7B AWQ model (about 5.5 GB of weights) on a 24 GB card
    # leaves most of the 0.90 share for the KV cache.
    "gpu": EngineDefaults(
        model="Qwen/Qwen2.5-7B-Instruct-AWQ",
        served_model_name="qwen2.5-7b-instruct",
        max_num_seqs=64,
        max_model_len=8192,
        gpu_memory_utilization=0.90,
    ),
    # On CPU vLLM reads gpu_memory_utilization as a fraction of host memory;
    # the KV cache itself is sized by VLLM_CPU_KVCACHE_SPACE (GiB).
    "cpu": EngineDefaults(
        model="HuggingFaceTB/SmolLM2-135M-Instruct",
        served_model_name="smollm2-135m-instruct",
        max_num_seqs=16,
        max_model_len=2048,
        gpu_memory_utilization=0.10,
    ),
}


def _expand_home(path: Path) -> Path:
    try:
        return path.expanduser()
    except RuntimeError:
        raise ValueError(f"{str(path).split('/')[0]!r} names no user on this machine; "
                         "write the folder out in full") from None


class _Model(BaseModel):
    # YAML reads `.inf` and `.nan` as floats; no setting means either.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class GatewaySpec(_Model):
    """The nginx gateway: the one URL clients use."""

    host: str = "127.0.0.1"
    port: Port = 8080
    # stub_status for the nginx exporter; always bound to loopback.
    status_port: Port = 8081
    # Request bodies above this get a JSON 413 (nginx size syntax).
    max_body_size: str = "1m"
    # Between two reads from a replica, not the whole response: a long queue
    # plus a long non-streamed generation must fit in it.
    read_timeout_s: int = Field(default=600, ge=1)
    connect_timeout_s: int = Field(default=2, ge=1, le=60)
    # Attempts per request across replicas (the first one included).
    next_upstream_tries: int = Field(default=2, ge=1, le=16)
    # Passive health: this many failures within fail_timeout_s bench a replica
    # for fail_timeout_s.
    max_fails: int = Field(default=2, ge=0)
    fail_timeout_s: int = Field(default=10, ge=1)
    keepalive: int = Field(default=64, ge=1)
    # least_conn: each request goes to the replica with the fewest requests
    # in flight per unit of weight, which is what lets the controller's
    # weights steer load. round_robin ignores load (a baseline for `fleet
    # bench scenario`, or for replicas that answer in constant time).
    balance: Literal["least_conn", "round_robin"] = "least_conn"
    # Conversation affinity (nginx's njs module reads the key; no Python on
    # the request path): a request with a key goes to the replica its key
    # ranks first (weighted rendezvous hashing over the same replicas,
    # weights and down set), so a chat's next turn finds its prefix in that
    # replica's cache; a request without one is balanced as `balance` says.
    # session: keys from the X-Session-Id header, then the body's
    # prompt_cache_key or user. auto: also a hash of a chat's opening
    # (system prompt and first user message) or a prompt's first block.
    affinity: AffinityMode = AffinityMode.OFF
    # Old workers that still hold streams after a reload are closed after this.
    worker_shutdown_timeout_s: int = Field(default=900, ge=1)
    worker_processes: int | Literal["auto"] = "auto"
    # A client that sends nothing for this long while sending its headers or
    # body gets 408 and is disconnected; bodies are read whole before a
    # replica sees them, so a slow client never holds a replica's slot.
    client_timeout_s: int = Field(default=10, ge=1, le=600)
    # The largest request line or header line; a request whose headers do
    # not fit in 4 buffers of this size gets a JSON 400 (nginx size syntax).
    max_header_size: str = "8k"

    @field_validator("max_body_size", "max_header_size")
    @classmethod
    def _nginx_size(cls, value: str) -> str:
        if not _NGINX_SIZE.match(value):
            raise ValueError(f"{value!r} is not an nginx size; write e.g. 512k, 1m or 10m")
        return value


class AuthSpec(_Model):
    """API keys at the gateway (`fleet keys add|list|revoke`, docs/security.md)."""

    # On: /v1/ and /fleet/status need "Authorization: Bearer <key>".
    enabled: bool = False


# nginx's limit_conn counts up to this many requests per key (it refuses
# more at `nginx -t`): the bound of every in-flight cap in the spec.
LIMIT_CONN_MAX = 65535


class LimitsSpec(_Model):
    """Per-client limits on the OpenAI API: per API key when auth is on, per
    client address otherwise. Unset means no limit. Over a limit: 429 with
    Retry-After."""

    requests_per_s: int | None = Field(default=None, ge=1, le=100_000)
    # Requests above the rate that are still served at once, as a burst.
    burst: int = Field(default=0, ge=0, le=100_000)
    # Requests (streams included) in flight at once.
    concurrent: int | None = Field(default=None, ge=1, le=LIMIT_CONN_MAX)


# A key's token budget is its tokens (prompt + completion, as the replicas'
# `usage` reports them) over this sliding window.
BUDGET_WINDOW_S = 60.0
# The folder in the shed folder that holds one flag per API key over its
# token budget, named as the key's id; its folder BUDGET_CAP_FOLDER holds one
# per key whose minute has room for few answers: how many it may have in
# flight, one of BUDGET_CAP_LEVELS.
BUDGET_FOLDER = "budget"
BUDGET_CAP_FOLDER = "cap"
# A cap per key snaps down to one of these: nginx has a counting zone per
# level, not per possible number (fair shares and budget caps alike).
IN_FLIGHT_LEVELS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512,
                    768, 1024)
# A key with room for more answers than this has no budget cap.
BUDGET_CAP_LEVELS = tuple(level for level in IN_FLIGHT_LEVELS if level <= 64)


class BudgetsSpec(_Model):
    """Token budgets per API key (docs/overload.md, "Token budgets"): the
    gateway counts each key's tokens from the replicas' `usage` (streams
    included: it asks the replica for the usage chunk and keeps it from a
    client that did not ask), and past a key's tokens per minute answers 429
    with the Retry-After until the last minute's tokens are below it. A key
    whose minute has room for few answers may have only that many in flight."""

    enabled: bool = False
    # Tokens per minute of a key without its own (`fleet keys budget`);
    # None: such a key has no budget, its tokens are still counted.
    tokens_per_min: int | None = Field(default=None, ge=1, le=10**12)


PRIORITY_HEADER = "X-Fleet-Priority"
# The file in the shed folder nginx reads the fair share from; the dot keeps
# it apart from every class's flag.
FAIR_SHARE_FILE = "fair.level"
_CLASS_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def _listed(names: list[str]) -> str:
    """Names for an error line: a valid class name as it is, anything else quoted
    (a newline in a YAML key must not break the one-line error)."""
    return ", ".join(n if _CLASS_NAME.match(n) else repr(n) for n in names)


class PrioritySpec(_Model):
    """Priority classes (docs/overload.md): each API key has a class, a request
    may lower its own with the X-Fleet-Priority header, and the gateway writes
    the class into the body as vLLM's `priority`; replicas run
    `--scheduling-policy priority`, so a higher class's requests are admitted
    before a lower one's that waits in the same replica."""

    enabled: bool = False
    # Highest first: classes[0] runs before classes[1], and so on (vLLM's
    # priority is the index: lower runs first; ties in arrival order).
    classes: tuple[str, ...] = ("interactive", "default", "batch")
    # The class of a request whose key names none, and of every request
    # when auth is off.
    default_class: str = "default"
    # Requests of a class in flight at once across the fleet, at most, e.g.
    # {batch: 12} on a fleet of 16 batch slots: past it the gateway answers
    # 429 with Retry-After at once, and the 4 slots batch cannot take stay
    # free for the higher classes (a replica does not preempt running work).
    max_in_flight: dict[str, int] = {}
    # Shedding from the fleet's saturation, e.g. {batch: 10, default: 30}:
    # while the fleet's queue wait (requests waiting in the replicas over the
    # rate they finish, from Prometheus) is above a class's value, the
    # gateway answers that class 503 at once, with a Retry-After of the time
    # the queue needs to drain to half that value. Lower classes are shed
    # first: a class listed needs every class below it listed, at a value no
    # higher. A class left out is never shed this way.
    shed_queue_wait_s: dict[str, float] = {}
    # Fair shares between API keys: while the replicas in rotation have every
    # slot taken (requests running and waiting at least their max_num_seqs),
    # each key that sent requests in the last 30 s may hold at most an equal
    # share of those slots in flight (at least 1); past it that key gets 429
    # with Retry-After while the other keys' requests pass, so one client's
    # flood cannot starve the others. Lifted below 3/4 of what the shares let in.
    fair_share: bool = False

    @field_validator("shed_queue_wait_s")
    @classmethod
    def _positive_waits(cls, value: dict[str, float]) -> dict[str, float]:
        for name, wait in value.items():
            if not 0 < wait <= 3600:
                raise ValueError(f"{name!r}: {wait} s; give more than 0 and at most 3600")
        return value

    @field_validator("max_in_flight")
    @classmethod
    def _positive_caps(cls, value: dict[str, int]) -> dict[str, int]:
        for name, cap in value.items():
            if not 1 <= cap <= LIMIT_CONN_MAX:
                raise ValueError(f"{name!r}: {cap} requests; give 1 to {LIMIT_CONN_MAX}")
        return value

    @field_validator("classes")
    @classmethod
    def _class_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not 1 <= len(value) <= 8:
            raise ValueError("name 1 to 8 classes, highest first")
        for name in value:
            if not _CLASS_NAME.match(name):
                raise ValueError(f"class {name!r}: use lowercase letters, digits, _ and -, "
                                 "starting with a letter (at most 32)")
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"each class once; repeated: {', '.join(repeated)}")
        return value

    @model_validator(mode="after")
    def _default_is_a_class(self) -> PrioritySpec:
        if self.default_class not in self.classes:
            raise ValueError(f"default_class {self.default_class!r} is not one of the classes "
                             f"({', '.join(self.classes)})")
        return self

    @model_validator(mode="after")
    def _caps_name_classes(self) -> PrioritySpec:
        unknown = sorted(set(self.max_in_flight) - set(self.classes))
        if unknown:
            raise ValueError(f"max_in_flight names {_listed(unknown)}, not a class; the "
                             f"classes are {', '.join(self.classes)}")
        return self

    @model_validator(mode="after")
    def _lowest_shed_first(self) -> PrioritySpec:
        waits = self.shed_queue_wait_s
        unknown = sorted(set(waits) - set(self.classes))
        if unknown:
            raise ValueError(f"shed_queue_wait_s names {_listed(unknown)}, not a class; "
                             f"the classes are {', '.join(self.classes)}")
        for higher, lower in itertools.pairwise(self.classes):
            if higher in waits and lower not in waits:
                raise ValueError(f"shed_queue_wait_s sheds {higher} but not {lower}, a lower "
                                 f"class; give {lower} a value no higher than {higher}'s")
            if higher in waits and waits[lower] > waits[higher]:
                raise ValueError(f"shed_queue_wait_s: {lower} ({waits[lower]:g} s) would be "
                                 f"shed after {higher} ({waits[higher]:g} s), a higher class; "
                                 f"give {lower} at most {waits[higher]:g}")
        return self

    def level(self, name: str | None) -> int:
        """vLLM's priority for class ``name`` (the default class for None)."""
        return self.classes.index(self.default_class if name is None else name)


class ConsoleSpec(_Model):
    """The web console at the gateway's / (chat playground and fleet view)."""

    enabled: bool = True
    # Grafana, for the console's dashboard links; unset hides them. `fleet
    # render compose` fills in the Grafana that deployment publishes.
    grafana_url: str | None = None

    @field_validator("grafana_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s'\"<>]+", value):
            raise ValueError("write an http(s) URL, e.g. http://grafana.example:3000")
        return value.rstrip("/") if value else value


class ModelSpec(_Model):
    """Which model every replica serves."""

    # A Hugging Face id, a local folder, or unset for the engine's default.
    name: str | None = None
    # The name clients put in "model"; unset for the engine's default (with
    # load_format: dummy, that name ends in DUMMY_MARK).
    served_name: str | None = None
    cache_dir: Path = Field(default_factory=default_model_cache)
    # auto: the real weights. dummy: the model's architecture, quantization
    # and tokenizer with random weights (vLLM's --load-format dummy), from a
    # folder `fleet model prepare --dummy` writes: the real compute, so a box
    # is measured before gigabytes of weights are downloaded; the answers are
    # noise.
    load_format: Literal["auto", "dummy"] = "auto"
    # generate: a chat model; the gateway serves /v1/chat/completions,
    # /v1/completions and /v1/responses. pooling: an embedding model (vLLM's
    # --runner pooling; a generative checkpoint is converted to embeddings);
    # the gateway serves /v1/embeddings instead, the console and the pace
    # probes, which time generated tokens, are off. Both serve /tokenize,
    # /detokenize and /v1/models.
    runner: Literal["generate", "pooling"] = "generate"

    @field_validator("cache_dir")
    @classmethod
    def _expand_cache(cls, value: Path) -> Path:
        return _expand_home(value)

    @field_validator("served_name")
    @classmethod
    def _served_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9._:/-]+", value):
            raise ValueError("use letters, digits and . _ : / - only")
        return value


_MANAGED_VLLM_FLAGS = frozenset({
    "--host", "--port", "--model", "--served-model-name", "--max-num-seqs",
    "--max-model-len", "--gpu-memory-utilization", "--load-format", "--runner",
    "--scheduling-policy",
})


def _check_extra_args(value: tuple[str, ...]) -> tuple[str, ...]:
    for arg in value:
        flag = arg.split("=", 1)[0]
        if flag == "--scheduling-policy":
            raise ValueError("--scheduling-policy is set by llm-fleet; priority.enabled: true "
                             "runs the replicas with --scheduling-policy priority")
        if flag in _MANAGED_VLLM_FLAGS:
            raise ValueError(
                f"{flag} is set by llm-fleet; use the matching key of the spec instead"
            )
    if "--quantization" in {a.split("=", 1)[0] for a in value}:
        raise ValueError(
            "--quantization forces a kernel; leave it out so vLLM picks awq_marlin "
            "from the checkpoint"
        )
    return value


class VllmReplicaSpec(_Model):
    """One replica's own vLLM settings over the fleet's (``vllm.replicas[i]``):
    a heterogeneous fleet on purpose, on one GPU too."""

    max_num_seqs: int | None = Field(default=None, ge=1)
    max_model_len: int | None = Field(default=None, ge=16)
    # This replica's own share of its GPU's memory, as given (not split by
    # gpu.replicas_per_gpu as the fleet's value is).
    gpu_memory_utilization: float | None = Field(default=None, gt=0.0, le=1.0)
    # Appended to vllm.extra_args for this replica, e.g. [--enforce-eager].
    extra_args: tuple[str, ...] = ()
    cpu_kvcache_space_gib: int | None = Field(default=None, ge=1)

    @field_validator("extra_args")
    @classmethod
    def _no_managed_flags(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_extra_args(value)


class VllmSpec(_Model):
    """Arguments every replica's vLLM gets; unset means the engine's default."""

    max_num_seqs: int | None = Field(default=None, ge=1)
    max_model_len: int | None = Field(default=None, ge=16)
    gpu_memory_utilization: float | None = Field(default=None, gt=0.0, le=1.0)
    extra_args: tuple[str, ...] = ()
    # KV cache per CPU replica, GiB (VLLM_CPU_KVCACHE_SPACE).
    cpu_kvcache_space_gib: int = Field(default=1, ge=1)
    # replicas[i] overrides the settings above for replica i, e.g.
    # [{}, {max_num_seqs: 16, extra_args: [--enforce-eager]}].
    replicas: tuple[VllmReplicaSpec, ...] = ()

    @field_validator("extra_args")
    @classmethod
    def _no_managed_flags(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _check_extra_args(value)

    def for_replica(self, index: int) -> VllmReplicaSpec:
        return self.replicas[index] if index < len(self.replicas) else VllmReplicaSpec()


class GpuSpec(_Model):
    """How GPU replicas share the GPUs (engine: gpu)."""

    # Replicas pinned to each GPU. Each gets 1/N of the memory share
    # (vllm.gpu_memory_utilization / N), and replicas of one GPU start one
    # after the other, since vLLM sizes its KV cache from the memory it
    # sees free while it starts. Several small replicas can beat one large
    # one where a single engine's throughput falls at high concurrency.
    replicas_per_gpu: int = Field(default=1, ge=1, le=8)


class PortsSpec(_Model):
    """Loopback ports of the processes behind the gateway."""

    # Replica i listens on replica_base + i.
    replica_base: Port = 8100


class PrometheusSpec(_Model):
    """The Prometheus that scrapes every replica."""

    enabled: bool = True
    port: Port = 9090
    scrape_interval_s: int = Field(default=5, ge=1, le=300)
    retention: str = "2d"
    # Whichever comes first, time or size, bounds the TSDB on disk.
    retention_size: str = "2GB"

    @field_validator("retention")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not re.fullmatch(r"[1-9][0-9]*(ms|s|m|h|d|w|y)", value):
            raise ValueError(f"{value!r} is not a Prometheus duration; write e.g. 12h or 2d")
        return value

    @field_validator("retention_size")
    @classmethod
    def _size(cls, value: str) -> str:
        if not re.fullmatch(r"[1-9][0-9]*(B|KB|MB|GB|TB|PB)", value):
            raise ValueError(f"{value!r} is not a Prometheus size; write e.g. 512MB or 2GB")
        return value


class LogsSpec(_Model):
    """Rotation of the logs nginx writes itself (its access and error logs), by
    Debian's logrotate, run under the supervisor. The programs' own output is
    rotated by supervisord (20 MB, two kept)."""

    # A log is rotated once it is this large...
    rotate_size_mb: int = Field(default=100, ge=1, le=100_000)
    # ...this many rotated files are kept (compressed, all but the newest)...
    keep: int = Field(default=5, ge=1, le=1000)
    # ...and none older than this.
    max_age_days: int = Field(default=14, ge=1, le=3650)
    # How often logrotate looks.
    check_interval_s: int = Field(default=60, ge=5, le=86_400)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class SimSpec(_Model):
    """Simulated replicas (`engine: sim`): fleet-wide settings, per-replica overrides."""

    defaults: SimSettings = SimSettings()
    # replicas[i] overrides defaults for replica i, e.g. [{}, {speed: 0.33}].
    replicas: tuple[dict[str, Any], ...] = ()

    @model_validator(mode="after")
    def _overrides_valid(self) -> SimSpec:
        base = self.defaults.model_dump()
        problems = []
        for index, override in enumerate(self.replicas):
            try:
                SimSettings.model_validate(_merge(base, override))
            except ValidationError as exc:
                for err in exc.errors():
                    where = _format_location(("replicas", index, *err["loc"]))
                    problems.append(f"{where}: {err['msg']}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def for_replica(self, index: int) -> SimSettings:
        if index >= len(self.replicas):
            return self.defaults
        return SimSettings.model_validate(_merge(self.defaults.model_dump(),
                                                 self.replicas[index]))


class WarmupSpec(_Model):
    """A burst of requests the controller sends straight to a replica that
    starts or restarts, before it joins rotation: vLLM's GPU build compiles
    kernels on its first large batch (an 8 s stall was seen on an H200), and
    clients must not wait for that."""

    # auto: on for GPU replicas, off for CPU and simulated ones.
    enabled: bool | Literal["auto"] = "auto"
    # Concurrent requests in the burst; unset means the replica's
    # max_num_seqs, its largest batch.
    requests: int | None = Field(default=None, ge=1, le=4096)
    max_tokens: int = Field(default=16, ge=1, le=4096)
    # A burst that has not finished by then is abandoned and the replica
    # joins anyway: a replica that answers /health serves.
    timeout_s: float = Field(default=300.0, gt=0.0, le=3600.0)


class PaceSpec(_Model):
    """Pace probes (router.controller.pace): the controller's own measure of
    each replica's seconds per output token at equal load, fresh every
    round; weights move only when a sequential test finds a real difference."""

    # Off: weights follow Prometheus' P99 latency alone, as before.
    enabled: bool = True
    # One round probes every replica in rotation at once. A move rests on at
    # least min_rounds rounds, so this sets the detection delay: two rounds a
    # second find a replica slowed to a third in about 2 s (docs/controller.md).
    interval_s: float = Field(default=0.5, gt=0.0, le=60.0)
    # Tokens per probe; the gaps between them are what is timed.
    tokens: int = Field(default=8, ge=3, le=256)
    timeout_s: float = Field(default=5.0, gt=0.0, le=60.0)
    # Rounds remembered for the batch-to-pace slope and the noise estimate.
    history_rounds: int = Field(default=300, ge=30, le=3600)
    # The smallest speed difference worth a weight move (1.25: a replica 25 %
    # slower or faster than the fleet at equal load); a smaller one reads even.
    deadband: float = Field(default=1.25, gt=1.0, le=4.0)
    # The false-alarm budget of the test: on an equal fleet, at most this many
    # weight moves per hour, all replicas together. A smaller budget raises
    # the threshold and so the detection delay (docs/controller.md's table).
    false_moves_per_hour: float = Field(default=1.0, gt=0.0, le=3600.0)
    # No move rests on fewer rounds than this, however slow one round reads.
    min_rounds: int = Field(default=3, ge=1, le=60)
    # A reading older than this is no data (the replica's probes fail).
    max_age_s: float = Field(default=5.0, gt=0.0, le=600.0)


class ControllerSpec(_Model):
    """The adaptive weight controller (docs/controller.md explains every knob)."""

    enabled: bool = True
    # The admin API and the controller's /metrics, on loopback.
    port: Port = 8090
    # Active health probes of every replica's /health.
    # Two probes per second: with fail_threshold 2, a dead replica is out
    # within about a second plus the reload.
    probe_interval_s: float = Field(default=0.5, gt=0.0, le=60.0)
    probe_timeout_s: float = Field(default=1.0, gt=0.0, le=60.0)
    # Each probe opens its own connection, and one not accepted within this
    # long fails at once: a replica host whose link is gone answers no SYN,
    # while a busy replica's kernel still accepts in microseconds. Keep it
    # above the network's round trip (on a LAN, well under a millisecond).
    probe_connect_timeout_s: float = Field(default=0.25, gt=0.0, le=60.0)
    # Consecutive failures that take a replica out, successes that bring it back.
    fail_threshold: int = Field(default=2, ge=1, le=100)
    recover_threshold: int = Field(default=2, ge=1, le=100)
    # A recovered replica's weight ramps from 1 to its target over this long.
    slow_start_s: float = Field(default=30.0, ge=0.0)
    # How often weights are recomputed from Prometheus.
    evaluate_interval_s: float = Field(default=2.0, gt=0.0, le=600.0)
    # The window of the P99 latency queries (Prometheus duration).
    latency_window: str = "1m"
    # A Prometheus sample older than this is "no data".
    max_signal_age_s: float = Field(default=30.0, gt=0.0)
    query_timeout_s: float = Field(default=2.0, gt=0.0, le=60.0)
    # With the pace probes off (or a pooling model), weights follow the P99
    # ratios, which are noisier: this share of the step from the current
    # weight to the target is taken per evaluation (1 = jump to the target).
    # Pace levels move only on the test's evidence and are not smoothed.
    smoothing: float = Field(default=0.5, gt=0.0, le=1.0)
    # A replica this many times slower than the fleet median gets 1/ratio of
    # the weight; the ratio is capped so one bad sample cannot zero a replica.
    max_latency_ratio: float = Field(default=4.0, ge=1.0)
    # A replica at least this many times the median on both P99 TTFT and P99
    # E2E is an outlier: it drops to the minimum weight, a trickle that keeps
    # it measured, because any share above 1 % of requests puts its latency
    # into the fleet's P99. Only while the fleet's median pressure is below
    # outlier_max_pressure, so a busy fleet keeps the capacity; 0 turns it off.
    outlier_latency_ratio: float = Field(default=1.5, ge=0.0)
    outlier_max_pressure: float = Field(default=0.8, ge=0.0, le=2.0)
    # The affinity load bound (gateway.affinity on): a replica whose
    # pressure (KV usage plus waiting/running, 0 to 2) is more than
    # shed_above over the fleet's median keeps its keys, but their requests
    # spill to the balanced upstream one by one until it is back within
    # resume_below of the median; being above the median, at most half the
    # fleet sheds at once.
    shed_above: float = Field(default=0.5, gt=0.0, le=2.0)
    resume_below: float = Field(default=0.25, ge=0.0, le=2.0)
    # Reload for weights only when one moves by at least this fraction, either
    # way (a move and its reverse pass or fail alike: the ratio's log is
    # compared)...
    min_weight_change: float = Field(default=0.20, ge=0.0, le=10.0)
    # ...and no sooner than this after the last weight reload. Health changes
    # apply at once.
    min_reload_interval_s: float = Field(default=10.0, ge=0.0, le=3600.0)
    # A weight nginx runs that differs from the controller's target for this
    # long is brought to it, however small the difference: nothing strands.
    max_weight_lag_s: float = Field(default=60.0, gt=0.0, le=86400.0)
    # How many decisions GET /decisions keeps.
    history: int = Field(default=200, ge=1, le=100_000)
    warmup: WarmupSpec = WarmupSpec()
    pace: PaceSpec = PaceSpec()

    @property
    def latency_window_s(self) -> float:
        number, unit = int(self.latency_window[:-1]), self.latency_window[-1]
        return float(number * {"s": 1, "m": 60, "h": 3600}[unit])

    @field_validator("latency_window")
    @classmethod
    def _window(cls, value: str) -> str:
        if not re.fullmatch(r"[1-9][0-9]*(s|m|h)", value):
            raise ValueError(f"{value!r} is not a Prometheus range; write e.g. 30s or 1m")
        return value


class GpuExporterSpec(_Model):
    """The NVML exporter (router/gpu_exporter.py)."""

    # auto: run it when the engine is gpu.
    enabled: bool | Literal["auto"] = "auto"
    port: Port = 9400


class GatewayMetricsSpec(_Model):
    """nginx's own counters and its access log, as Prometheus metrics.

    prometheus-nginx-exporter reads stub_status; mtail turns the JSON access
    log into per-replica request, status and latency series
    (nginx/mtail/gateway.mtail).
    """

    enabled: bool = True
    nginx_exporter_port: Port = 9113
    log_exporter_port: Port = 3903


class AlertsSpec(_Model):
    """Thresholds of the Prometheus alert rules (prometheus/alerts.rules.yml.j2)."""

    # Per-replica P99 over the last minute, held for 5 minutes, fires an alert.
    ttft_p99_slo_s: float = Field(default=2.0, gt=0.0)
    e2e_p99_slo_s: float = Field(default=30.0, gt=0.0)
    # vLLM's KV cache share in use (0-1); above it requests queue or get preempted.
    kv_cache_usage_max: float = Field(default=0.95, gt=0.0, le=1.0)
    # GPU core temperature; consumer cards throttle in the high 80s.
    gpu_temperature_max_c: float = Field(default=85.0, gt=0.0)
    # Share of client requests answered 5xx by the gateway.
    gateway_5xx_ratio_max: float = Field(default=0.05, gt=0.0, le=1.0)


class ComposeSpec(_Model):
    """`fleet render compose`: the docker-compose deployment (docs/production.md)."""

    # The same vLLM release the simulator and the metric fixtures follow.
    vllm_image: str = f"vllm/vllm-openai:v{VLLM_VERSION}"
    grafana_image: str = "grafana/grafana-oss:11.3.0"
    # The compose network; the gateway is .2, replica i is .(10 + i). Fixed
    # addresses keep nginx independent of Docker's DNS.
    subnet: str = "172.28.0.0/24"
    # Where the host keeps the Hugging Face cache with the model (filled by
    # `fleet model prepare` or `huggingface-cli download` before `up`).
    model_cache: str = "${HF_HOME:-~/.cache/huggingface}"
    # Per replica container: host memory (vLLM's own process, not the GPU's)
    # and CPUs (tokenisation, scheduling, the HTTP server).
    replica_memory: str = "16g"
    replica_cpus: float = Field(default=4.0, gt=0.0)
    # Grafana is published on this host address; loopback keeps it off the
    # network until the operator chooses otherwise.
    grafana_bind: str = "127.0.0.1"
    grafana_port: Port = 3000

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        try:
            network = ipaddress.IPv4Network(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IPv4 subnet; write e.g. 172.28.0.0/24") from exc
        if network.num_addresses < 64:
            raise ValueError("use a /26 or larger: replicas take .10 onwards")
        return value


class ExternalReplicaSpec(_Model):
    """A replica something else runs (a container, a systemd unit): llm-fleet
    routes to it, probes it and scrapes it, but does not start it."""

    # host:port of its OpenAI server, e.g. 172.28.0.10:8000. An IP address
    # keeps nginx independent of DNS: a name that stops resolving while its
    # container restarts would make every reload fail.
    address: str
    # NVML index of the GPU it runs on, so GPU readings carry its name.
    gpu_index: int | None = Field(default=None, ge=0)
    # Its batch slots (vLLM --max-num-seqs), where known: the controller
    # weighs replicas of unequal slots by them.
    max_num_seqs: int | None = Field(default=None, ge=1)

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535 or "/" in value:
            raise ValueError("write host:port, e.g. 172.28.0.10:8000")
        return value


Role = Literal["both", "gateway", "replicas"]
# A host name, an IPv4 address or a bracketed IPv6 one, with an optional :port.
_HOST_ENTRY = re.compile(r"^[A-Za-z0-9._\[\]:-]{1,255}$")
# Where a replica host lists its replicas for the gateway hosts (GET).
REPLICA_LISTING_PATH = "/fleet/replicas"


def split_host_entry(entry: str) -> tuple[str, str]:
    """"host", "host:port", "[v6]" or "[v6]:port" -> (the host without
    brackets, the port as written or "")."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else rest
    host, sep, port = entry.rpartition(":")
    return (host, port) if sep else (entry, "")


def url_host(host: str) -> str:
    """An address as a URL or nginx's ``listen`` writes it beside a port:
    an IPv6 one in brackets."""
    return f"[{host}]" if ":" in host else host


def _ip_address(value: str, what: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not an IP address; write e.g. 10.0.0.21") from None
    return value


class TopologySpec(_Model):
    """Which tier of the fleet this host runs (docs/production.md).

    both: the gateway and the replicas on one box. replicas: only the
    replicas, with a listing of them that gateway hosts read. gateway:
    nginx, the controller, Prometheus and the exporters, routing to the
    replicas of every host in ``replica_hosts``.
    """

    role: Role = "both"
    # replicas role: the address this host's replicas and their listing
    # listen on: this host's address on the network the gateways share, or
    # 0.0.0.0 for every interface.
    listen: str = "127.0.0.1"
    # replicas role: GET /fleet/replicas on this port lists the replicas.
    listing_port: Port = 8099
    # gateway role: the replica hosts, as an address or a DNS name, with
    # :port where a host's listing_port is not the default. Their replicas
    # are found at `fleet up` and `fleet apply`, in this order.
    replica_hosts: tuple[str, ...] = ()
    # gateway role: how long each replica host's listing may take to answer.
    discovery_timeout_s: float = Field(default=5.0, gt=0.0, le=120.0)

    @field_validator("listen")
    @classmethod
    def _listen_address(cls, value: str) -> str:
        return _ip_address(value, "topology.listen")

    @field_validator("replica_hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            if host.count(":") > 1 and not host.startswith("["):
                raise ValueError(f"{host!r}: write an IPv6 address in brackets, e.g. "
                                 f"[{host}] or [{host}]:8099, so its last part is not read "
                                 "as a port")
            name, port = split_host_entry(host)
            if (not _HOST_ENTRY.match(host) or not name
                    or (port and not (port.isdigit() and 1 <= int(port) <= 65535))):
                raise ValueError(f"{host!r}: write an address or name, with :port where the "
                                 "host's listing_port is not the default, e.g. 10.0.0.21 or "
                                 "gpu-box-2:8099")
        repeated = sorted({h for h in value if value.count(h) > 1})
        if repeated:
            raise ValueError(f"each replica host once; repeated: {', '.join(repeated)}")
        return value

    @property
    def advertised_host(self) -> str:
        """The address this host's replicas are reached at from itself."""
        return "127.0.0.1" if self.listen in ("0.0.0.0", "::") else self.listen


class HaSpec(_Model):
    """A pair of gateway hosts sharing one virtual IP through keepalived (VRRP).

    Both hosts run the same spec but for ``priority`` and ``unicast_src``;
    the address moves to the other host when this one's gateway stops
    answering /health end to end, and does not move back by itself.
    """

    enabled: bool = False
    # The address clients use, with its prefix length, e.g. 10.0.0.10/24.
    virtual_ip: str | None = None
    # The interface the virtual IP and the VRRP adverts live on.
    interface: str = "eth0"
    # The higher wins the first election; after that the address stays
    # where it is (nopreempt) until its host fails.
    priority: int = Field(default=100, ge=1, le=254)
    # This host's own address on that interface, and the other gateways'
    # addresses: VRRP adverts go to them only, so networks without
    # multicast (clouds, some switches) work too.
    unicast_src: str | None = None
    peers: tuple[str, ...] = ()
    # The same on every host of the pair, unique on the network segment.
    virtual_router_id: int = Field(default=51, ge=1, le=255)
    # VRRPv3 adverts, in seconds (fractions allowed): a backup takes the
    # address after three missed ones, when its peer's link is gone.
    advert_int_s: float = Field(default=0.5, ge=0.01, le=40.0)
    # The local gateway's /health, through nginx to a replica, every this
    # many seconds; `fall` failures in a row give the address up, `rise`
    # successes make the host a candidate again.
    check_interval_s: int = Field(default=1, ge=1, le=60)
    check_timeout_s: int = Field(default=1, ge=1, le=60)
    fall: int = Field(default=2, ge=1, le=10)
    rise: int = Field(default=2, ge=1, le=10)
    # A file holding one secret (16 characters or more) that every gateway
    # of the pair has: each controller answers the other's admin calls with
    # it (`fleet drain`, `pin` and `keys` reach both, `fleet status` compares
    # them). Make it once, e.g. `openssl rand -hex 32`, and copy it over.
    pair_token_file: Path | None = None

    @field_validator("virtual_ip")
    @classmethod
    def _interface_address(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_interface(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an address with a prefix length; write "
                                 "e.g. 10.0.0.10/24") from None
            if "/" not in value:
                raise ValueError(f"{value!r} needs its prefix length, e.g. {value}/24")
        return value

    @field_validator("pair_token_file")
    @classmethod
    def _expand_token(cls, value: Path | None) -> Path | None:
        return None if value is None else _expand_home(value).absolute()

    @field_validator("unicast_src")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        return None if value is None else _ip_address(value, "ha.unicast_src")

    @field_validator("peers")
    @classmethod
    def _peers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_ip_address(peer, "ha.peers entry") for peer in value)

    @field_validator("interface")
    @classmethod
    def _interface(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,15}", value):
            raise ValueError(f"{value!r} is not an interface name; `ip link` lists them")
        return value

    @model_validator(mode="after")
    def _complete(self) -> HaSpec:
        if not self.enabled:
            return self
        missing = [name for name in ("virtual_ip", "unicast_src") if getattr(self, name) is None]
        if not self.peers:
            missing.append("peers")
        if self.pair_token_file is None:
            missing.append("pair_token_file")
        if missing:
            raise ValueError(f"ha.enabled needs {', '.join(missing)}: the address clients use "
                             "(virtual_ip), this host's own address (unicast_src), the "
                             "other gateway's (peers) and the file with the secret both "
                             "share (pair_token_file)")
        if self.unicast_src in self.peers:
            raise ValueError(f"ha.peers lists this host's own address {self.unicast_src}; "
                             "list the other gateways only")
        return self


class RolloutSpec(_Model):
    """How `fleet apply` changes the replicas of a running cluster."""

    # A replica taken out of rotation for a change is stopped once its last
    # request has finished, or after this long with what still runs cut
    # (and reported). Long enough for the longest stream clients expect.
    drain_timeout_s: float = Field(default=600.0, gt=0.0, le=86_400.0)


class ClusterSpec(_Model):
    """The whole cluster. Loaded with :func:`load_spec`."""

    engine: Engine = "auto"
    replicas: int | Literal["auto"] = "auto"
    gateway: GatewaySpec = GatewaySpec()
    auth: AuthSpec = AuthSpec()
    limits: LimitsSpec = LimitsSpec()
    budgets: BudgetsSpec = BudgetsSpec()
    priority: PrioritySpec = PrioritySpec()
    console: ConsoleSpec = ConsoleSpec()
    model: ModelSpec = Field(default_factory=ModelSpec)
    vllm: VllmSpec = VllmSpec()
    gpu: GpuSpec = GpuSpec()
    ports: PortsSpec = PortsSpec()
    prometheus: PrometheusSpec = PrometheusSpec()
    sim: SimSpec = SimSpec()
    controller: ControllerSpec = ControllerSpec()
    gpu_exporter: GpuExporterSpec = GpuExporterSpec()
    gateway_metrics: GatewayMetricsSpec = GatewayMetricsSpec()
    logs: LogsSpec = LogsSpec()
    alerts: AlertsSpec = AlertsSpec()
    compose: ComposeSpec = ComposeSpec()
    rollout: RolloutSpec = RolloutSpec()
    topology: TopologySpec = TopologySpec()
    ha: HaSpec = HaSpec()
    # engine: external only: the replicas, in order (replica-0 first).
    external_replicas: tuple[ExternalReplicaSpec, ...] = ()
    runtime_dir: Path = Field(default_factory=default_runtime_dir)
    # How long `fleet up` waits for every replica to answer /health.
    startup_timeout_s: int = Field(default=900, ge=10)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # A section whose keys are all commented out parses as None in YAML;
        # it means "all defaults", not "invalid".
        if isinstance(data, dict):
            sections = {name for name, info in cls.model_fields.items()
                        if isinstance(info.annotation, type)
                        and issubclass(info.annotation, BaseModel)}
            return {k: v for k, v in data.items() if not (k in sections and v is None)}
        return data

    @field_validator("runtime_dir")
    @classmethod
    def _expand_runtime(cls, value: Path) -> Path:
        return _expand_home(value).absolute()

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= MAX_REPLICAS:
            raise ValueError(f"need 1 to {MAX_REPLICAS} replicas (one box), or 'auto'")
        return value

    @model_validator(mode="after")
    def _dummy_weights(self) -> ClusterSpec:
        if self.model.load_format != "dummy":
            return self
        if self.engine in ("sim", "external"):
            raise ValueError(f"model.load_format: dummy is for vLLM replicas; engine "
                             f"{self.engine} has no weights to replace")
        served = self.model.served_name
        if served is not None and DUMMY_MARK not in served.lower():
            raise ValueError(f"model.served_name {served!r} must say '{DUMMY_MARK}' with "
                             "load_format: dummy, so clients know its answers are noise; "
                             "leave it unset for the default")
        return self

    @model_validator(mode="after")
    def _pooling(self) -> ClusterSpec:
        if self.model.runner == "pooling" and self.engine == "sim":
            raise ValueError("model.runner: pooling needs vLLM replicas: the simulator "
                             "serves generative models only; use engine cpu, gpu or auto")
        return self

    @model_validator(mode="after")
    def _external_replicas(self) -> ClusterSpec:
        if self.engine == "external":
            if not self.external_replicas:
                raise ValueError("engine: external needs external_replicas (a list of "
                                 "{address: host:port}) naming the replicas to route to")
            if self.replicas not in ("auto", len(self.external_replicas)):
                raise ValueError(f"replicas: {self.replicas}, but external_replicas lists "
                                 f"{len(self.external_replicas)}; set replicas: auto")
        elif self.external_replicas:
            raise ValueError("external_replicas is only read with engine: external")
        return self

    @model_validator(mode="after")
    def _shedding_reads_the_fleet(self) -> ClusterSpec:
        if self.priority.shed_queue_wait_s and not (
                self.priority.enabled and self.controller.enabled and self.prometheus.enabled):
            raise ValueError("priority.shed_queue_wait_s needs priority.enabled, "
                             "controller.enabled and prometheus.enabled: the controller "
                             "reads the fleet's queue from Prometheus; turn them on or "
                             "remove shed_queue_wait_s")
        if self.priority.fair_share and not (
                self.priority.enabled and self.auth.enabled and self.controller.enabled
                and self.prometheus.enabled and self.gateway_metrics.enabled):
            raise ValueError("priority.fair_share needs priority.enabled, "
                             "auth.enabled, controller.enabled, prometheus.enabled and "
                             "gateway_metrics.enabled: shares are per API key, and the "
                             "controller counts the keys in use from the gateway's log "
                             "through Prometheus; turn them on or remove the setting")
        return self

    @model_validator(mode="after")
    def _budgets_count_keys(self) -> ClusterSpec:
        if self.budgets.enabled and not (
                self.auth.enabled and self.controller.enabled
                and self.gateway_metrics.enabled):
            raise ValueError("budgets.enabled needs auth.enabled, controller.enabled and "
                             "gateway_metrics.enabled: budgets are per API key, and the "
                             "controller counts each key's tokens from the gateway's log; "
                             "turn them on or set budgets.enabled: false")
        return self

    @model_validator(mode="after")
    def _roles(self) -> ClusterSpec:
        role = self.topology.role
        if role == "gateway":
            if not self.topology.replica_hosts:
                raise ValueError("topology.role: gateway needs topology.replica_hosts: the "
                                 "hosts whose replicas this gateway routes to")
            if self.engine not in ("auto", "external"):
                raise ValueError(f"topology.role: gateway runs no replicas, but engine is "
                                 f"{self.engine}; the replica hosts choose theirs: remove engine")
        elif self.topology.replica_hosts:
            raise ValueError("topology.replica_hosts is read only with topology.role: gateway")
        if role == "replicas" and self.engine == "external":
            raise ValueError("topology.role: replicas starts replicas, but engine: external "
                             "runs none; choose gpu, cpu, sim or auto")
        if self.ha.enabled:
            if role == "replicas":
                raise ValueError("ha is for gateway hosts; a replicas host has no gateway "
                                 "address to share: set ha.enabled: false")
            if self.gateway.host not in ("0.0.0.0", "::", "[::]"):
                raise ValueError(f"ha.enabled needs gateway.host: 0.0.0.0, so nginx answers "
                                 f"on the virtual IP when it moves here (it is "
                                 f"{self.gateway.host})")
        return self

    def generation(self) -> str:
        """A short hash of the whole spec: which spec a replica was started with."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:GENERATION_LENGTH]

    def service_ports(self) -> dict[str, int]:
        """Every fixed port this host listens on, keyed by its spec key."""
        if self.topology.role == "replicas":
            ports = {"topology.listing_port": self.topology.listing_port}
            if self.gpu_exporter.enabled is not False:
                ports["gpu_exporter.port"] = self.gpu_exporter.port
            return ports
        ports = {"gateway.port": self.gateway.port, "gateway.status_port": self.gateway.status_port}
        if self.prometheus.enabled:
            ports["prometheus.port"] = self.prometheus.port
        if self.controller.enabled:
            ports["controller.port"] = self.controller.port
        if self.gpu_exporter.enabled is not False:
            ports["gpu_exporter.port"] = self.gpu_exporter.port
        if self.gateway_metrics.enabled:
            ports["gateway_metrics.nginx_exporter_port"] = self.gateway_metrics.nginx_exporter_port
            ports["gateway_metrics.log_exporter_port"] = self.gateway_metrics.log_exporter_port
        return ports

    @model_validator(mode="after")
    def _distinct_ports(self) -> ClusterSpec:
        seen: dict[int, str] = {}
        for key, port in self.service_ports().items():
            if port in seen:
                raise ValueError(f"{key} and {seen[port]} are both {port}; give each its own port")
            seen[port] = key
        return self


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


def _format_location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            # A key with spaces, quotes or a line break is shown quoted, on one line.
            key = str(item) if _PLAIN_KEY.match(str(item)) else repr(item)
            parts.append(("." if parts else "") + key)
    return "".join(parts) or "(top level)"


def _problems(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for err in exc.errors():
        # Union members each report; keep the clearest message per location.
        loc = tuple(
            p for p in err["loc"]
            if not (isinstance(p, str) and (p.startswith(("function-", "literal[")) or p == "int"))
        )
        where = _format_location(loc)
        if err["type"] == "extra_forbidden":
            text = f"{where}: unknown key; check its spelling against deploy/cluster.example.yaml"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            text = f"{where}: {msg} (got {err.get('input')!r})"
        if text not in problems:
            problems.append(text)
    return problems


def parse_spec(data: Any, source: str = "<spec>") -> ClusterSpec:
    """Validate already-parsed YAML; raise SpecError listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(
            f"{source}: the spec must be a mapping of keys, got {type(data).__name__}",
            hint="start from deploy/cluster.example.yaml",
        )
    try:
        return ClusterSpec.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc)
        raise SpecError(
            f"{source}: {len(problems)} problem(s): " + "; ".join(problems),
            hint="fix the keys named above; deploy/cluster.example.yaml documents each one",
            problems=problems,
        ) from exc


def load_spec(path: Path | None = None) -> ClusterSpec:
    """Read and validate a spec file (the example spec when ``path`` is None)."""
    spec_path = path or EXAMPLE_SPEC
    try:
        text = spec_path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SpecError(
            f"spec file {spec_path} does not exist",
            hint="pass --spec with a path to a YAML file, e.g. deploy/cluster.example.yaml",
        ) from exc
    except OSError as exc:
        raise SpecError(f"cannot read spec file {spec_path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise SpecError(
            f"{spec_path}: not valid YAML{where}: {problem}",
            hint="check indentation and quoting around that line",
        ) from exc
    return parse_spec(data, str(spec_path))


@dataclass(frozen=True)
class EngineSettings:
    """The spec's vLLM settings with the engine's defaults filled in."""

    engine: ResolvedEngine
    model: str
    served_model_name: str
    max_num_seqs: int
    max_model_len: int
    gpu_memory_utilization: float | None
    load_format: Literal["auto", "dummy"] = "auto"
    runner: Literal["generate", "pooling"] = "generate"

    @property
    def dummy(self) -> bool:
        return self.load_format == "dummy"


def resolve_engine_settings(spec: ClusterSpec, engine: ResolvedEngine) -> EngineSettings:
    """Fill every unset model/vLLM field from ``ENGINE_DEFAULTS[engine]``.

    A simulated fleet has no model files; its capacity comes from `sim`.
    """
    if engine == "external":
        # The replicas hold the model; the names are what clients ask for.
        gpu = ENGINE_DEFAULTS["gpu"]
        return EngineSettings(
            engine="external", model=spec.model.name or gpu.model,
            served_model_name=spec.model.served_name or gpu.served_model_name,
            max_num_seqs=spec.vllm.max_num_seqs or gpu.max_num_seqs,
            max_model_len=spec.vllm.max_model_len or gpu.max_model_len,
            gpu_memory_utilization=None, runner=spec.model.runner)
    if engine == "sim":
        return EngineSettings(
            engine="sim", model="simulated",
            served_model_name=spec.model.served_name or SIM_SERVED_MODEL_NAME,
            max_num_seqs=spec.sim.defaults.max_num_seqs,
            max_model_len=spec.sim.defaults.max_model_len, gpu_memory_utilization=None)
    defaults = ENGINE_DEFAULTS[engine]
    dummy = spec.model.load_format == "dummy"
    default_name = (f"{defaults.served_model_name}-{DUMMY_MARK}" if dummy
                    else defaults.served_model_name)
    return EngineSettings(
        engine=engine,
        model=spec.model.name or defaults.model,
        served_model_name=spec.model.served_name or default_name,
        load_format=spec.model.load_format, runner=spec.model.runner,
        max_num_seqs=spec.vllm.max_num_seqs or defaults.max_num_seqs,
        max_model_len=spec.vllm.max_model_len or defaults.max_model_len,
        gpu_memory_utilization=spec.vllm.gpu_memory_utilization
        or defaults.gpu_memory_utilization,
    )
