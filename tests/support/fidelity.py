"""Comparing a simulated replica with real vLLM: metric families and answers."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families


def metric_families(exposition: str) -> dict[str, tuple[str, frozenset[str]]]:
    """vllm:* families as {name: (type, label names)}, as Prometheus would see them."""
    families: dict[str, tuple[str, frozenset[str]]] = {}
    for family in text_string_to_metric_families(exposition):
        if not family.name.startswith("vllm:") or family.name.endswith("_created"):
            continue
        labels = frozenset(k for s in family.samples for k in s.labels if k not in {"le"})
        families[family.name] = (family.type, labels)
    return families


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys and types, not contents."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__
