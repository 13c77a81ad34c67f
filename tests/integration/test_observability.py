"""Every dashboard panel shows data from a live fleet.

A simulated fleet runs behind the real gateway with the controller, the
nginx exporter, mtail and Prometheus, all started by `fleet up`. While a
client drives traffic (streams, plain requests, bad ones) and an operator
drains and undrains a replica, every target of every dashboard panel is
asked of that Prometheus the way Grafana asks it (a range query, variables
filled in) and must return at least one series with a number in it.

The GPU dashboard needs NVML readings, which no CI machine has: its panels
are asked of a Prometheus scraping the real-GPU capture committed under
tests/fixtures/gpu, served as a static exposition.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import math
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

from router import REPO_ROOT
from router.config.spec import load_spec
from router.disk.paths import RuntimePaths
from router.host.machine import require_binary
from router.runtime.supervise import Supervisor
from tests.support.cli import fleet
from tests.support.client import resend_on_reset
from tests.support.fleet import running_fleet
from tests.support.grafana import DASHBOARDS, Query, Variable, queries, substitute, variables
from tests.support.harness import free_port, prometheus_ready, wait_for

pytestmark = pytest.mark.integration

GPU_CAPTURE = REPO_ROOT / "tests" / "fixtures" / "gpu" / "load-replica-0.metrics"
# Grafana's $__rate_interval for a 1 s scrape interval is 4 s at least; 10 s
# keeps several samples in every window on a loaded 2-core machine.
RATE_INTERVAL = "10s"
# Panels that may show no data here, each with the reason. Keep it empty
# unless a panel truly cannot have data in a test fleet.
EXCUSED: dict[tuple[str, str], str] = {}
# Batch requests the live fleet lets in flight at once (priority.max_in_flight).
BATCH_CAP = 1


@dataclass
class Load:
    """A client driving the gateway from a background thread, with an API key."""

    url: str
    key: str
    served: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def _send(self, turn: int, session: requests.Session) -> requests.Response:
        if turn % 10 == 8:
            # The batch class's one slot (BATCH_CAP) is mostly held by
            # hold_batch_slot: most of these are shed with 429, the rest admitted.
            return session.post(f"{self.url}/v1/completions", timeout=30,
                                headers={"X-Fleet-Priority": "batch"}, json={
                                    "model": "sim-model", "prompt": "hi", "max_tokens": 4})
        if turn % 10 == 4:
            # nginx answers this one itself: a 404 from "gateway".
            return session.get(f"{self.url}/v1/no-such-endpoint", timeout=10)
        if turn % 3 == 0:
            return session.post(f"{self.url}/v1/completions", timeout=30, json={
                "model": "sim-model", "prompt": "hello", "max_tokens": 6})
        response = session.post(f"{self.url}/v1/chat/completions", timeout=30, json={
            "model": "sim-model", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 8, "stream": turn % 2 == 0})
        # The whole stream is read here: a reset mid-stream fails the test.
        response.content  # noqa: B018
        if response.status_code == 200:
            self.served[response.headers["X-Fleet-Replica"]] += 1
        return response

    def session(self) -> requests.Session:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.key}"
        return session

    def hold_batch_slot(self) -> None:
        """Keep a long batch stream in flight, one after another."""
        with self.session() as session:
            while not self.stop.is_set():
                response, _ = resend_on_reset(session, lambda s: s.post(
                    f"{self.url}/v1/completions", timeout=60,
                    headers={"X-Fleet-Priority": "batch"}, json={
                        "model": "sim-model", "prompt": "hold", "max_tokens": 64,
                        "stream": True}))
                response.content  # noqa: B018
                self.statuses[response.status_code] += 1
                if response.status_code != 200:
                    self.stop.wait(0.2)

    def run(self) -> None:
        with self.session() as session:
            turn = 0
            while not self.stop.is_set():
                turn += 1
                # Drain and undrain reload nginx, which closes idle keep-alive
                # connections: resent as the openai client would.
                response, _ = resend_on_reset(session, functools.partial(self._send, turn))
                self.statuses[response.status_code] += 1


@dataclass
class LiveFleet:
    spec: Path
    url: str
    prometheus: str
    load: Load
    started: float
    workers: list[threading.Thread]


def _range_query(prometheus: str, expr: str, start: float) -> list[dict[str, object]]:
    response = requests.post(f"{prometheus}/api/v1/query_range", timeout=20, data={
        "query": expr, "start": f"{start:.3f}", "end": f"{time.time():.3f}", "step": "1s"})
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body.get('error')}"
    result: list[dict[str, object]] = body["data"]["result"]
    return result


def _has_numbers(series: list[dict[str, object]]) -> bool:
    for item in series:
        values = item["values"]
        assert isinstance(values, list)
        if any(math.isfinite(float(v)) for _, v in values):
            return True
    return False


def _without_data(prometheus: str, panel_queries: list[Query], start: float,
                  replica: str = ".+") -> list[str]:
    missing = []
    for query in panel_queries:
        if (query.dashboard, query.panel) in EXCUSED:
            continue
        expr = substitute(query.expr, RATE_INTERVAL, replica)
        if not _has_numbers(_range_query(prometheus, expr, start)):
            missing.append(f"{query.dashboard} / {query.panel} [{query.ref}]: {expr}")
    return missing


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveFleet]:
    # Priority classes with a capped batch class, so the per-class panel has
    # both admitted and shed requests to show; keys and budgets, so the
    # per-key panels do (the client's key has a budget it never reaches).
    secrets: list[str] = []

    def key_before_up(spec: Path) -> None:
        done = fleet("keys", "add", "dashboards", "--tokens-per-min", "1000000000",
                     "--spec", str(spec))
        assert done.returncode == 0, done.stderr
        secrets.append(done.stdout.strip())

    with running_fleet(tmp_path_factory.mktemp("observability"), 2,
                       before_up=key_before_up,
                       auth={"enabled": True}, budgets={"enabled": True},
                       controller={"evaluate_interval_s": 1, "latency_window": "10s",
                                   "min_reload_interval_s": 2},
                       priority={"enabled": True,
                                 "max_in_flight": {"batch": BATCH_CAP},
                                 # Far above this fleet's queue: the controller
                                 # reports the wait and sheds nothing.
                                 "shed_queue_wait_s": {"batch": 600}}) as running:
        load = Load(running.url, secrets[0])
        workers = [threading.Thread(target=load.run, daemon=True) for _ in range(3)]
        workers.append(threading.Thread(target=load.hold_batch_slot, daemon=True))
        started = time.time()
        try:
            for worker in workers:
                worker.start()
            yield LiveFleet(running.spec, running.url, running.prometheus_url, load, started,
                            workers)
        finally:
            load.stop.set()
            for worker in workers:
                worker.join(timeout=30)


def _instant(prometheus: str, expr: str) -> list[dict[str, object]]:
    body = requests.post(f"{prometheus}/api/v1/query", data={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    result: list[dict[str, object]] = body["data"]["result"]
    return result


def test_every_fleet_panel_shows_data(live: LiveFleet) -> None:
    # An operator drains and undrains a replica: reloads for the annotations,
    # each seen by Prometheus before the next.
    wait_for(lambda: _instant(live.prometheus, "fleet_controller_decisions_total"), 60,
             "Prometheus to have the controller's first decisions", interval=0.5)
    for action in ("drain", "undrain"):
        before = _reloads(live.prometheus)
        result = fleet(action, "replica-1", "--spec", str(live.spec))
        assert result.returncode == 0, result.stderr
        wait_for(lambda before=before: _reloads(live.prometheus) > before, 60,
                 f"Prometheus to see the controller reload for {action}", interval=0.5)
    # Recording rules need a minute-window rate over a few evaluations.
    wait_for(lambda: _instant(live.prometheus, "replica:gateway_traffic:share_rate1m"), 60,
             "the traffic-share recording rule to have data", interval=1)
    panel_queries = [q for path in sorted(DASHBOARDS.glob("*.json")) if path.stem != "gpus"
                     for q in queries(path)]
    assert len(panel_queries) >= 40
    # Series appear at different scrapes; ask again until all have data or time is up.
    missing = wait_for_all(live.prometheus, panel_queries, live.started, timeout=45)
    assert not missing, "panels without data:\n" + "\n".join(missing)
    assert live.load.statuses[200] > 50 and live.load.statuses[404] > 0


def test_replica_variable_lists_every_replica_and_filters_to_one(live: LiveFleet) -> None:
    """The dropdown is filled from Prometheus, and a single choice still shows data."""
    boards = [path for path in sorted(DASHBOARDS.glob("*.json")) if list(variables(path))]
    assert boards, "no dashboard has a replica variable"
    for path in boards:
        for variable in variables(path):
            def listed(variable: Variable = variable) -> bool:
                response = requests.get(
                    f"{live.prometheus}/api/v1/label/{variable.label}/values", timeout=10,
                    params={"match[]": variable.selector, "start": f"{live.started:.3f}"})
                return set(response.json()["data"]) == {"replica-0", "replica-1"}

            wait_for(listed, 45, f"{variable} to list replica-0 and replica-1", interval=1)
    one = [q for path in boards for q in queries(path) if "$replica" in q.expr]
    assert len(one) >= 10
    # Series appear at different scrapes, and replica-1 was drained in the test
    # before: its one-minute recording rules may need a minute of traffic again.
    missing = wait_for_all(live.prometheus, one, live.started, timeout=90, replica="replica-1")
    assert not missing, "panels without data for replica-1 alone:\n" + "\n".join(missing)


def wait_for_all(prometheus: str, panel_queries: list[Query], start: float,
                 timeout: float, replica: str = ".+") -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        missing = _without_data(prometheus, panel_queries, start, replica)
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(2)


def _reloads(prometheus: str) -> float:
    result = _instant(prometheus, 'sum(fleet_controller_reloads_total{result="success"})')
    return float(result[0]["value"][1]) if result else 0.0  # type: ignore[index]


def test_gateway_log_counts_every_request_by_replica(live: LiveFleet) -> None:
    live.load.stop.set()
    for worker in live.workers:
        worker.join(timeout=60)
    assert not any(worker.is_alive() for worker in live.workers), "a client is still sending"
    served = dict(live.load.served)
    assert set(served) == {"replica-0", "replica-1"}

    def counted() -> dict[str, float] | None:
        result = _instant(live.prometheus, 'sum by (replica) (fleet_gateway_requests_total'
                                           '{job="gateway_log",route="chat",status="200"})')
        got = {str(r["metric"]["replica"]): float(r["value"][1])  # type: ignore[index]
               for r in result}
        return got if got == {k: float(v) for k, v in served.items()} else None

    wait_for(counted, 15, f"mtail's per-replica chat counts to equal the client's {served}",
             interval=0.5)
    # stub_status counted at least every client request.
    total = _instant(live.prometheus, 'nginx_http_requests_total{job="gateway"}')
    assert float(total[0]["value"][1]) >= sum(live.load.statuses.values())  # type: ignore[index]


def _chat_counts(prometheus: str) -> dict[str, float]:
    result = _instant(prometheus, 'sum by (replica) (fleet_gateway_requests_total'
                                  '{job="gateway_log",route="chat",status="200"})')
    return {str(r["metric"]["replica"]): float(r["value"][1])  # type: ignore[index]
            for r in result}


def test_a_log_rotation_under_traffic_keeps_mtails_counts(live: LiveFleet) -> None:
    """The access log is rotated the way the log-rotation program does it
    (forced, since it is far below its size): nginx reopens a new file, mtail
    follows the rename, and no request goes uncounted or counted twice."""
    live.load.stop.set()
    paths = RuntimePaths(load_spec(live.spec).runtime_dir)
    processes = {p.name: p.state for p in Supervisor(paths).processes()}
    assert processes["log-rotation"] == "RUNNING"
    wait_for(lambda: _chat_counts(live.prometheus) == {
        k: float(v) for k, v in live.load.served.items()}, 15, "mtail to catch up")
    rotate = subprocess.run([require_binary("logrotate"), "--force", "--state",
                             str(paths.logrotate_state), str(paths.logrotate_conf)],
                            capture_output=True, text=True, timeout=60)
    assert rotate.returncode == 0, rotate.stderr
    rotated = paths.access_log.with_name(paths.access_log.name + ".1")
    assert rotated.stat().st_size > 0
    def burst() -> None:
        with live.load.session() as session:
            for turn in range(1, 41, 2):  # odd turns: chat or completions, not streamed
                assert live.load._send(turn, session).status_code == 200

    # nginx writes into the new file once the reopen (USR1, or the reload
    # when workers run as nobody) took effect; until then into the old one.
    burst()
    wait_for(lambda: paths.access_log.stat().st_size > 0, 10,
             "nginx to log into the new access log")
    burst()

    previous: dict[str, dict[str, float]] = {}

    def carried_on() -> bool:
        # Lines nginx writes into the renamed file in the moment before it
        # reopens may be missed by mtail's poll (seen once in a full run on
        # 2 busy cores): at most the first burst goes uncounted, nothing is
        # counted twice, and the counts settle.
        counts = _chat_counts(live.prometheus)
        served = {k: float(v) for k, v in live.load.served.items()}
        settled = counts == previous.get("counts")
        previous["counts"] = counts
        missed = sum(served.values()) - sum(counts.values())
        within = (counts.keys() == served.keys() and 0 <= missed <= 20
                  and all(counts[k] <= served[k] for k in served))
        return within and (missed == 0 or settled)

    wait_for(carried_on, 20,
             f"mtail's counts to carry on across the rotation: {dict(live.load.served)}",
             interval=0.5)


class _Exposition(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _static_exporter(capture: Path) -> Iterator[int]:
    handler = type("Capture", (_Exposition,), {"body": capture.read_bytes()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_every_gpu_panel_shows_data_from_a_real_gpu_capture(tmp_path: Path) -> None:
    port = free_port()
    with _static_exporter(GPU_CAPTURE) as exporter_port:
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "gpu", "static_configs": [
                {"targets": [f"127.0.0.1:{exporter_port}"]}]}],
        }))
        log = (tmp_path / "prometheus.log").open("wb")
        process = subprocess.Popen(
            [require_binary("prometheus"), f"--config.file={config}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        try:
            prometheus = f"http://127.0.0.1:{port}"
            wait_for(lambda: prometheus_ready(prometheus), 30, "Prometheus to be ready",
                     interval=0.3)
            start = time.time()
            wait_for(lambda: len(_range_query(prometheus, "fleet_gpu_present", start)) == 2
                     and _has_numbers(_range_query(
                         prometheus, f"rate(fleet_gpu_energy_joules_total[{RATE_INTERVAL}])",
                         start)),
                     60, "two scrapes of the GPU capture", interval=0.5)
            gpu_queries = list(queries(DASHBOARDS / "gpus.json"))
            assert len(gpu_queries) >= 10
            missing = wait_for_all(prometheus, gpu_queries, start, timeout=20)
            assert not missing, "GPU panels without data:\n" + "\n".join(missing)
            # The replica label of the capture reaches the panels.
            util = _instant(prometheus, 'fleet_gpu_utilization_percent{job="gpu"}')
            by_replica = {r["metric"]["replica"]: float(r["value"][1])  # type: ignore[index]
                          for r in util}
            assert by_replica["replica-0"] > 90 and by_replica["replica-1"] < 10
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
            log.close()
