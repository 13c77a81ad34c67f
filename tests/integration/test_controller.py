"""The controller in a real cluster: supervisord, nginx, Prometheus, the
controller process and simulated replicas, all started by `fleet up`.

The deadlines below (30 s, 3 s, 5 s) are the controller's contract, not
performance figures: each test waits up to that long for the behaviour.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from router.controller.actuator import Actuator
from router.controller.policy import Decision, ReplicaDecision
from router.controller.service import Controller, Member
from router.disk.paths import RuntimePaths
from router.errors import NginxReloadFailed
from router.render.upstream import RenderedUpstream
from router.runtime.supervise import Supervisor
from tests.support.backend import Backend
from tests.support.cli import fleet
from tests.support.client import resend_on_reset
from tests.support.fleet import Fleets
from tests.support.harness import free_port_block, gateway, plan_for, wait_for

pytestmark = pytest.mark.integration

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}
# Requests in each window a traffic share is measured over.
WINDOW_REQUESTS = 80


@dataclass
class Controlled:
    spec: Path
    paths: RuntimePaths
    url: str
    admin: str
    token: str
    replica_urls: list[str]

    def status(self) -> dict[str, Any]:
        response = requests.get(f"{self.admin}/status", timeout=5,
                                headers={"Authorization": f"Bearer {self.token}"})
        response.raise_for_status()
        return {r["name"]: r for r in response.json()["replicas"]}

    def post(self, path: str, body: Any = None, token: str | None = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return requests.post(f"{self.admin}{path}", json=body, headers=headers, timeout=10)


def _cluster_factory(folder: Path) -> Iterator[Callable[..., Controlled]]:
    """Clusters whose controller decides every second on a 10 s window."""
    fleets = Fleets(folder)

    def start(replicas: int = 3, sim: list[dict[str, Any]] | None = None,
              **controller: Any) -> Controlled:
        running = fleets.start(
            replicas, sim={"replicas": sim or []},
            controller={"evaluate_interval_s": 1, "latency_window": "10s",
                        "min_reload_interval_s": 3, "slow_start_s": 5, **controller})
        return Controlled(running.spec, running.paths, running.url, running.admin_url,
                          running.admin_token, running.replica_urls)

    try:
        yield start
    finally:
        fleets.close()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Controlled]]:
    yield from _cluster_factory(tmp_path)


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controlled]:
    """One single-replica cluster for the admin API's refusal cases."""
    factory = _cluster_factory(tmp_path_factory.mktemp("admin"))
    yield next(factory)(replicas=1)
    next(factory, None)


class Load:
    """Closed-loop clients through the gateway, counting who served what.

    A request reset before any answer is sent once more, as the openai
    client does (tests/support/client.py), and counted in ``resent``; a
    request that fails twice, or gets any non-200, is a failure.
    """

    def __init__(self, url: str, clients: int, max_tokens: int) -> None:
        self.url, self.max_tokens = url, max_tokens
        self.served: list[tuple[float, str]] = []
        self.failures: list[str] = []
        self.resent = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _post(self, session: requests.Session) -> requests.Response:
        return session.post(f"{self.url}/v1/chat/completions", timeout=30,
                            json={**CHAT, "max_tokens": self.max_tokens, "ignore_eos": True})

    def _run(self) -> None:
        while not self._stop.is_set():
            with requests.Session() as session:
                while not self._stop.is_set():
                    try:
                        response, resent = resend_on_reset(session, self._post)
                    except requests.RequestException as exc:
                        self.failures.append(type(exc).__name__)
                        break
                    self.resent += resent
                    if response.status_code == 200:
                        self.served.append((time.monotonic(),
                                            response.headers["X-Fleet-Replica"]))
                    else:
                        self.failures.append(str(response.status_code))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def counts(self, replica: str, since: float, until: float) -> tuple[int, int]:
        """(requests ``replica`` served, requests served) in [since, until)."""
        window = [r for t, r in self.served if since <= t < until]
        return Counter(window)[replica], len(window)


def _share_not_grown(before: tuple[int, int], after: tuple[int, int], z: float = 3.0) -> bool:
    """Whether the share ``after`` is no larger than ``before`` beyond counting
    noise: a one-sided two-proportion test at ``z`` standard errors, since a
    share of a few in 80 requests moves by one request between windows."""
    (k1, n1), (k2, n2) = before, after
    pooled = (k1 + k2) / max(1, n1 + n2)
    error = math.sqrt(pooled * (1 - pooled) * (1 / max(1, n1) + 1 / max(1, n2)))
    return k2 / max(1, n2) <= k1 / max(1, n1) + z * error


def _slow_one_singled_out(status: dict[str, dict[str, Any]]) -> bool:
    weights = {name: replica["weight"] for name, replica in status.items()}
    return weights["replica-3"] <= 25 and all(weights[f"replica-{i}"] >= 40 for i in range(3))


@pytest.mark.parametrize(("pace", "signal"), [(True, "pace"), (False, "p99")],
                         ids=["pace-probes", "prometheus-p99"])
def test_slow_replica_loses_weight_and_traffic(make_cluster: Callable[..., Controlled],
                                               pace: bool, signal: str) -> None:
    cluster = make_cluster(replicas=4, sim=[{}, {}, {}, {"speed": 0.33}],
                           pace={"enabled": pace})
    start = time.monotonic()
    with Load(cluster.url, clients=12, max_tokens=40) as load:
        # Windows of traffic, not of seconds: a busy machine serves fewer a second.
        wait_for(lambda: len(load.served) >= WINDOW_REQUESTS, 60,
                 f"{WINDOW_REQUESTS} requests served at equal weights")
        early = time.monotonic()
        wait_for(lambda: cluster.status()["replica-3"]["weight"] <= 25, 30,
                 "the 3x slower replica to lose half of its weight")
        settled = time.monotonic()
        wait_for(lambda: sum(1 for t, _ in load.served if t >= settled) >= WINDOW_REQUESTS,
                 60, f"{WINDOW_REQUESTS} requests served after the move")
        late = time.monotonic()
        # The weights nginx has lag the controller's targets by up to the
        # minimum reload interval, so a healthy replica that a noisy round
        # nudged down is back at its weight a reload later, not at once.
        wait_for(lambda: _slow_one_singled_out(cluster.status()), 60,
                 "the healthy replicas to hold their weight while the slow one stays low")
        reason = cluster.status()["replica-3"]["reason"]
    assert signal in reason
    # least_conn already sends a 3x slower replica a small share (its requests
    # stay in flight longer); the cut weight may not shrink it measurably more
    # in a window of this size, but must not grow it.
    before, after = load.counts("replica-3", start, early), load.counts("replica-3", settled, late)
    assert _share_not_grown(before, after), (before, after)
    assert load.failures == []


def test_killed_replica_leaves_rotation_and_clients_see_nothing(
        make_cluster: Callable[..., Controlled]) -> None:
    # How fast is a drill's figure (`fleet drill`), not a test's: a busy
    # machine may stretch it, but never lets a client see the dead replica.
    cluster = make_cluster()
    codes: list[int] = []
    Supervisor(cluster.paths).stop_process("replica-1")  # gone, and not restarted
    deadline = time.monotonic() + 30
    while cluster.status()["replica-1"]["in_rotation"] is not False:
        assert time.monotonic() < deadline, "replica-1 still in rotation 30 s after it died"
        codes.append(requests.post(f"{cluster.url}/v1/chat/completions",
                                   json={**CHAT, "max_tokens": 2}, timeout=10).status_code)
    codes += [requests.post(f"{cluster.url}/v1/chat/completions",
                            json={**CHAT, "max_tokens": 2}, timeout=10).status_code
              for _ in range(10)]
    assert set(codes) == {200}
    assert "failed health probes" in cluster.status()["replica-1"]["reason"]


def test_recovered_replica_comes_back_with_slow_start(
        make_cluster: Callable[..., Controlled]) -> None:
    cluster = make_cluster(slow_start_s=20)
    supervisor = Supervisor(cluster.paths)
    supervisor.stop_process("replica-2")
    wait_for(lambda: cluster.status()["replica-2"]["in_rotation"] is False, 30, "out")
    supervisor.start_process("replica-2")
    wait_for(lambda: cluster.status()["replica-2"]["in_rotation"] is True, 30,
             "back in rotation once its probes pass again")
    back = cluster.status()["replica-2"]
    assert "slow start" in back["reason"]
    assert back["weight"] < 50  # ramping, not a full share at once


def test_hung_replica_leaves_rotation(make_cluster: Callable[..., Controlled]) -> None:
    cluster = make_cluster()
    requests.post(f"{cluster.replica_urls[0]}/sim/faults", json={"hang": True}, timeout=5)
    wait_for(lambda: cluster.status()["replica-0"]["in_rotation"] is False, 30,
             "the hung replica to leave rotation")
    assert "no answer within" in (cluster.status()["replica-0"]["health"]["last_error"] or "")


def test_without_prometheus_weights_hold_and_health_still_acts(
        make_cluster: Callable[..., Controlled]) -> None:
    # The Prometheus path alone: fresh pace probes would keep the weights moving.
    cluster = make_cluster(max_signal_age_s=3, pace={"enabled": False})
    before = {name: r["weight"] for name, r in cluster.status().items()}
    Supervisor(cluster.paths).stop_process("prometheus")
    # The controller may already hold on scrapes a busy machine delayed; what
    # counts is that it notices Prometheus is gone and holds from then on.
    wait_for(lambda: "fleet_controller_prometheus_up 0.0" in requests.get(
        f"{cluster.admin}/metrics", timeout=5).text, 15,
        "the controller to notice Prometheus is gone")
    wait_for(lambda: all(r["reason"].startswith("holding")
                         for r in cluster.status().values()), 15,
             "the controller to hold once signals are stale")
    assert {name: r["weight"] for name, r in cluster.status().items()} == before
    requests.post(f"{cluster.replica_urls[1]}/sim/faults", json={"crash": True}, timeout=5)
    wait_for(lambda: cluster.status()["replica-1"]["in_rotation"] is False, 5,
             "health to act without Prometheus")


def test_with_the_controller_stopped_the_gateway_keeps_serving(
        make_cluster: Callable[..., Controlled]) -> None:
    cluster = make_cluster()
    before = cluster.paths.upstream_conf.read_text()
    Supervisor(cluster.paths).stop_process("controller")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{cluster.admin}/metrics", timeout=2)
    codes = [requests.post(f"{cluster.url}/v1/chat/completions", json={**CHAT, "max_tokens": 2},
                           timeout=10).status_code for _ in range(20)]
    assert codes == [200] * 20
    assert cluster.paths.upstream_conf.read_text() == before


def test_drain_undrain_and_pin(make_cluster: Callable[..., Controlled]) -> None:
    cluster = make_cluster()
    drained = cluster.post("/replicas/replica-0/drain")
    assert drained.status_code == 200 and drained.json()["decision"]["applied"]
    served = Counter(requests.post(f"{cluster.url}/v1/chat/completions",
                                   json={**CHAT, "max_tokens": 2}, timeout=10)
                     .headers["X-Fleet-Replica"] for _ in range(20))
    assert "replica-0" not in served
    assert cluster.status()["replica-0"]["reason"] == "drained by admin"
    # A drain outlives a controller restart.
    supervisor = Supervisor(cluster.paths)
    supervisor.stop_process("controller")
    supervisor.start_process("controller")
    wait_for(lambda: _answers(f"{cluster.admin}/metrics"), 20, "the controller to restart")
    assert cluster.status()["replica-0"]["override"]["drained"] is True
    wait_for(lambda: cluster.status()["replica-0"]["in_rotation"] is False, 10,
             "the restarted controller to keep replica-0 drained")
    cluster.post("/replicas/replica-0/undrain")
    assert cluster.status()["replica-0"]["in_rotation"] is True
    pinned = cluster.post("/replicas/replica-1/weight", {"weight": 7, "ttl_s": 60})
    assert pinned.status_code == 200
    assert cluster.status()["replica-1"]["weight"] == 7
    assert "weight=7 " in cluster.paths.upstream_conf.read_text()
    cli = fleet("pin", "--spec", str(cluster.spec), "replica-1", "--clear")
    assert cli.returncode == 0, cli.stderr
    assert cluster.status()["replica-1"]["override"]["pinned_weight"] is None
    unknown = fleet("drain", "--spec", str(cluster.spec), "replica-9")
    assert unknown.returncode == 6
    assert unknown.stderr.startswith("error: the controller answered 404: no replica named")
    too_heavy = fleet("pin", "--spec", str(cluster.spec), "replica-1", "300")
    assert too_heavy.returncode == 6
    assert "weight: Input should be less than or equal to 100" in too_heavy.stderr


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.parametrize(("path", "body", "token", "status"), [
    ("/replicas/replica-0/drain", None, "", 401),
    ("/replicas/replica-0/drain", None, "wrong-token", 401),
    ("/replicas/replica-9/drain", None, None, 404),
    ("/replicas/replica-0/weight", {"weight": 0}, None, 422),
    ("/replicas/replica-0/weight", {"weight": "heavy"}, None, 422),
    ("/replicas/replica-0/weight", {"weight": 5, "ttl_s": -1}, None, 422),
    ("/replicas/replica-0/weight", {"weight": 5, "colour": "red"}, None, 422),
])
def test_admin_api_rejects_bad_calls(shared_cluster: Controlled, path: str,
                                     body: Any, token: str | None, status: int) -> None:
    cluster = shared_cluster
    headers = {} if token == "" else {"Authorization": f"Bearer {token or cluster.token}"}
    response = requests.post(f"{cluster.admin}{path}", json=body, headers=headers, timeout=5)
    assert response.status_code == status
    assert response.json()["detail"]
    assert cluster.status()["replica-0"]["in_rotation"] is True


def test_a_render_nginx_rejects_keeps_the_old_config_and_is_counted(tmp_path: Path) -> None:
    base = free_port_block(2)
    with Backend(base, "replica-0"), Backend(base + 1, "replica-1"):
        plan = plan_for(tmp_path / "rt", 2, base)
        with gateway(plan) as running:
            members = [Member(r.name, r.device, r.url) for r in plan.replicas]

            def broken(_decision: Decision, _why: str) -> RenderedUpstream:
                return RenderedUpstream("upstream replicas { least_conn; weight=0 }\n", "bad")

            good = Actuator(plan.spec.gateway, members, running.paths)
            bad = Actuator(plan.spec.gateway, members, running.paths, renderer=broken)
            before = running.paths.upstream_conf.read_text()
            controller = Controller(members, plan.spec.controller, bad)

            async def evaluate() -> None:
                record = await controller.evaluate("test")
                assert record.error is not None and "nginx -t" in record.error
                assert not record.applied
                await controller.prober.close()

            asyncio.run(evaluate())
            assert running.paths.upstream_conf.read_text() == before
            registry = controller.metrics.registry
            assert registry.get_sample_value(
                "fleet_controller_reloads_total", {"result": "nginx_test_failed"}) == 1
            # The wanted configuration is still pending: FleetWeightsNotApplied reads this.
            assert registry.get_sample_value("fleet_controller_change_pending") == 1
            assert registry.get_sample_value("fleet_controller_desired_weight",
                                             {"replica": "replica-0"}) is not None
            codes = {requests.get(f"{running.url}/v1/models", timeout=5).status_code
                     for _ in range(5)}
            assert codes == {200}

            # The same actuator with a good render applies and proves it is live.
            decision = Decision(time.time(), {m.name: ReplicaDecision(9, False, 9.0, "test")
                                              for m in members})
            result = asyncio.run(good.apply(decision, "test"))
            assert asyncio.run(good.live_version()) == result.version
            with pytest.raises(NginxReloadFailed):
                asyncio.run(bad.apply(decision, "test"))
            assert asyncio.run(good.live_version()) == result.version
