"""llm-fleet: one LLM served by several vLLM replicas behind one nginx gateway URL."""

__version__ = "0.1.0"
