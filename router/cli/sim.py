"""`fleet sim serve`: one simulated replica."""

from __future__ import annotations

import argparse

from router.config.spec import SIM_SERVED_MODEL_NAME
from router.errors import SpecError


def cmd_sim_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from router.config.sim import SimSettings
    from router.sim.run import serve

    def given(**values: object) -> dict[str, object]:
        # Only what the user passed: every default lives in SimSettings.
        return {k: v for k, v in values.items() if v is not None}

    try:
        data = (SimSettings.model_validate_json(args.settings) if args.settings
                else SimSettings()).model_dump()
        data.update(given(speed=args.speed, max_num_seqs=args.max_num_seqs,
                          max_model_len=args.max_model_len, seed=args.seed,
                          kv_capacity_tokens=args.kv_capacity_tokens,
                          mean_output_tokens=args.mean_output_tokens))
        data["faults"].update(given(startup_delay_s=args.startup_delay, slow=args.slow,
                                    error_rate=args.error_rate, hang=args.hang or None,
                                    fail_start_while=args.fail_start_while))
        settings = SimSettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "--settings"
        raise SpecError(f"{where}: {first['msg']} (got {first.get('input')!r})",
                        hint="see `fleet sim serve --help` for the options") from exc
    serve(settings, args.host, args.port, args.model)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sim", help="the vLLM-compatible replica simulator")
    sim_sub = p.add_subparsers(dest="sim_command", required=True, metavar="SUBCOMMAND")
    ps = sim_sub.add_parser("serve", help="serve one simulated replica")
    ps.add_argument("--port", type=int, required=True)
    ps.add_argument("--host", default="127.0.0.1")
    ps.add_argument("--model", default=SIM_SERVED_MODEL_NAME, help="served model name")
    ps.add_argument("--settings", metavar="JSON",
                    help="all settings as JSON (what `fleet up` passes); flags override it")
    ps.add_argument("--speed", type=float, help="speed factor (a GPU at a third: 0.33)")
    ps.add_argument("--max-num-seqs", type=int, help="running requests before queueing")
    ps.add_argument("--max-model-len", type=int)
    ps.add_argument("--kv-capacity-tokens", type=int)
    ps.add_argument("--mean-output-tokens", type=int)
    ps.add_argument("--seed", type=int)
    ps.add_argument("--startup-delay", type=float, metavar="SECONDS",
                    help="refuse connections this long after start")
    ps.add_argument("--slow", type=float, help="fault: extra speed multiplier")
    ps.add_argument("--error-rate", type=float, help="fault: fraction of requests answered 500")
    ps.add_argument("--hang", action="store_true", help="fault: accept but never answer")
    ps.add_argument("--fail-start-while", metavar="FILE",
                    help="fault: exit with status 1 at start while FILE exists (a crash loop)")
    ps.set_defaults(func=cmd_sim_serve)

