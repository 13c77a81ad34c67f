"""The key store and the nginx key map rendered from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.disk import keys
from router.disk.keys import KEY_PREFIX, KeyStore, load_store, save_store
from router.errors import SpecError
from router.render.keys import render_keys_conf


def test_add_makes_a_distinct_secret_per_key() -> None:
    store, alice = KeyStore().add("alice", now=1.0)
    store, bob = store.add("bob", now=2.0)
    assert alice.secret and bob.secret and alice.secret != bob.secret
    assert alice.secret.startswith(KEY_PREFIX) and len(alice.secret) > len(KEY_PREFIX) + 40
    assert alice.id != bob.id
    assert [k.name for k in store.active()] == ["alice", "bob"]


def test_revoke_drops_the_secret_but_keeps_the_record() -> None:
    store, alice = KeyStore().add("alice", now=1.0)
    store, revoked = store.revoke(alice.id, now=5.0)
    assert revoked.secret is None and revoked.revoked_at == 5.0
    assert store.active() == () and len(store.keys) == 1
    assert revoked.shown == "(revoked)"
    # A revoked name can be given to a new key.
    store, again = store.add("alice")
    assert again.id != alice.id


def test_revoke_by_name_and_unknown_names() -> None:
    store, _ = KeyStore().add("alice")
    store, _ = store.revoke("alice")
    with pytest.raises(SpecError, match="no active key"):
        store.revoke("alice")


@pytest.mark.parametrize("name", ["", "has space", "-leading-dash", "x" * 65, "quote\"d", "a;b"])
def test_names_that_cannot_be_keys(name: str) -> None:
    with pytest.raises(SpecError, match="not allowed"):
        KeyStore().add(name)


def test_duplicate_active_name_is_refused() -> None:
    store, _ = KeyStore().add("alice")
    with pytest.raises(SpecError, match="already named"):
        store.add("alice")


def test_store_round_trips_with_owner_only_mode(tmp_path: Path) -> None:
    path = tmp_path / "api-keys.json"
    store, _ = KeyStore().add("alice")
    store, _ = store.add("bob")
    store, _ = store.revoke("bob")
    save_store(path, store)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_store(path) == store
    assert load_store(tmp_path / "missing.json") == KeyStore()


def test_a_damaged_store_is_an_error_not_an_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "api-keys.json"
    path.write_text("{not json")
    with pytest.raises(SpecError, match="cannot read the key store"):
        load_store(path)
    path.write_text(json.dumps({"keys": [{"id": "x"}]}))
    with pytest.raises(SpecError, match="not in the expected format"):
        load_store(path)


def test_map_holds_active_keys_only_and_its_version_follows_them() -> None:
    store, alice = KeyStore().add("alice")
    store, bob = store.add("bob")
    both = render_keys_conf(store)
    assert f'"Bearer {alice.secret}" {alice.id};' in both.text
    assert f'"Bearer {bob.secret}" {bob.id};' in both.text
    revoked_store, _ = store.revoke("bob")
    one = render_keys_conf(revoked_store)
    assert bob.secret is not None and bob.secret not in one.text
    assert one.version != both.version
    assert f'default "{one.version}";' in one.text
    # The version never reveals a key.
    assert alice.secret is not None and one.version not in alice.secret
    assert render_keys_conf(KeyStore()).version == render_keys_conf(KeyStore()).version


def test_a_key_class_is_mapped_and_changing_it_changes_the_version() -> None:
    store, jobs = KeyStore().add("jobs", priority_class="batch")
    store, plain = store.add("plain")
    before = render_keys_conf(store)
    assert f"    {jobs.id} batch;" in before.text
    assert plain.id not in before.text.split("$fleet_key_class", 1)[1]
    moved, key = store.with_class("jobs", "interactive")
    assert key.priority_class == "interactive" and key.secret == jobs.secret
    after = render_keys_conf(moved)
    assert f"    {jobs.id} interactive;" in after.text
    assert after.version != before.version


def test_a_store_written_before_classes_loads_with_none(tmp_path: Path) -> None:
    path = tmp_path / "api-keys.json"
    path.write_text(json.dumps({"keys": [{"id": "key-1", "name": "a", "created_at": 1.0,
                                          "secret": "sk-fleet-x", "revoked_at": None}]}))
    assert load_store(path).keys[0].priority_class is None


@pytest.mark.parametrize(("field", "value"), [
    ("id", "key-1\n}"), ("name", "a b"), ("secret", 'sk-fleet-x" "other'),
    ("secret", 7), ("created_at", "yesterday"), ("priority_class", "Batch;"),
    ("tokens_per_min", 0), ("tokens_per_min", True), ("revoked_at", 5.0),
])
def test_a_store_from_the_network_is_checked_field_by_field(field: str, value: object) -> None:
    store, key = KeyStore().add("team", now=1.0)
    data = keys.store_to_json(store)
    assert keys.store_from_json(data, checked=True) == store
    data["keys"][0][field] = value
    with pytest.raises(TypeError, match=key.id if field != "id" else "id is not"):
        keys.store_from_json(data, checked=True)
