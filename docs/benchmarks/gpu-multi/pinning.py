"""Pinning under load: which processes NVML sees on each GPU, whose replica
they belong to, and whether each GPU's utilisation follows its own replica.

For each replica in turn it loads that replica alone, straight to its port,
and samples the GPU exporter once a second; the table it prints has one row
per loaded replica and one column per GPU. Pinned right, the diagonal is busy
and the rest idle. Compute processes are matched to replicas by process
group: router.launch starts each replica in its own group and records it in
<runtime_dir>/run/replica-N.pgid.

usage: python3 pinning.py RUNTIME_DIR EXPORTER_URL MODEL [SECONDS]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families


def replica_groups(runtime: Path) -> dict[int, str]:
    groups = {}
    for state in sorted((runtime / "run").glob("replica-*.pgid")):
        groups[int(state.read_text().strip())] = state.name.removesuffix(".pgid")
    return groups


def compute_processes() -> list[dict[str, str]]:
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_uuid,used_memory",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         check=True).stdout
    rows = []
    for line in out.strip().splitlines():
        pid, uuid, memory = (part.strip() for part in line.split(","))
        rows.append({"pid": pid, "gpu_uuid": uuid, "used_mib": memory})
    return rows


def owner(pid: str, groups: dict[int, str]) -> str:
    try:
        return groups.get(os.getpgid(int(pid)), "not a replica")
    except ProcessLookupError:
        return "gone"


def utilisation(exporter: str) -> dict[str, float]:
    """GPU UUID -> utilisation %. By UUID, not by the replica label: replicas
    sharing a GPU are named together in one label ("replica-0,replica-1")."""
    text = requests.get(exporter + "/metrics", timeout=5).text
    return {s.labels["gpu_uuid"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "fleet_gpu_utilization_percent"}


def load(url: str, model: str, seconds: float, stop: threading.Event) -> None:
    body = {"model": model, "prompt": "Write a long story about GPUs.", "max_tokens": 512,
            "ignore_eos": True}

    def client() -> None:
        while not stop.is_set():
            try:
                requests.post(url + "/v1/completions", json=body, timeout=seconds + 60)
            except requests.RequestException:
                time.sleep(0.5)

    for _ in range(64):
        threading.Thread(target=client, daemon=True).start()


def main() -> None:
    runtime, exporter, model = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 20.0
    state = json.loads((runtime / "state.json").read_text())
    groups = replica_groups(runtime)
    gpus = {r["name"]: r["gpu_uuid"] for r in state["replicas"]}
    result: dict[str, object] = {"replicas": gpus, "loaded": {}}
    print("| loaded replica | NVML compute processes (pid: owner -> GPU) | utilisation per "
          "replica's GPU (mean %, under load) |\n| --- | --- | --- |")
    for replica in state["replicas"]:
        stop = threading.Event()
        load(replica["url"], model, seconds, stop)
        time.sleep(seconds / 4)
        samples: list[dict[str, float]] = []
        processes = compute_processes()
        while len(samples) < seconds / 2:
            samples.append(utilisation(exporter))
            time.sleep(1)
        stop.set()
        means = {name: sum(s.get(uuid, 0.0) for s in samples) / len(samples)
                 for name, uuid in gpus.items()}
        owned = [f"{p['pid']}: {owner(p['pid'], groups)} -> {p['gpu_uuid'][:12]}"
                 for p in processes]
        mismatched = [p for p in processes if owner(p["pid"], groups) in gpus
                      and gpus[owner(p["pid"], groups)] != p["gpu_uuid"]]
        result["loaded"][replica["name"]] = {  # type: ignore[index]
            "processes": [{**p, "owner": owner(p["pid"], groups)} for p in processes],
            "utilisation_mean": means, "processes_on_a_foreign_gpu": len(mismatched)}
        print(f"| {replica['name']} | {'; '.join(owned)} | "
              + ", ".join(f"{n}: {v:.0f}" for n, v in means.items()) + " |", flush=True)
        time.sleep(seconds / 2)  # let the batch drain before the next replica
    Path("pinning.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
