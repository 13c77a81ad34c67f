"""`fleet bundle`: everything a host without a package registry needs, in parts.

Air-gapped GPU hosts are common: the operator builds the bundle on a machine
that reaches the registries, carries the parts across (each at most
``part_size`` bytes, so any transfer limit can be met) and runs the
``install.sh`` that travels with them. The bundle holds:

- ``wheels/``: the target's pinned wheels (``deploy/bundle/<lock>.txt``),
  downloaded without resolution: the host already has torch and CUDA, and
  its versions (``<lock>.host``) are checked before anything is installed;
- ``debs/``: nginx, Prometheus (with promtool), the nginx exporter, mtail,
  logrotate and its libpopt
  from Debian's packages, unpacked on the host with ``dpkg -x`` into the
  prefix, so nothing touches the host's own package database;
- ``llm-fleet/``: this source tree (templates and dashboards travel with it);
- ``cache/llm-fleet/models/dummy/``: optionally, the target's config-only
  model for ``model.load_format: dummy``, so the box can be measured at once.

The tar is split into ``part-NNN`` files; ``manifest.json`` lists every part,
its size and SHA-256, and ``SHA256SUMS`` holds the same for ``sha256sum -c``.
Splitting, manifest and checks are pure functions of bytes on disk and are
unit-tested; downloads go through an injected command runner.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from router import REPO_ROOT, __version__
from router.errors import BundleError

MiB = 1 << 20
# A 64 MiB transfer limit leaves room for a few MiB of other files beside a part.
DEFAULT_PART_MIB = 60
ARCHIVE = "bundle.tar"
MANIFEST = "manifest.json"
CHECKSUMS = "SHA256SUMS"
INSTALLER = REPO_ROOT / "deploy" / "bundle" / "install.sh"


@dataclass(frozen=True)
class BundleTarget:
    """One kind of host a bundle is built for."""

    name: str
    description: str
    python: str
    platforms: tuple[str, ...]
    lock: Path  # pinned wheels
    host: Path  # what the host must already have
    debs: tuple[str, ...]
    dummy_model: str | None


_MANYLINUX = tuple(f"manylinux_2_{n}_x86_64" for n in (17, 24, 26, 27, 28, 31, 34)) + (
    "manylinux2014_x86_64", "manylinux1_x86_64")

TARGETS: dict[str, BundleTarget] = {
    "gpu": BundleTarget(
        name="gpu",
        description="x86-64 NVIDIA host with Python 3.12 and torch 2.11.0+cu130 "
                    "(CUDA 13: driver 580 or newer)",
        python="3.12",
        platforms=_MANYLINUX,
        lock=REPO_ROOT / "deploy" / "bundle" / "gpu-cu130-py312.txt",
        host=REPO_ROOT / "deploy" / "bundle" / "gpu-cu130-py312.host",
        debs=("nginx", "libnginx-mod-http-js", "prometheus", "prometheus-nginx-exporter",
              "mtail", "logrotate", "libpopt0"),
        dummy_model="Qwen/Qwen2.5-7B-Instruct-AWQ",
    ),
}


@dataclass(frozen=True)
class Part:
    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    target: str
    llm_fleet: str
    created: str
    archive_bytes: int
    archive_sha256: str
    parts: tuple[Part, ...]
    wheels: tuple[str, ...]
    debs: tuple[str, ...]
    model: str | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def checksums(self) -> str:
        """sha256sum's format: the parts, then the archive they join into."""
        lines = [f"{p.sha256}  {p.name}" for p in self.parts]
        return "\n".join(lines + [f"{self.archive_sha256}  {ARCHIVE}"]) + "\n"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def split(archive: Path, out: Path, part_bytes: int) -> tuple[Part, ...]:
    """Cut ``archive`` into ``out/part-NNN`` files of at most ``part_bytes`` each."""
    if part_bytes < 1:
        raise BundleError("the part size must be at least 1 byte",
                          hint="pass --part-size-mib 60 (the default)")
    parts = []
    with archive.open("rb") as source:
        for index in range(10_000):
            chunk = source.read(part_bytes)
            if not chunk:
                break
            name = f"part-{index:03d}"
            (out / name).write_bytes(chunk)
            parts.append(Part(name, len(chunk), hashlib.sha256(chunk).hexdigest()))
    return tuple(parts)


def join(manifest: Manifest, folder: Path, into: Path) -> None:
    """Check every part and the joined archive against the manifest (what
    install.sh does with sha256sum, here for tests and Python callers)."""
    with into.open("wb") as joined:
        for part in manifest.parts:
            path = folder / part.name
            if not path.is_file():
                raise BundleError(f"{part.name} is missing from {folder}",
                                  hint="copy every part-NNN the manifest lists")
            if sha256_of(path) != part.sha256:
                raise BundleError(f"{part.name} is damaged (SHA-256 differs from the manifest)",
                                  hint=f"copy {part.name} again")
            with path.open("rb") as handle:
                shutil.copyfileobj(handle, joined)
    if sha256_of(into) != manifest.archive_sha256:
        raise BundleError("the joined archive does not match the manifest",
                          hint="the parts come from different bundles; copy one bundle whole")


def read_lock(path: Path) -> list[str]:
    """`name==version` lines; comments and blank lines skipped."""
    pins = []
    for line in path.read_text(encoding="utf-8").splitlines():
        pin = line.split("#", 1)[0].strip()
        if pin:
            if "==" not in pin:
                raise BundleError(f"{path}: {pin!r} is not pinned",
                                  hint="write every wheel as name==version")
            pins.append(pin)
    return pins


def source_files(root: Path) -> list[Path]:
    """The files of this checkout that git does not ignore, relative to it."""
    proc = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                           "--exclude-standard"], capture_output=True, check=False)
    if proc.returncode != 0:
        raise BundleError(f"{root} is not a git checkout, so its source cannot be listed",
                          hint="build the bundle from a clone of llm-fleet")
    names = [n for n in proc.stdout.decode().split("\0") if n]
    return [Path(n) for n in names if (root / n).is_file()]


Runner = Callable[[Sequence[str], Path], None]


def run_command(argv: Sequence[str], cwd: Path) -> None:
    proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()
        what = "pip download" if "pip" in argv else " ".join(argv[:2])
        raise BundleError(f"{what} failed: "
                          f"{last[-1] if last else 'exit ' + str(proc.returncode)}",
                          hint="check that this machine reaches PyPI and Debian's archive "
                               "(apt-get update), then run fleet bundle again")


def download(target: BundleTarget, staging: Path, run: Runner) -> None:
    """Fill staging/wheels and staging/debs."""
    wheels, debs = staging / "wheels", staging / "debs"
    wheels.mkdir(parents=True)
    debs.mkdir(parents=True)
    platform_args = [arg for p in target.platforms for arg in ("--platform", p)]
    run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--only-binary=:all:", "--python-version", target.python, "--implementation", "cp",
         *platform_args, "--progress-bar", "off", "-d", str(wheels),
         *read_lock(target.lock)], staging)
    run(["apt-get", "download", "-q", *target.debs], debs)


def write_archive(staging: Path, archive: Path) -> None:
    # Wheels and debs are compressed already; a plain tar costs no CPU.
    with tarfile.open(archive, "w") as tar:
        for entry in sorted(staging.iterdir()):
            tar.add(entry, arcname=entry.name)


def build(target: BundleTarget, out: Path, part_bytes: int, with_model: bool,
          run: Runner = run_command, progress: Callable[[str], None] = print,
          prepare_model: Callable[[str, Path], Path] | None = None) -> Manifest:
    """Download, pack and split; return the manifest written into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    stale = [p for p in out.iterdir() if p.name.startswith("part-")
             or p.name in (MANIFEST, CHECKSUMS, "install.sh")]
    for path in stale:
        path.unlink()
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        progress(f"downloading {len(read_lock(target.lock))} wheels for Python {target.python} "
                 f"and Debian packages {', '.join(target.debs)}")
        download(target, staging, run)
        progress("copying the llm-fleet source tree")
        for relative in source_files(REPO_ROOT):
            destination = staging / "llm-fleet" / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / relative, destination)
        shutil.copyfile(target.host, staging / "host-requirements.txt")
        model = None
        if with_model and target.dummy_model and prepare_model is not None:
            progress(f"adding the config-only {target.dummy_model}")
            models = staging / "cache" / "llm-fleet" / "models"
            folder = prepare_model(target.dummy_model, models)
            model = str(folder.relative_to(staging))
        archive = out / ".staging.tar"
        write_archive(staging, archive)
        progress(f"splitting {archive.stat().st_size / MiB:.0f} MiB into parts of at most "
                 f"{part_bytes / MiB:g} MiB")
        manifest = Manifest(
            target=target.name, llm_fleet=__version__,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            archive_bytes=archive.stat().st_size, archive_sha256=sha256_of(archive),
            parts=split(archive, out, part_bytes),
            wheels=tuple(sorted(p.name for p in (staging / "wheels").iterdir())),
            debs=tuple(sorted(p.name for p in (staging / "debs").iterdir())),
            model=model)
        archive.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    (out / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    (out / CHECKSUMS).write_text(manifest.checksums(), encoding="utf-8")
    shutil.copyfile(INSTALLER, out / "install.sh")
    (out / "install.sh").chmod(0o755)
    return manifest
