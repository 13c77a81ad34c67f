"""`fleet bundle` and its install.sh against a small fake bundle: the split,
the manifest, the checks, and an install into a prefix that runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from router.errors import BundleError
from router.ops import bundle

PROGRAMS = {"nginx": "usr/sbin", "prometheus": "usr/bin", "promtool": "usr/bin",
            "prometheus-nginx-exporter": "usr/bin", "mtail": "usr/bin", "logrotate": "usr/sbin"}


def _fake_wheel(folder: Path) -> None:
    name = "fleetfake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(folder / name, "w") as wheel:
        wheel.writestr("fleetfake/__init__.py", "ANSWER = 42\n")
        wheel.writestr("fleetfake-1.0.dist-info/METADATA",
                       "Metadata-Version: 2.1\nName: fleetfake\nVersion: 1.0\n")
        wheel.writestr("fleetfake-1.0.dist-info/WHEEL",
                       "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                       "Tag: py3-none-any\n")
        wheel.writestr("fleetfake-1.0.dist-info/RECORD", "")


def _fake_deb(folder: Path, work: Path) -> None:
    root = work / "debroot"
    for program, where in PROGRAMS.items():
        path = root / where / program
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/bin/sh\necho {program} fake\n")
        path.chmod(0o755)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        "Package: fleet-fake\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\n"
        "Description: fake\n")
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root),
                    str(folder / "fleet-fake_1.0_all.deb")], check=True, capture_output=True)


def _target(tmp_path: Path, host: str = "python 3\npyyaml\n") -> bundle.BundleTarget:
    lock = tmp_path / "lock.txt"
    lock.write_text("# fake\nfleetfake==1.0   # pinned\n")
    host_file = tmp_path / "target.host"
    host_file.write_text(host)
    return bundle.BundleTarget(name="gpu", description="test", python="3.12", platforms=(),
                               lock=lock, host=host_file, debs=("fleet-fake",),
                               dummy_model="Qwen/Qwen2.5-7B-Instruct-AWQ")


def _build(tmp_path: Path, target: bundle.BundleTarget) -> tuple[Path, bundle.Manifest]:
    calls: list[Sequence[str]] = []

    def fake_run(argv: Sequence[str], cwd: Path) -> None:
        calls.append(argv)
        if "pip" in argv:
            assert "--no-deps" in argv and "fleetfake==1.0" in argv
            _fake_wheel(Path(argv[argv.index("-d") + 1]))
        else:
            assert list(argv[:2]) == ["apt-get", "download"]
            _fake_deb(cwd, tmp_path)

    def fake_model(model: str, cache: Path) -> Path:
        folder = cache / "dummy" / "Qwen2.5-7B-Instruct-AWQ"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        return folder

    out = tmp_path / "bundle"
    manifest = bundle.build(target, out, part_bytes=1 << 20, with_model=True, run=fake_run,
                            progress=lambda _: None, prepare_model=fake_model)
    assert len(calls) == 2
    return out, manifest


def _install(out: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(out / "install.sh"), "--prefix", str(prefix)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_parts_are_bounded_and_listed_with_their_checksums(tmp_path: Path) -> None:
    out, manifest = _build(tmp_path, _target(tmp_path))
    assert len(manifest.parts) >= 2
    assert all(p.bytes <= 1 << 20 for p in manifest.parts)
    assert sum(p.bytes for p in manifest.parts) == manifest.archive_bytes
    assert sorted(p.name for p in out.glob("part-*")) == [p.name for p in manifest.parts]
    assert manifest.wheels == ("fleetfake-1.0-py3-none-any.whl",)
    assert manifest.model == "cache/llm-fleet/models/dummy/Qwen2.5-7B-Instruct-AWQ"
    assert json.loads((out / "manifest.json").read_text())["archive_sha256"] == \
        manifest.archive_sha256
    sums = (out / "SHA256SUMS").read_text().splitlines()
    assert sums[-1] == f"{manifest.archive_sha256}  bundle.tar"
    bundle.join(manifest, out, tmp_path / "joined.tar")


def test_a_damaged_or_missing_part_is_named(tmp_path: Path) -> None:
    out, manifest = _build(tmp_path, _target(tmp_path))
    damaged = out / manifest.parts[1].name
    damaged.write_bytes(b"x" + damaged.read_bytes()[1:])
    with pytest.raises(BundleError, match="part-001 is damaged"):
        bundle.join(manifest, out, tmp_path / "joined.tar")
    result = _install(out, tmp_path / "prefix")
    assert result.returncode == 4
    assert "part-001: FAILED" in result.stdout + result.stderr
    assert "error: a part is missing or damaged" in result.stderr
    assert not (tmp_path / "prefix" / "site").exists()
    (out / manifest.parts[0].name).unlink()
    with pytest.raises(BundleError, match="part-000 is missing"):
        bundle.join(manifest, out, tmp_path / "joined.tar")


def test_install_puts_everything_in_the_prefix_and_fleet_runs(tmp_path: Path) -> None:
    out, _ = _build(tmp_path, _target(tmp_path))
    prefix = tmp_path / "prefix"
    result = _install(out, prefix)
    assert result.returncode == 0, result.stderr
    assert (prefix / "site" / "fleetfake" / "__init__.py").is_file()
    assert (prefix / "root" / "usr" / "sbin" / "nginx").is_file()
    assert (prefix / "llm-fleet" / "router" / "cli" / "__init__.py").is_file()
    assert (prefix / "llm-fleet" / "deploy" / "bundle" / "install.sh").is_file()
    model = prefix / "cache" / "llm-fleet" / "models" / "dummy" / "Qwen2.5-7B-Instruct-AWQ"
    assert (model / "config.json").is_file()
    assert not (prefix / ".incoming").exists()
    check = subprocess.run(
        ["bash", "-c", f". {prefix}/env.sh && command -v nginx && fleet --version && "
                       "python -c 'import fleetfake; print(fleetfake.ANSWER)' && "
                       "command -v logrotate && logrotate"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert check.returncode == 0, check.stderr
    lines = check.stdout.splitlines()
    assert lines[0] == str(prefix / "root" / "usr" / "sbin" / "nginx")
    assert lines[1].startswith("llm-fleet ") and lines[2] == "42"
    # logrotate runs through a wrapper that adds the bundle's libpopt (a GPU
    # host may lack it), leaving every other program the host's libraries.
    assert lines[3] == str(prefix / "bin" / "logrotate") and lines[4] == "logrotate fake"
    assert "LD_LIBRARY_PATH" in (prefix / "bin" / "logrotate").read_text()
    assert "LD_LIBRARY_PATH" not in (prefix / "env.sh").read_text()
    # A second install over the first replaces it whole.
    assert _install(out, prefix).returncode == 0


def test_install_refuses_a_host_without_what_the_bundle_was_built_for(tmp_path: Path) -> None:
    out, _ = _build(tmp_path, _target(tmp_path, host="python 2.7\nno-such-package-xyz\n"))
    result = _install(out, tmp_path / "prefix")
    assert result.returncode == 5
    assert "error: python is " in result.stderr and "built for 2.7" in result.stderr
    assert "error: no-such-package-xyz is not installed" in result.stderr
    assert not (tmp_path / "prefix" / "site").exists()


def test_a_lock_line_without_a_version_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text("vllm\n")
    with pytest.raises(BundleError, match="'vllm' is not pinned"):
        bundle.read_lock(lock)


def test_the_gpu_target_pins_what_the_gpu_probe_found_missing() -> None:
    pins = dict(p.split("==") for p in bundle.read_lock(bundle.TARGETS["gpu"].lock))
    assert pins["vllm"] == "0.26.0"
    assert {"llguidance", "compressed-tensors", "supervisor", "pydantic"} <= set(pins)
