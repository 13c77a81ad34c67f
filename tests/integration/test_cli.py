"""The fleet CLI as a user runs it: a subprocess, its exit status and its words."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import fleet
from tests.support.fleet import spec_data, write_spec

pytestmark = pytest.mark.integration


def _spec(tmp_path: Path, **data: object) -> Path:
    return write_spec(tmp_path, spec_data(tmp_path / "rt", engine="cpu", **data))


def test_render_writes_configs_that_nginx_and_promtool_accept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = fleet("render", "--spec", str(_spec(tmp_path)), "--out", str(out))
    assert result.returncode == 0, result.stderr
    for name in ("nginx.conf", "upstream.conf", "prometheus.yml", "supervisord.conf"):
        assert (out / name).is_file()
    # The same checks a user would run by hand.
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    check = subprocess.run([nginx, "-t", "-e", str(out / "logs" / "e.log"), "-c",
                            str(out / "nginx.conf")], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    promtool = subprocess.run(["promtool", "check", "config", str(out / "prometheus.yml")],
                              capture_output=True, text=True, check=False)
    assert promtool.returncode == 0, promtool.stdout + promtool.stderr


def test_bad_spec_is_one_error_line_and_a_hint(tmp_path: Path) -> None:
    spec = _spec(tmp_path, replicas=0, gateway={"prot": 1})
    result = fleet("up", "--spec", str(spec))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "replicas" in lines[0] and "gateway.prot" in lines[0]
    assert lines[1].startswith("hint: ")
    assert "Traceback" not in result.stderr
    # Nothing was created or started.
    assert not (tmp_path / "rt").exists()


def test_missing_model_fails_before_anything_starts(tmp_path: Path) -> None:
    spec = _spec(tmp_path, model={"cache_dir": str(tmp_path / "empty-cache")})
    result = fleet("up", "--spec", str(spec))
    assert result.returncode == 4, result.stderr
    assert "fleet model prepare" in result.stderr
    assert not (tmp_path / "rt" / "supervisord.pid").exists()


def test_status_and_down_without_a_cluster(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    status = fleet("status", "--spec", str(spec))
    assert status.returncode == 1 and "no cluster is running" in status.stdout
    down = fleet("down", "--spec", str(spec))
    assert down.returncode == 0 and "no cluster is running" in down.stderr


@pytest.mark.parametrize(("args", "words"), [
    (["--duration", "0"], "--duration must be more than 0 seconds"),
    ([], "no cluster is running"),
])
def test_bench_trace_says_what_is_wrong(tmp_path: Path, args: list[str], words: str) -> None:
    result = fleet("bench", "trace", "--spec", str(_spec(tmp_path)), "--out",
                   str(tmp_path / "t.jsonl"), *args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and words in lines[0], result.stderr
    assert lines[1].startswith("hint: ")
    assert not (tmp_path / "t.jsonl").exists()


@pytest.mark.parametrize("args", [["up", "--spec"], ["logs"], ["bogus"]])
def test_bad_arguments_exit_2_with_usage(args: list[str]) -> None:
    result = fleet(*args)
    assert result.returncode == 2
    assert "usage: fleet" in result.stderr
