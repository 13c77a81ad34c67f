"""`fleet keys`: the gateway's API keys, applied to the running gateway."""

from __future__ import annotations

import argparse
import json
import time

from router.cli.common import progress, spec_arg, table
from router.config.spec import ClusterSpec, load_spec
from router.disk import keys
from router.disk.paths import RuntimePaths
from router.errors import SpecError
from router.runtime import pair
from router.runtime.keys import apply_keys


def _send_to_peers(spec: ClusterSpec, store: keys.KeyStore, expect: str | None) -> None:
    pair.fan_out(spec, RuntimePaths(spec.runtime_dir), "PUT", "/keys",
                 {**keys.store_to_json(store), "expect": expect}, progress)


def _priority_class(spec: ClusterSpec, name: str | None) -> str | None:
    """``name`` checked against the spec's classes; None stays None."""
    if name is None:
        return None
    classes = spec.priority.classes
    if name not in classes:
        raise SpecError(f"--class {name!r} is not a priority class of this spec",
                        hint=f"use one of {', '.join(classes)} (priority.classes)")
    return name


def _budget(value: str | None) -> keys.Budget:
    """A --tokens-per-min or `fleet keys budget` value: a count, `unlimited`,
    or `default` (None: the spec's budgets.tokens_per_min)."""
    if value is None or value == "default":
        return None
    if value == keys.UNLIMITED:
        return keys.UNLIMITED
    try:
        tokens = int(value)
    except ValueError:
        tokens = 0
    if not 1 <= tokens <= 10**12:
        raise SpecError(f"tokens per minute {value!r} is not a budget",
                        hint="give a whole number of tokens from 1, `unlimited` for none, "
                             "or `default` for the spec's budgets.tokens_per_min")
    return tokens


def _budget_shown(spec: ClusterSpec, key: keys.ApiKey) -> str:
    budget = key.budget(spec.budgets.tokens_per_min)
    return "-" if budget is None else f"{budget}/min"


def _budget_note(spec: ClusterSpec) -> str:
    return ("" if spec.budgets.enabled else
            "; note: budgets.enabled is false in this spec, so tokens are not counted "
            "until you set it to true")


def _class_note(spec: ClusterSpec) -> str:
    return ("" if spec.priority.enabled else
            "; note: priority.enabled is false in this spec, so classes are not applied "
            "until you set it to true")


def cmd_keys_add(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    priority_class = _priority_class(spec, args.priority_class)
    budget = _budget(args.tokens_per_min)
    before = keys.load_store(RuntimePaths(spec.runtime_dir).api_keys)
    store, key = before.add(args.name, priority_class=priority_class, tokens_per_min=budget)
    outcome = apply_keys(spec, store)
    shown_class = key.priority_class or spec.priority.default_class
    progress(f"created {key.id} ({key.name}, class {shown_class}, budget "
             f"{_budget_shown(spec, key)}); {outcome}"
             f"{_class_note(spec) if priority_class else ''}"
             f"{_budget_note(spec) if budget is not None else ''}")
    progress("the key is shown only now; store it where the client can read it")
    print(key.secret, flush=True)
    # After the secret is shown: a peer that fails must not lose it.
    _send_to_peers(spec, store, expect=keys.store_digest(before))
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    store = keys.load_store(RuntimePaths(spec.runtime_dir).api_keys)
    if args.json:
        print(json.dumps([{"id": k.id, "name": k.name, "created_at": k.created_at,
                           "revoked_at": k.revoked_at, "key": k.shown,
                           "class": k.priority_class or spec.priority.default_class,
                           "tokens_per_min": k.budget(spec.budgets.tokens_per_min)}
                          for k in store.keys],
                         indent=2))
        return 0
    if not store.keys:
        print("no keys yet; create one with `fleet keys add NAME`")
        return 0

    def stamp(at: float | None) -> str:
        return "-" if at is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(at))

    rows = [["ID", "NAME", "KEY", "CLASS", "BUDGET", "CREATED", "REVOKED"]]
    rows += [[k.id, k.name, k.shown, k.priority_class or spec.priority.default_class,
              _budget_shown(spec, k), stamp(k.created_at), stamp(k.revoked_at)]
             for k in store.keys]
    print(table(rows))
    return 0


def cmd_keys_class(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    priority_class = _priority_class(spec, args.priority_class)
    before = keys.load_store(RuntimePaths(spec.runtime_dir).api_keys)
    store, key = before.with_class(args.key, priority_class)
    outcome = apply_keys(spec, store)
    progress(f"{key.id} ({key.name}) is in class "
             f"{key.priority_class or spec.priority.default_class}; {outcome}{_class_note(spec)}")
    _send_to_peers(spec, store, expect=keys.store_digest(before))
    return 0


def cmd_keys_budget(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    budget = _budget(args.tokens_per_min)
    paths = RuntimePaths(spec.runtime_dir)
    before = keys.load_store(paths.api_keys)
    store, key = before.with_budget(args.key, budget)
    # The budget is the controller's to enforce (it reads the store when it
    # changes); nginx's key map does not hold it.
    keys.save_store(paths.api_keys, store)
    progress(f"{key.id} ({key.name}) has a budget of {_budget_shown(spec, key)} "
             f"(tokens per minute, prompt and completion); the controller applies it "
             f"within a second{_budget_note(spec)}")
    _send_to_peers(spec, store, expect=keys.store_digest(before))
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    before = keys.load_store(RuntimePaths(spec.runtime_dir).api_keys)
    store, key = before.revoke(args.key)
    outcome = apply_keys(spec, store)
    progress(f"revoked {key.id} ({key.name}); {outcome}")
    _send_to_peers(spec, store, expect=keys.store_digest(before))
    return 0


def cmd_keys_push(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    if not spec.ha.enabled:
        raise SpecError("`fleet keys push` sends this gateway's keys to the other gateways "
                        "of a pair, and this spec has none (ha.enabled is false)",
                        hint="set up the pair's ha section (docs/production.md)")
    store = keys.load_store(RuntimePaths(spec.runtime_dir).api_keys)
    progress(f"sending {len(store.keys)} key(s) (digest {keys.store_digest(store)}) to "
             f"{', '.join(spec.ha.peers)}; what they hold is replaced")
    _send_to_peers(spec, store, expect=None)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keys", help="API keys of the gateway (docs/security.md)")
    keys_sub = p.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    pk = keys_sub.add_parser("add", help="create a key and print it (shown only once)")
    spec_arg(pk)
    pk.add_argument("name", metavar="NAME", help="who the key is for, e.g. team-search")
    pk.add_argument("--class", dest="priority_class", metavar="CLASS",
                    help="its priority class, one of the spec's priority.classes "
                         "(default: priority.default_class)")
    pk.add_argument("--tokens-per-min", metavar="N",
                    help="its token budget: tokens per minute (prompt and completion), "
                         "`unlimited`, or `default` for the spec's budgets.tokens_per_min "
                         "(the default)")
    pk.set_defaults(func=cmd_keys_add)
    pk = keys_sub.add_parser("class", help="move a key to another priority class; "
                                           "its next request has it")
    spec_arg(pk)
    pk.add_argument("key", metavar="ID|NAME")
    pk.add_argument("priority_class", metavar="CLASS",
                    help="one of the spec's priority.classes")
    pk.set_defaults(func=cmd_keys_class)
    pk = keys_sub.add_parser("budget", help="set a key's tokens per minute; "
                                            "the controller applies it within a second")
    spec_arg(pk)
    pk.add_argument("key", metavar="ID|NAME")
    pk.add_argument("tokens_per_min", metavar="N|unlimited|default",
                    help="tokens per minute (prompt and completion), `unlimited`, or "
                         "`default` for the spec's budgets.tokens_per_min")
    pk.set_defaults(func=cmd_keys_budget)
    pk = keys_sub.add_parser("list", help="every key: id, name, prefix, created, revoked")
    spec_arg(pk)
    pk.add_argument("--json", action="store_true", help="machine-readable output")
    pk.set_defaults(func=cmd_keys_list)
    pk = keys_sub.add_parser("push", help="a gateway pair: make this gateway's keys the "
                                          "other gateways' (after they diverged)")
    spec_arg(pk)
    pk.set_defaults(func=cmd_keys_push)
    pk = keys_sub.add_parser("revoke", help="revoke a key by id or name; it stops at once")
    spec_arg(pk)
    pk.add_argument("key", metavar="ID|NAME")
    pk.set_defaults(func=cmd_keys_revoke)

