"""Run the fleet CLI as a user would: a subprocess, its exit status and its words."""

from __future__ import annotations

import subprocess
import sys


def fleet(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router.cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)
