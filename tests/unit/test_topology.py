"""Roles, replica hosts and the gateway pair: the spec, the listing a replica
host serves, what a gateway makes of the listings, and the programs each
role runs. No network: the listing is read through an injected `get`."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import requests

from router import gateway_watch
from router.config.plan import build_plan
from router.config.spec import REPLICA_LISTING_PATH, parse_spec, resolve_engine_settings
from router.config.topology import (
    ListedReplica,
    ReplicaListing,
    listing_address,
    listing_url,
    own_listing_url,
    with_listed_replicas,
)
from router.controller.service import Controller
from router.disk.paths import RuntimePaths
from router.errors import ClusterError, SpecError
from router.render.programs import programs
from router.replica_listing import listing
from router.runtime.discovery import discover
from router.runtime.pair import KEYS_DIFFER, PeerView, differences
from router.runtime.state import ClusterState
from tests.support.fakes import cpu_inventory
from tests.unit.test_controller_loop import _run, _tick
from tests.unit.test_render import MACHINE

GATEWAY = {"topology": {"role": "gateway", "replica_hosts": ["10.0.0.21", "gpu-2:9000"]}}


def _listing(*ports: int, served: str = "qwen", generation: str = "abc") -> ReplicaListing:
    return ReplicaListing(engine="gpu", served_model_name=served, generation=generation,
                          replicas=tuple(ListedReplica(name=f"replica-{i}", port=port,
                                                       device=f"GPU-{i}", max_num_seqs=64)
                                         for i, port in enumerate(ports)))


@pytest.mark.parametrize(("data", "message"), [
    ({"topology": {"role": "gateway"}}, "needs topology.replica_hosts"),
    ({"topology": {"replica_hosts": ["10.0.0.21"]}}, "only with topology.role: gateway"),
    ({"topology": {"role": "gateway", "replica_hosts": ["a", "a"]}}, "repeated: a"),
    ({"topology": {"role": "gateway", "replica_hosts": ["http://a/"]}}, "write an address"),
    ({"topology": {"role": "gateway", "replica_hosts": ["a:99999"]}}, "write an address"),
    ({"topology": {"role": "gateway", "replica_hosts": ["fd00::5"]}}, "in brackets"),
    ({"topology": {"role": "gateway", "replica_hosts": ["[fd00::5]x"]}}, "write an address"),
    ({"topology": {"role": "gateway", "replica_hosts": ["a"]}, "engine": "cpu"},
     "runs no replicas"),
    ({"topology": {"role": "replicas"}, "engine": "external",
      "external_replicas": [{"address": "10.0.0.1:8000"}]}, "runs none"),
    ({"topology": {"role": "replicas", "listen": "gpu-box"}}, "not an IP address"),
    ({"ha": {"enabled": True}}, "needs virtual_ip, unicast_src, peers, pair_token_file"),
    ({"ha": {"enabled": True, "virtual_ip": "10.0.0.10", "unicast_src": "10.0.0.11",
             "peers": ["10.0.0.12"], "pair_token_file": "/t"}}, "needs its prefix length"),
    ({"ha": {"enabled": True, "virtual_ip": "10.0.0.10/24", "unicast_src": "10.0.0.11",
             "peers": ["10.0.0.11"], "pair_token_file": "/t"}}, "own address"),
    ({"ha": {"enabled": True, "virtual_ip": "10.0.0.10/24", "unicast_src": "10.0.0.11",
             "peers": ["10.0.0.12"], "pair_token_file": "/t"}},
     "needs gateway.host: 0.0.0.0"),
    ({"ha": {"enabled": True, "virtual_ip": "10.0.0.10/24", "unicast_src": "10.0.0.11",
             "peers": ["10.0.0.12"], "pair_token_file": "/t"}, "topology": {"role": "replicas"},
      "gateway": {"host": "0.0.0.0"}}, "ha is for gateway hosts"),
    ({"ha": {"interface": "eth0; rm"}}, "not an interface name"),
])
def test_bad_topology_is_one_clear_line(data: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(data)
    assert message in caught.value.message
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(("entry", "address", "url"), [
    ("10.0.0.21", ("10.0.0.21", 8099), "http://10.0.0.21:8099"),
    ("gpu-2:9000", ("gpu-2", 9000), "http://gpu-2:9000"),
    ("[fd00::5]", ("fd00::5", 8099), "http://[fd00::5]:8099"),
    ("[fd00::5]:9000", ("fd00::5", 9000), "http://[fd00::5]:9000"),
])
def test_listing_address(entry: str, address: tuple[str, int], url: str) -> None:
    assert listing_address(entry, 8099) == address
    assert listing_url(entry, 8099) == url + REPLICA_LISTING_PATH


def test_listings_become_external_replicas_in_host_order() -> None:
    spec = parse_spec(GATEWAY)
    found = with_listed_replicas(spec, [("10.0.0.21", _listing(8100, 8101)),
                                        ("gpu-2:9000", _listing(8100))])
    assert found.engine == "external"
    assert [r.address for r in found.external_replicas] == [
        "10.0.0.21:8100", "10.0.0.21:8101", "gpu-2:8100"]
    assert found.model.served_name == "qwen"
    plan = build_plan(found, resolve_engine_settings(found, "external"), cpu_inventory(2),
                      "qwen", "python")
    assert [(r.name, r.address, r.max_num_seqs) for r in plan.replicas] == [
        ("replica-0", "10.0.0.21:8100", 64), ("replica-1", "10.0.0.21:8101", 64),
        ("replica-2", "gpu-2:8100", 64)]
    # What the controller reads back from spec.json must still be a valid spec.
    assert parse_spec(json.loads(found.model_dump_json())) == found


@pytest.mark.parametrize(("listings", "message"), [
    ([("a", _listing(8100, served="x")), ("b", _listing(8100, served="y"))],
     "serve different models"),
    ([("a", _listing())], "list no replicas"),
])
def test_listings_that_disagree_are_refused(listings: list[tuple[str, ReplicaListing]],
                                            message: str) -> None:
    spec = parse_spec({"topology": {"role": "gateway", "replica_hosts": ["a", "b"]}})
    with pytest.raises(SpecError, match=message):
        with_listed_replicas(spec, listings)


def test_a_served_name_the_hosts_do_not_serve_is_refused() -> None:
    spec = parse_spec({**GATEWAY, "model": {"served_name": "other"}})
    with pytest.raises(SpecError, match="model.served_name is 'other'"):
        with_listed_replicas(spec, [("10.0.0.21", _listing(8100))])


class _Answer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code, self.content, self.text = status, body, body.decode()


def test_discovery_reads_every_host() -> None:
    asked: list[str] = []

    def get(url: str, timeout: float) -> _Answer:
        asked.append(url)
        return _Answer(200, _listing(8100).model_dump_json().encode())

    found = discover(parse_spec(GATEWAY), get=get)
    assert asked == ["http://10.0.0.21:8099/fleet/replicas", "http://gpu-2:9000/fleet/replicas"]
    assert len(found.external_replicas) == 2


@pytest.mark.parametrize(("answer", "message"), [
    (requests.ConnectionError("refused"), "did not answer"),
    (_Answer(503, b'{"error": "no cluster state"}'), "answered 503"),
    (_Answer(200, b'{"hello": 1}'), "not a replica listing"),
])
def test_discovery_failures_name_the_host(answer: object, message: str) -> None:
    def get(url: str, timeout: float) -> _Answer:
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, _Answer)
        return answer

    with pytest.raises(ClusterError) as caught:
        discover(parse_spec(GATEWAY), get=get)
    assert "10.0.0.21" in caught.value.message and message in caught.value.message
    assert caught.value.hint


def test_the_recorded_spec_of_a_running_gateway_is_not_discovered_again() -> None:
    recorded = with_listed_replicas(parse_spec(GATEWAY), [("10.0.0.21", _listing(8100)),
                                                          ("gpu-2:9000", _listing(8100))])
    assert discover(recorded, get=lambda *a, **k: pytest.fail("asked the network")) is recorded


def test_discovery_leaves_other_roles_alone() -> None:
    spec = parse_spec({})
    assert discover(spec, get=lambda *a, **k: pytest.fail("asked the network")) is spec


def _plan(data: dict[str, Any], tmp_path: Path):  # type: ignore[no-untyped-def]
    spec = parse_spec({"runtime_dir": str(tmp_path), **data})
    engine = "sim" if spec.engine == "sim" else "external"
    return build_plan(spec, resolve_engine_settings(spec, engine), cpu_inventory(2), "m",
                      "/opt/llm-fleet/bin/python")


def test_a_replica_host_runs_replicas_and_its_listing_only(tmp_path: Path) -> None:
    plan = _plan({"engine": "sim", "replicas": 2,
                  "topology": {"role": "replicas", "listen": "10.0.0.21"}}, tmp_path)
    assert [r.address for r in plan.replicas] == ["10.0.0.21:8100", "10.0.0.21:8101"]
    assert all("10.0.0.21" in r.argv for r in plan.replicas)
    names = [p.name for p in programs(plan, RuntimePaths(tmp_path), MACHINE)]
    assert names == ["replica-0", "replica-1", "replica-listing"]
    assert sorted(plan.spec.service_ports()) == ["gpu_exporter.port", "topology.listing_port"]


def test_replicas_listening_everywhere_are_reached_on_loopback(tmp_path: Path) -> None:
    plan = _plan({"engine": "sim", "replicas": 1,
                  "topology": {"role": "replicas", "listen": "0.0.0.0"}}, tmp_path)
    assert plan.replicas[0].address == "127.0.0.1:8100"
    assert "0.0.0.0" in plan.replicas[0].argv


def test_a_replica_host_on_ipv6_is_reached_in_brackets(tmp_path: Path) -> None:
    plan = _plan({"engine": "sim", "replicas": 1,
                  "topology": {"role": "replicas", "listen": "fd00::21"}}, tmp_path)
    assert plan.replicas[0].url == "http://[fd00::21]:8100"
    assert "fd00::21" in plan.replicas[0].argv
    assert own_listing_url(plan.spec.topology) == "http://[fd00::21]:8099" + REPLICA_LISTING_PATH
    listed = with_listed_replicas(parse_spec(GATEWAY), [("[fd00::21]", _listing(8100))])
    gateway = build_plan(listed, resolve_engine_settings(listed, "external"), cpu_inventory(2),
                         "qwen", "python")
    assert [(r.host, r.address) for r in gateway.replicas] == [("fd00::21", "[fd00::21]:8100")]


def test_a_paired_gateway_runs_keepalived(tmp_path: Path) -> None:
    machine = MACHINE.__class__(**{**MACHINE.__dict__, "binaries": {
        **MACHINE.binaries, "keepalived": "/usr/sbin/keepalived", "curl": "/usr/bin/curl"}})
    plan = _plan({"engine": "external", "external_replicas": [{"address": "10.0.0.21:8100"}],
                  "gateway": {"host": "0.0.0.0"},
                  "ha": {"enabled": True, "virtual_ip": "10.0.0.10/24",
                         "unicast_src": "10.0.0.11", "peers": ["10.0.0.12"],
                         "pair_token_file": "/t"}}, tmp_path)
    progs = {p.name: p for p in programs(plan, RuntimePaths(tmp_path), machine)}
    assert "keepalived" in progs and "--dont-fork" in progs["keepalived"].argv
    assert "replica-listing" not in progs


def test_the_listing_is_what_the_state_records(tmp_path: Path) -> None:
    plan = _plan({"engine": "sim", "replicas": 2,
                  "topology": {"role": "replicas", "listen": "10.0.0.21"}}, tmp_path)
    shown = listing(ClusterState.from_plan(plan, None))
    assert [(r.name, r.port) for r in shown.replicas] == [("replica-0", 8100),
                                                          ("replica-1", 8101)]
    assert shown.served_model_name == "sim-model"
    assert shown.generation == plan.spec.generation()


def _event(name: str, process: str) -> str:
    payload = f"processname:{process} groupname:{process} from_state:STARTING pid:42"
    return (f"ver:3.0 server:supervisor serial:1 pool:gateway-watch poolserial:1 "
            f"eventname:PROCESS_STATE_{name} len:{len(payload)}\n{payload}")


def test_gateway_watch_flags_nginx_down_and_up_at_once(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    flag = tmp_path / "gateway-down"
    events = "".join([_event("RUNNING", "gateway"), _event("RUNNING", "replica-0"),
                      _event("EXITED", "gateway"), _event("STOPPED", "controller")])
    out, log = io.StringIO(), io.StringIO()
    seen: list[str] = []
    real_write = gateway_watch.write_flag

    def recording(path: Path, value: str) -> None:
        real_write(path, value)
        seen.append(path.read_text().strip())

    monkeypatch.setattr(gateway_watch, "write_flag", recording)
    gateway_watch.serve(flag, "gateway", io.StringIO(events), out, log)
    assert seen == ["0", "1"]
    # supervisord's protocol: READY before each event, a RESULT after it.
    assert out.getvalue() == "READY\nRESULT 2\nOK" * 4 + "READY\n"
    assert "decision=flag-1" in log.getvalue()


def test_pair_differences_name_what_an_operator_must_know() -> None:
    async def scenario(controller: Controller, fleet: Any, actuator: Any, clock: Any) -> None:
        await _tick(controller, clock, 0.0, "start")
        same = controller.status()
        await controller.set_override("c", drained=True)
        await controller.set_override("b", pinned_weight=7, pin_expires_at=clock() + 60)
        changed = controller.status()
        assert differences(same, "k1", PeerView("10.0.0.12", same, "k1")) == []
        found = differences(same, "k1", PeerView("10.0.0.12", changed, "k2"))
        assert any(line.startswith(KEYS_DIFFER) for line in found), found
        assert "c: drained on the peer only" in found
        assert "b: pinned at None here, 7 on the peer" in found
        gone = PeerView("10.0.0.12", None, None, "did not answer (ConnectionError)")
        assert differences(same, "k1", gone) == ["peer 10.0.0.12 did not answer "
                                                 "(ConnectionError)"]

    _run(scenario)
