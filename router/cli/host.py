"""Getting a host ready: the model on disk, a preflight, an offline bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from router.cli.common import progress, spec_arg
from router.config.plan import choose_engine
from router.config.spec import load_spec, resolve_engine_settings
from router.errors import SpecError
from router.host.devices import discover
from router.models import store as model_store


def cmd_model_prepare(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    engine = args.engine or choose_engine(spec, discover())
    settings = resolve_engine_settings(spec, engine)
    if engine == "sim":
        progress("a simulated fleet needs no model files")
        return 0
    if engine == "external":
        progress("external replicas hold their own model; prepare it where they run "
                  "(fleet model prepare --engine gpu)")
        return 0
    dummy = args.dummy or settings.dummy
    progress(f"preparing {'a config-only ' if dummy else ''}{settings.model} "
              f"for the {engine} engine")
    folder = model_store.prepare(settings.model, spec.model.cache_dir, force=args.force,
                                 dummy=dummy)
    print(folder)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from router.ops import doctor

    spec = load_spec(args.spec)
    inventory = discover()
    note = doctor.engine_note(spec, inventory)
    if note:
        print(f"note: {note}")
    verdicts = doctor.diagnose(spec, doctor.gather(spec, inventory=inventory))
    for verdict in verdicts:
        print("\n".join(verdict.lines()))
    failed = [v for v in verdicts if v.status == "FAIL"]
    print(f"\n{len(failed)} problem(s)" if failed else "\nready for `fleet up`")
    return 1 if failed else 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from router.ops import bundle

    target = bundle.TARGETS[args.target]
    if args.part_size_mib <= 0:
        raise SpecError("--part-size-mib must be above 0",
                        hint=f"e.g. --part-size-mib {bundle.DEFAULT_PART_MIB}")
    progress(f"bundle for {target.description}")
    manifest = bundle.build(
        target, args.out.resolve(), int(args.part_size_mib * bundle.MiB),
        with_model=not args.no_model, progress=progress,
        prepare_model=lambda model, cache: model_store.prepare_dummy(model, cache))
    for part in manifest.parts:
        print(args.out / part.name)
    print(args.out / bundle.MANIFEST)
    progress(f"{len(manifest.parts)} part(s), {manifest.archive_bytes / bundle.MiB:.0f} MiB: "
              f"{len(manifest.wheels)} wheels, {len(manifest.debs)} Debian packages"
              + (f", {manifest.model}" if manifest.model else ""))
    progress(f"on the host: bash {args.out}/install.sh --prefix /opt/llm-fleet")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("model", help="model cache commands")
    model_sub = p.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")
    pp = model_sub.add_parser("prepare",
                              help="download/convert the model once, for offline serving")
    spec_arg(pp)
    pp.add_argument("--engine", choices=["cpu", "gpu"], default=None,
                    help="prepare the model of this engine (default: what the spec picks here)")
    pp.add_argument("--force", action="store_true", help="prepare again even if cached")
    pp.add_argument("--dummy", action="store_true",
                    help="config, quantization and tokenizer only, no weights: for "
                         "model.load_format: dummy (measuring a box before downloading)")
    pp.set_defaults(func=cmd_model_prepare)

    p = sub.add_parser("doctor", help="preflight of a GPU box: driver against vLLM's CUDA, "
                                      "GPUs, model memory, ports, disk; a fix for each problem")
    spec_arg(p)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("bundle", help="build an offline bundle for a host without a package "
                                      "registry (docs/production.md)")
    p.add_argument("--target", choices=["gpu"], default="gpu",
                   help="gpu: vLLM's CUDA 13 build for Python 3.12 and torch 2.11")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="where the parts, manifest.json, SHA256SUMS and install.sh go")
    p.add_argument("--part-size-mib", type=float, default=60.0, metavar="MIB",
                   help="largest part, in MiB (default 60: fits a 64 MiB transfer limit)")
    p.add_argument("--no-model", action="store_true",
                   help="leave out the config-only reference model (model.load_format: dummy)")
    p.set_defaults(func=cmd_bundle)

