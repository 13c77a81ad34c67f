"""The OpenAI Responses API (/v1/responses) in vLLM's shapes, for the simulator.

Pure functions: the request's input as chat messages, the response object,
and the server-sent events of a streamed response, field for field as vLLM
0.32 writes them (tests/e2e/test_fidelity.py compares the two). vLLM keeps
no responses unless VLLM_ENABLE_RESPONSES_API_STORE is set, which llm-fleet
does not set, so a previous_response_id is always unknown, as here.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

# What vLLM echoes when the request leaves a field out.
_ECHOED_DEFAULTS: dict[str, Any] = {
    "instructions": None, "metadata": None, "parallel_tool_calls": True,
    "temperature": 1.0, "tool_choice": "none", "tools": [], "top_p": 1.0,
    "background": False, "max_output_tokens": None, "max_tool_calls": None,
    "previous_response_id": None, "prompt": None, "reasoning": None,
    "service_tier": "auto", "text": None, "top_logprobs": None, "truncation": "disabled",
    "user": None, "presence_penalty": 0.0, "frequency_penalty": 0.0,
}


class InputError(ValueError):
    """An input the simulator cannot read as messages (vLLM: a schema error of body.input)."""


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content
                        if isinstance(part, dict))
    raise InputError(f"{where}.content must be a string or a list of parts")


def input_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """The chat messages a request's instructions and input make."""
    messages = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    given = body["input"]
    if isinstance(given, str):
        return [*messages, {"role": "user", "content": given}]
    if not isinstance(given, list):
        raise InputError("input should be a valid string or a valid list of input items")
    for index, item in enumerate(given):
        where = f"input.{index}"
        if not isinstance(item, dict) or not isinstance(item.get("role"), str):
            raise InputError(f"{where}: the simulator reads message items only "
                             "(a role and a content)")
        messages.append({"role": item["role"], "content": _text(item.get("content"), where)})
    return messages


@dataclass
class ResponseIds:
    response: str = field(default_factory=lambda: f"resp_{uuid.uuid4().hex[:16]}")
    message: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex[:16]}")


def _message(ids: ResponseIds, text: str | None) -> dict[str, Any]:
    content: list[dict[str, Any]] = [] if text is None else [
        {"annotations": [], "text": text, "type": "output_text", "logprobs": None}]
    return {"id": ids.message, "content": content, "role": "assistant",
            "status": "in_progress" if text is None else "completed", "type": "message",
            "phase": None}


def usage(input_tokens: int, cached_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {"input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": 0,
                                     "input_tokens_per_turn": [],
                                     "cached_tokens_per_turn": []},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0, "tool_output_tokens": 0,
                                      "output_tokens_per_turn": [],
                                      "tool_output_tokens_per_turn": []},
            "total_tokens": input_tokens + output_tokens}


def response_object(body: dict[str, Any], ids: ResponseIds, created: int, model: str,
                    text: str | None = None, finish_reason: str | None = None,
                    token_usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """The response: in progress while text is None, else completed or cut at the limit."""
    done = text is not None
    cut = done and finish_reason == "length"
    echoed = {key: body.get(key, default) for key, default in _ECHOED_DEFAULTS.items()}
    return {
        "id": ids.response, "created_at": created,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": echoed.pop("instructions"), "metadata": echoed.pop("metadata"),
        "model": model, "object": "response",
        "output": [_message(ids, text)] if done else [],
        **{key: echoed[key] for key in ("parallel_tool_calls", "temperature", "tool_choice",
                                        "tools", "top_p", "background", "max_output_tokens",
                                        "max_tool_calls", "previous_response_id", "prompt",
                                        "reasoning", "service_tier")},
        "status": ("incomplete" if cut else "completed") if done else "in_progress",
        "text": echoed["text"], "top_logprobs": echoed["top_logprobs"],
        "truncation": echoed["truncation"], "usage": token_usage if done else None,
        "user": echoed["user"], "presence_penalty": echoed["presence_penalty"],
        "frequency_penalty": echoed["frequency_penalty"],
        "kv_transfer_params": None, "ec_transfer_params": None,
        "input_messages": None, "output_messages": None,
    }


class EventStream:
    """The numbered server-sent events of one streamed response."""

    def __init__(self, body: dict[str, Any], ids: ResponseIds, created: int, model: str) -> None:
        self.body, self.ids, self.created, self.model = body, ids, created, model
        self.sequence = 0

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        data.update(sequence_number=self.sequence, type=kind)
        self.sequence += 1
        return (f"event: {kind}\ndata: ".encode()
                + json.dumps(data, separators=(",", ":")).encode() + b"\n\n")

    def opening(self) -> list[bytes]:
        started = response_object(self.body, self.ids, self.created, self.model)
        part = {"annotations": [], "text": "", "type": "output_text", "logprobs": []}
        return [
            self._event("response.created", {"response": started}),
            self._event("response.in_progress", {"response": dict(started)}),
            self._event("response.output_item.added",
                        {"item": _message(self.ids, None), "output_index": 0}),
            self._event("response.content_part.added",
                        {"content_index": 0, "item_id": self.ids.message, "output_index": 0,
                         "part": part}),
        ]

    def delta(self, text: str) -> bytes:
        return self._event("response.output_text.delta",
                           {"content_index": 0, "delta": text, "item_id": self.ids.message,
                            "logprobs": [], "output_index": 0})

    def closing(self, text: str, finish_reason: str,
                token_usage: dict[str, Any]) -> list[bytes]:
        done = response_object(self.body, self.ids, self.created, self.model, text,
                               finish_reason, token_usage)
        return [
            self._event("response.output_text.done",
                        {"content_index": 0, "item_id": self.ids.message, "logprobs": [],
                         "output_index": 0, "text": text}),
            self._event("response.content_part.done",
                        {"content_index": 0, "item_id": self.ids.message, "output_index": 0,
                         "part": done["output"][0]["content"][0]}),
            self._event("response.output_item.done",
                        {"item": done["output"][0], "output_index": 0}),
            self._event("response.completed", {"response": done}),
        ]
