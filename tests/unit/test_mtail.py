"""The mtail program over the gateway's access log: its counters agree with a
plain JSON reading of the same log, captured from a real gateway."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from router import REPO_ROOT
from router.host.machine import MTAIL_PROGRAMS

# Real nginx lines: streams, 404/413/400 answers, 500s, and requests retried
# onto another replica after one crashed.
ACCESS_LOG = REPO_ROOT / "tests" / "fixtures" / "gateway-access.log"


def _mtail() -> str:
    binary = shutil.which("mtail")
    assert binary, "mtail is installed by deploy/setup.sh"
    return binary


def one_shot(log: Path) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    proc = subprocess.run(
        [_mtail(), "-progs", str(MTAIL_PROGRAMS), "-logs", str(log), "-one_shot",
         "-one_shot_format", "prometheus", "-emit_prog_label=false",
         "-address", "127.0.0.1", "-port", "0"],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(proc.stdout):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = (
                sample.value)
    return samples


def test_program_compiles() -> None:
    # mtail listens even to compile only; on port 0, a cluster's exporter on
    # its default port does not fail the check.
    proc = subprocess.run([_mtail(), "-progs", str(MTAIL_PROGRAMS), "-compile_only",
                           "-address", "127.0.0.1", "-port", "0"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def test_counters_match_the_log() -> None:
    lines = [json.loads(line) for line in ACCESS_LOG.read_text().splitlines()]
    assert len(lines) >= 40
    expected = Counter((line["replica"] or "gateway", line["route"], str(line["status"]))
                       for line in lines)
    retried = Counter((line["replica"], line["route"]) for line in lines
                      if ", " in line["upstream_addr"])
    assert retried, "the fixture holds retried requests"
    assert {status for _, _, status in expected} >= {"200", "400", "404", "413", "500"}

    samples = one_shot(ACCESS_LOG)
    requests = {(dict(k)["replica"], dict(k)["route"], dict(k)["status"]): v
                for k, v in samples["fleet_gateway_requests_total"].items()}
    assert requests == dict(expected)
    got_retried = {(dict(k)["replica"], dict(k)["route"]): v
                   for k, v in samples["fleet_gateway_retried_requests_total"].items()}
    assert got_retried == dict(retried)

    # Latency histograms count every request a replica answered, with the
    # request_time nginx logged.
    served = [line for line in lines if line["replica"]]
    counts = samples["fleet_gateway_request_duration_seconds_count"]
    assert sum(counts.values()) == len(served)
    sums = samples["fleet_gateway_request_duration_seconds_sum"]
    assert abs(sum(sums.values()) - sum(line["request_time"] for line in served)) < 1e-6
    # Header time is the answering attempt's ("-, 0.043" reads 0.043).
    header_sums = samples["fleet_gateway_upstream_header_seconds_sum"]
    expected_header = sum(float(line["upstream_header_time"].split(", ")[-1])
                          for line in served
                          if line["upstream_header_time"].split(", ")[-1] not in {"", "-"})
    assert abs(sum(header_sums.values()) - expected_header) < 1e-6


def test_unknown_lines_are_ignored(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text("not json at all\n" + ACCESS_LOG.read_text().splitlines()[0] + "\n")
    samples = one_shot(log)
    assert sum(samples["fleet_gateway_requests_total"].values()) == 1


def test_tokens_are_summed_per_key(tmp_path: Path) -> None:
    """budgets: the log's tokens field, per key; lines without either add nothing."""
    base = json.loads(ACCESS_LOG.read_text().splitlines()[0])
    entries = [(key, tokens) for key, tokens in (("key-0a1b", 84), ("key-0a1b", 12),
                                                  ("key-ffff", 0), ("key-ffff", 300))]
    lines = [json.dumps({**base, "key": key, "tokens": tokens}, separators=(",", ":"))
             for key, tokens in entries]
    lines.append(json.dumps({**base, "key": ""}, separators=(",", ":")))
    log = tmp_path / "access.log"
    log.write_text("\n".join(lines) + "\n")
    tokens = {dict(k)["key"]: v
              for k, v in one_shot(log)["fleet_gateway_key_tokens_total"].items()}
    assert tokens == {"key-0a1b": 96, "key-ffff": 300}
