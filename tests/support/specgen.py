"""Hypothesis strategies for cluster specs, derived from the spec's own JSON schema.

``from_schema`` walks the schema pydantic publishes for ClusterSpec (objects,
$ref, anyOf, enums, bounds) and draws documents that mostly satisfy it, so
most reach the validators behind the schema; ``mutated`` then breaks one
place of such a document the ways a hand-edited YAML file breaks: a wrong
type, a value out of range, a key removed, a key misspelt, a list where a
mapping belongs. (hypothesis-jsonschema would do the first half; its
releases lag behind Hypothesis' internals, so this is the few lines we need.)
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

# Any YAML value a person could type, including the awkward ones.
YAML_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["", "auto", "0", "-1", "1e9", "yes", "1m", "2GB", "none", "..",
                     "127.0.0.1", "0.0.0.0", "/", "a" * 300]),
)
ANY_YAML = st.recursive(YAML_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=3)),
    max_leaves=8)


def _bounds(node: dict[str, Any]) -> tuple[float | None, float | None]:
    low = node.get("minimum", node.get("exclusiveMinimum"))
    high = node.get("maximum", node.get("exclusiveMaximum"))
    return low, high


def from_schema(node: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values for one schema node; mostly valid by the schema, now and then its edges."""
    if "$ref" in node:
        return from_schema(defs[node["$ref"].rsplit("/", 1)[1]], defs)
    if "anyOf" in node:
        return st.one_of([from_schema(option, defs) for option in node["anyOf"]])
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node.get("type")
    if kind == "object":
        properties = node.get("properties", {})
        if properties:
            return st.fixed_dictionaries({}, optional={
                key: from_schema(value, defs) for key, value in properties.items()})
        values = node.get("additionalProperties")
        inner = from_schema(values, defs) if isinstance(values, dict) else YAML_SCALARS
        return st.dictionaries(st.text(min_size=1, max_size=12), inner, max_size=3)
    if kind == "array":
        items = node.get("items")
        return st.lists(from_schema(items, defs) if items else YAML_SCALARS, max_size=3)
    if kind == "integer":
        low, high = _bounds(node)
        lo = None if low is None else math.ceil(low) + (1 if "exclusiveMinimum" in node else 0)
        hi = None if high is None else math.floor(high)
        return st.integers(min_value=lo if lo is not None else -(2**31),
                           max_value=hi if hi is not None else 2**31)
    if kind == "number":
        low, high = _bounds(node)
        return st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False,
                         exclude_min="exclusiveMinimum" in node,
                         exclude_max="exclusiveMaximum" in node)
    if kind == "string":
        # Formats the validators parse ("1m", "2GB", addresses) are not in
        # the schema; the default shows one valid form.
        default = node.get("default")
        known = st.sampled_from([default]) if isinstance(default, str) else st.nothing()
        return st.one_of(known, st.text(min_size=node.get("minLength", 0), max_size=20))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return YAML_SCALARS


def specs(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    return from_schema(schema, schema.get("$defs", {}))


def _paths(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a document: mapping keys and list positions."""
    found = [prefix]
    if isinstance(document, dict):
        for key, value in document.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += _paths(value, (*prefix, index))
    return found


def _replace(document: Any, path: tuple[Any, ...], change: Any) -> Any:
    """A copy of ``document`` with the value at ``path`` changed (or _DELETE-d)."""
    if not path:
        return change(document)
    copy: Any = dict(document) if isinstance(document, dict) else list(document)
    result = _replace(copy[path[0]], path[1:], change)
    if result is _DELETE:
        del copy[path[0]]
    else:
        copy[path[0]] = result
    return copy


_DELETE = object()


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> Any:
    """A spec with one to three places broken."""
    document: Any = draw(base)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(_paths(document)))
        how = draw(st.sampled_from(["value", "delete", "unknown key", "misspelt key",
                                    "wrap in list"]))
        if how == "value":
            value = draw(ANY_YAML)
            document = _replace(document, path, lambda _old, v=value: v)
        elif how == "delete" and path:
            document = _replace(document, path, lambda _old: _DELETE)
        elif how == "unknown key":
            key = draw(st.text(min_size=1, max_size=12))
            value = draw(ANY_YAML)
            document = _replace(document, path, lambda old, k=key, v=value:
                                {**old, k: v} if isinstance(old, dict) else old)
        elif how == "misspelt key" and path and isinstance(path[-1], str):
            renamed = path[-1][:-1] + "_" if len(path[-1]) > 1 else path[-1] + "x"
            document = _replace(document, path[:-1], lambda old, k=path[-1], n=renamed:
                                {(n if key == k else key): value for key, value in old.items()})
        elif how == "wrap in list":
            document = _replace(document, path, lambda old: [old])
    return document
