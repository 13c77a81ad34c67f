"""The scenario registry: every module of router/bench/scenarios declares its
scenarios, and a bad name or contender is one clear error that lists the
good ones."""

from __future__ import annotations

import pkgutil

import pytest

from router.bench import scenarios
from router.bench.scenario_kit import Scenario
from router.errors import SpecError


def test_every_module_declares_scenarios_and_every_name_is_found() -> None:
    modules = [info.name for info in pkgutil.iter_modules(scenarios.__path__)]
    registry = scenarios.registry()
    assert set(registry) >= {"overhead", "heterogeneous", "homogeneous", "scaling", "reloads",
                             "chat", "chat-hot", "stability"}
    for module in modules:
        declared = __import__(f"router.bench.scenarios.{module}", fromlist=["SCENARIOS"])
        assert declared.SCENARIOS, module
        for scenario in declared.SCENARIOS:
            assert isinstance(scenario, Scenario)
            assert registry[scenario.name] is scenario


def test_an_unknown_name_lists_the_scenarios() -> None:
    with pytest.raises(SpecError) as caught:
        scenarios.lookup("stabilty")
    assert "no scenario named 'stabilty'" in caught.value.message
    hint = caught.value.hint or ""
    assert "stability" in hint and "chat-hot" in hint


def test_contenders_are_checked_against_the_scenario() -> None:
    chat = scenarios.lookup("chat")
    scenarios.check_contenders(chat, ("affinity", "least_conn"))
    with pytest.raises(SpecError) as caught:
        scenarios.check_contenders(chat, ("round-robin",))
    assert "round-robin" in caught.value.message and "affinity" in (caught.value.hint or "")
    with pytest.raises(SpecError) as caught:
        scenarios.check_contenders(scenarios.lookup("scaling"), ("adaptive",))
    assert "has no contenders" in caught.value.message
