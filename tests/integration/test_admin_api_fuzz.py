"""The controller's admin API under schemathesis: requests generated from its
own OpenAPI schema, with and without the token, against a live controller
in a simulated fleet. Whatever arrives, the answer is never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.support.fleet import running_fleet

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    with running_fleet(tmp_path_factory.mktemp("fuzz"), replicas=2,
                       gateway={"worker_processes": 1}) as running:
        yield running.admin_url, running.admin_token


def test_admin_api_never_answers_5xx(admin: tuple[str, str]) -> None:
    url, token = admin
    # Loaded at run time, from the live controller: the schema it really serves.
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations
    sent: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        def never_5xx(case: Any) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {token}"},
                                   checks=[not_a_server_error])
            response = case.call_and_validate(checks=[not_a_server_error])
            sent.append(response.status_code)

        never_5xx()
    # Operations with parameters get many cases each, not one.
    assert len(sent) > 3 * len(operations), len(sent)
    # Without the token, guarded routes refuse; the summary for the console does not.
    assert 401 in sent


def test_the_schema_covers_every_admin_route(admin: tuple[str, str]) -> None:
    url, _ = admin
    paths = set(requests.get(f"{url}/openapi.json", timeout=5).json()["paths"])
    assert paths == {"/status", "/decisions", "/replicas/{name}/drain",
                     "/replicas/{name}/undrain", "/replicas/{name}/weight", "/fleet/status",
                     "/keys", "/keys/digest"}


def test_fuzzing_left_the_fleet_serving(admin: tuple[str, str], tmp_path: Path) -> None:
    url, token = admin
    status = requests.get(f"{url}/status", headers={"Authorization": f"Bearer {token}"},
                          timeout=5).json()
    assert [r["health"]["healthy"] for r in status["replicas"]] == [True, True]
