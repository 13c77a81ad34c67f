"""The multi-host topology for real, with network namespaces as hosts: two
gateway hosts of role `gateway` sharing a virtual IP through keepalived, two
replica hosts of role `replicas`, and a client, each a fleet started by
`fleet up` on its own spec. One lab for the module; the drills run tiny.

Everything the lab makes (namespaces, veths, the fleets and keepalived in
them) is removed at the end, and by a create that fails half-way. Skipped
where this process may not make network namespaces.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from router.bench import netlab
from router.bench.pair_drill import (
    GATEWAYS,
    DrillTimes,
    LabShape,
    PairLab,
    diverged_pair,
    gateway_failover,
    key_fan_out,
    pair_differences,
    replica_host_loss,
    running_lab,
    settle,
)
from router.errors import EnvironmentError_
from router.runtime.pair import KEYS_DIFFER

WHY_NOT = netlab.available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no network namespaces: {WHY_NOT}")

# Short phases: what is asserted is that each thing happened, not how fast
# (the drills' reports hold the timings). The fault is held long enough for a
# busy machine: the address moves and a lost host leaves rotation in about a
# second on an idle one, and whatever has not happened when the fault is
# undone is never seen.
TIMES = DrillTimes(before_s=2.0, hold_s=10.0, after_s=4.0)
RATE = 4.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PairLab]:
    with running_lab(tmp_path_factory.mktemp("pair"), LabShape(replicas_per_host=1),
                     print) as running:
        yield running
    left = [n for n in netlab.namespaces() if n.startswith(f"{netlab.PREFIX}-{running.net.tag}-")]
    assert not left


def test_both_gateways_route_to_every_replica_host(lab: PairLab) -> None:
    wanted = lab.host_replicas("rep-1") | lab.host_replicas("rep-2")
    for gateway in GATEWAYS:
        state = (lab.workdir / gateway / "state.json").read_text()
        assert all(address in state for address in wanted), state


def test_a_key_added_on_one_gateway_works_through_the_other(lab: PairLab) -> None:
    result = key_fan_out(lab)
    assert result["works_after_s"] is not None, result


def test_a_drain_reaches_both_gateways(lab: PairLab) -> None:
    lab.fleet("gw-a", "drain", "replica-0")
    try:
        for gateway in GATEWAYS:
            replicas = lab.status(gateway)["controller"]["replicas"]
            drained = [r["name"] for r in replicas if r["override"]["drained"]]
            assert drained == ["replica-0"], gateway
        assert pair_differences(lab, "gw-a") == []
    finally:
        lab.fleet("gw-a", "undrain", "replica-0")


def test_status_flags_a_pair_whose_keys_diverged_and_push_mends_it(lab: PairLab) -> None:
    result = diverged_pair(lab)
    assert "not on peer" in (result["add_refused"] or ""), result
    assert any(KEYS_DIFFER in line for line in result["status_flagged"]), result
    assert result["after_push"] == [], result


def test_gateway_failover_when_the_active_host_loses_its_link(lab: PairLab) -> None:
    result = gateway_failover(lab, "link", RATE, TIMES, lab.workdir / "link.jsonl", print)
    assert result["address_moved_s"] is not None, result
    assert result["answered_again_s"] is not None, result
    assert result["ok"] > 0
    settle(lab, print)
    assert lab.holder() == result["backup"], "the address flapped back"


def test_gateway_failover_when_nginx_dies(lab: PairLab) -> None:
    result = gateway_failover(lab, "nginx", RATE, TIMES, lab.workdir / "nginx.jsonl", print)
    assert result["address_moved_s"] is not None, result
    assert result["ok"] > 0
    settle(lab, print)
    assert lab.holder() == result["backup"]


def test_a_replica_host_losing_its_link_leaves_and_rejoins_both_gateways(lab: PairLab) -> None:
    result = replica_host_loss(lab, RATE, TIMES, lab.workdir / "host.jsonl", print)
    for gateway in GATEWAYS:
        assert result[f"{gateway}_out_of_rotation_s"] is not None, result
        assert result[f"{gateway}_back_s"] is not None, result


def test_a_lab_that_fails_half_way_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = netlab.NetLab(["first", "second"], tag=f"{netlab.os.getpid()}9")
    real_ip = netlab._ip

    def failing_ip(*args: str, check: bool = True):  # type: ignore[no-untyped-def]
        if args[:3] == ("netns", "add", broken.hosts["second"].namespace):
            raise EnvironmentError_("the second host could not be made", hint="a test")
        return real_ip(*args, check=check)

    monkeypatch.setattr(netlab, "_ip", failing_ip)
    with pytest.raises(EnvironmentError_):
        broken.create()
    assert not [n for n in netlab.namespaces() if n.startswith(f"{netlab.PREFIX}-{broken.tag}-")]
