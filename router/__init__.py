"""llm-fleet: one LLM served by several vLLM replicas behind one nginx gateway URL."""

from pathlib import Path

__version__ = "0.1.0"

# Templates, dashboards and deploy files are read from the source tree, next
# to the package: every layer can find them without importing the spec.
REPO_ROOT = Path(__file__).resolve().parents[1]
