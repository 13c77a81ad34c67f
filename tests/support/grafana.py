"""Read the committed Grafana dashboards the way Grafana would query them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router import REPO_ROOT

DASHBOARDS = REPO_ROOT / "grafana" / "dashboards"


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    expr: str


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def queries(path: Path) -> Iterator[Query]:
    """Every panel target and every Prometheus annotation of a dashboard."""
    board = load(path)
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield Query(board["uid"], panel["title"], target["refId"], target["expr"])
    for annotation in board["annotations"]["list"]:
        if "expr" in annotation:
            yield Query(board["uid"], f"annotation {annotation['name']}", "-",
                        annotation["expr"])


@dataclass(frozen=True)
class Variable:
    """A dashboard variable filled from ``label_values(SELECTOR, LABEL)``."""

    dashboard: str
    name: str
    selector: str
    label: str


_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def variables(path: Path) -> Iterator[Variable]:
    board = load(path)
    for variable in board["templating"]["list"]:
        definition = variable["query"]["query"]
        match = _LABEL_VALUES.match(definition)
        if match is None:
            raise AssertionError(f"{board['uid']}: variable {variable['name']} is not a "
                                 f"label_values query: {definition}")
        yield Variable(board["uid"], variable["name"], match["selector"], match["label"])


def substitute(expr: str, rate_interval: str, replica: str = ".+") -> str:
    """Grafana's variables as Grafana fills them in: ``$replica`` set to All."""
    text = expr.replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval)
    text = text.replace("$replica", replica)
    leftover = re.findall(r"\$\w+", text)
    if leftover:
        raise AssertionError(f"unknown dashboard variable(s) {leftover} in {expr}")
    return text
