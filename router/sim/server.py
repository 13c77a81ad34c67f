"""The simulated replica's HTTP server: vLLM's OpenAI endpoints and shapes.

A plain ASGI application run by uvicorn (httptools + uvloop): a web
framework's routing and validation layers would cost more CPU than the
simulated engine, and the simulator must never be the bottleneck of a
gateway benchmark.

Endpoints: /v1/chat/completions, /v1/completions, /v1/responses (JSON or
SSE), /tokenize, /detokenize, /v1/models, /health, /metrics, /load,
/version, and the simulator's own /sim/faults.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router.config.sim import VLLM_VERSION, SimSettings
from router.sim import responses, tokens
from router.sim.engine import Engine, LatencyModel, SimRequest
from router.sim.metrics import VllmMetrics

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY_BYTES = 32 * 1024 * 1024
# vLLM's watchdog notices a dead engine within about 5 s and exits with 0.
ENGINE_DEAD_EXIT_S = 5.0
FINGERPRINT = f"vllm-{VLLM_VERSION}-sim"


class BadRequest(Exception):
    def __init__(self, status: int, message: str, err_type: str, param: str | None) -> None:
        super().__init__(message)
        self.status, self.message, self.err_type, self.param = status, message, err_type, param


class RawError(Exception):
    """An answer in another shape than the OpenAI error (FastAPI's own)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.status, self.body = status, body


def error_body(status: int, message: str, err_type: str, param: str | None) -> dict[str, Any]:
    """vLLM's error shape (the OpenAI one)."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": status}}


def count_tokens(text: str) -> int:
    """About four characters a token, as for English with a BPE tokenizer."""
    return max(1, (len(text) + 3) // 4)


def _validation_error(kind: str, loc: str, msg: str, value: Any) -> BadRequest:
    """The shape vLLM gives a request-schema error (FastAPI's validation)."""
    shown = f"<{type(value).__name__} of {len(value)} items>" if isinstance(
        value, dict | list) else repr(value)
    message = (f"1 validation error:\n  {{'type': '{kind}', 'loc': '{loc}', 'msg': '{msg}', "
               f"'input': {shown!r}}}")
    return BadRequest(400, message, "Bad Request", loc)


def _flag(body: dict[str, Any], name: str) -> bool:
    """Read a boolean field as leniently as vLLM's pydantic models do."""
    value = body.get(name, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUTHY | _FALSY:
        return value.lower() in _TRUTHY
    raise _validation_error("bool_parsing", f"body.{name}",
                            "Input should be a valid boolean", value)


_TRUTHY = {"true", "yes", "on", "1", "t", "y"}
_FALSY = {"false", "no", "off", "0", "f", "n"}


def _chat_prompt(messages: Any) -> tuple[str, int]:
    if messages is None:
        raise _validation_error("missing", "body.messages", "Field required", {})
    if not isinstance(messages, list):
        raise _validation_error("list_type", "body.messages", "Input should be a valid list",
                                messages)
    if not messages:
        raise BadRequest(400, "Cannot apply chat template to an empty conversation. Provide at "
                         "least one message.", "BadRequestError", None)
    parts, tokens = [], 3  # the assistant header the chat template appends
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise BadRequest(400, f"messages[{index}]: each message needs a role",
                             "BadRequestError", f"messages.{index}")
        content = message.get("content") or ""
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise BadRequest(400, f"messages[{index}].content must be a string or parts",
                             "BadRequestError", f"messages.{index}.content")
        parts.append(f"{message['role']}:{content}")
        tokens += count_tokens(content) + 4  # role markers of the template
    return "\n".join(parts), tokens


def _completion_prompt(prompt: Any) -> tuple[str, int]:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or prompt == "":
        raise BadRequest(400, "Either prompt or prompt_embeds must be provided and non-empty. "
                         "(parameter=prompt)", "BadRequestError", "prompt")
    return prompt, count_tokens(prompt)


class SimApp:
    """The ASGI application of one simulated replica."""

    def __init__(self, settings: SimSettings, served_model_name: str,
                 exit_process: Callable[[int], None] = os._exit) -> None:
        self.settings = settings
        self.model_name = served_model_name
        self.metrics = VllmMetrics(served_model_name, settings.max_model_len)
        self.engine: Engine | None = None
        self.hang = settings.faults.hang
        self.error_rate = settings.faults.error_rate
        self.slow = settings.faults.slow
        self.engine_dead_at: float | None = None
        self._exit = exit_process
        self._rng = random.Random(settings.seed)
        self._created = int(time.time())

    # --- lifecycle -------------------------------------------------------
    def _start_engine(self) -> None:
        s = self.settings
        self.engine = Engine(
            self.metrics, max_num_seqs=s.max_num_seqs, kv_capacity_tokens=s.kv_capacity_tokens,
            speed=s.speed * self.slow, seed=s.seed, mean_output_tokens=s.mean_output_tokens,
            model=LatencyModel(s.decode_step_s, s.decode_s_per_seq, s.prefill_s_per_token),
            prefix_caching=s.prefix_caching, by_priority=s.scheduling_policy == "priority",
        )
        self.engine.start()
        self.engine.pause(self.hang)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if self.hang and scope["path"] != "/sim/faults":
            # Hung: read nothing, answer nothing, keep the socket open, and
            # carry on when the hang ends, as a SIGSTOPped then SIGCONTed vLLM
            # does. The simulator's own fault API stays reachable so a drill
            # can end it.
            assert self.engine is not None, "lifespan startup has not run"
            await self.engine.resumed()
        try:
            await self._route(scope, receive, send)
        except BadRequest as exc:
            await send_json(send, exc.status, error_body(exc.status, exc.message, exc.err_type,
                                                         exc.param))
        except RawError as exc:
            await send_json(send, exc.status, exc.body)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._start_engine()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.engine is not None:
                    await self.engine.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        engine = self.engine
        assert engine is not None, "lifespan startup has not run"
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            body = await read_json(receive)
            await self._generate(receive, send, body, chat=path == "/v1/chat/completions")
        elif method == "POST" and path == "/v1/responses":
            await self._respond(receive, send, await read_json(receive))
        elif method == "POST" and path == "/tokenize":
            await send_json(send, 200, self._tokenize(await read_json(receive)))
        elif method == "POST" and path == "/detokenize":
            await send_json(send, 200, self._detokenize(await read_json(receive)))
        elif method == "GET" and path == "/health":
            await send_bytes(send, 503 if engine.dead else 200, b"", b"application/json")
        elif method == "GET" and path == "/metrics":
            await send_bytes(send, 200, generate_latest(self.metrics.registry),
                             CONTENT_TYPE_LATEST.encode())
        elif method == "GET" and path == "/v1/models":
            await send_json(send, 200, self._models())
        elif method == "GET" and path == "/load":
            await send_json(send, 200, {"server_load": engine.load})
        elif method == "GET" and path == "/version":
            await send_json(send, 200, {"version": VLLM_VERSION})
        elif path == "/sim/faults":
            if method == "POST":
                await self._set_faults(send, await read_json(receive))
            else:
                await send_json(send, 200, self.faults())
        else:
            await send_json(send, 404, {"detail": "Not Found"})

    # --- OpenAI endpoints -------------------------------------------------
    def _models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": self.model_name, "object": "model", "created": self._created,
            "owned_by": "vllm", "root": self.model_name, "parent": None,
            "max_model_len": self.settings.max_model_len, "permission": [],
        }]}

    def _request_object(self, body: Any) -> dict[str, Any]:
        """The body as vLLM first checks it: a JSON object, asking for this model."""
        if not isinstance(body, dict):
            raise _validation_error("model_attributes_type", "body", "Input should be a valid "
                                    "dictionary or object to extract fields from", body)
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise BadRequest(404, f"The model `{model}` does not exist.", "NotFoundError",
                             "model")
        return body

    def _validate(self, body: dict[str, Any], chat: bool) -> tuple[str, int, int, bool, bool]:
        prompt, prompt_tokens = (_chat_prompt(body.get("messages")) if chat
                                 else _completion_prompt(body.get("prompt")))
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        return (prompt, prompt_tokens,
                self._max_tokens(prompt_tokens, max_tokens, "max_tokens", chat),
                _flag(body, "stream"), _flag(body, "ignore_eos"))

    def _max_tokens(self, prompt_tokens: int, max_tokens: Any, name: str,
                    up_to_context: bool) -> int:
        """The tokens a request may generate; vLLM's checks and messages, `name` its field."""
        limit = self.settings.max_model_len
        if max_tokens is not None and (isinstance(max_tokens, bool)
                                       or not isinstance(max_tokens, int)):
            raise _validation_error("int_type", f"body.{name}",
                                    "Input should be a valid integer", max_tokens)
        if max_tokens is not None and max_tokens < 1:
            # vLLM names the sampling parameter here, whatever the API called it.
            raise BadRequest(400, f"max_tokens must be at least 1, got {max_tokens}. "
                             f"(parameter=max_tokens, value={max_tokens})", "BadRequestError",
                             "max_tokens")
        if max_tokens is not None and max_tokens > limit:
            raise BadRequest(400, f"{name}={max_tokens} cannot be greater than "
                             f"max_model_len={limit}. Please request fewer output tokens. "
                             f"(parameter={name}, value={max_tokens})", "BadRequestError",
                             name)
        if prompt_tokens >= limit:
            raise BadRequest(400, f"This model's maximum context length is {limit} tokens. "
                             f"However, your prompt contains at least {prompt_tokens} input "
                             "tokens, which exceeds this limit even without any output tokens. "
                             "Please reduce the length of the input prompt. "
                             f"(parameter=input_tokens, value={prompt_tokens})",
                             "BadRequestError", "input_tokens")
        # Like vLLM, a request that would run past the context is cut to fit.
        room = limit - prompt_tokens
        if max_tokens is None:
            max_tokens = room if up_to_context else min(16, room)
        return min(int(max_tokens), room)

    def _submit(self, prompt: str, prompt_tokens: int, max_tokens: int, ignore_eos: bool,
                stream: bool, body: dict[str, Any]) -> SimRequest:
        priority = body.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise _validation_error("int_type", "body.priority",
                                    "Input should be a valid integer", priority)
        engine = self.engine
        assert engine is not None
        if engine.dead:
            raise BadRequest(500, "EngineCore encountered an issue. See stack trace (above) "
                             "for the root cause.", "InternalServerError", None)
        if self.error_rate and self._rng.random() < self.error_rate:
            raise BadRequest(500, "simulated failure (error_rate fault)",
                             "InternalServerError", None)
        return engine.submit(prompt, prompt_tokens, max_tokens, ignore_eos, stream, priority)

    async def _unless_gone(self, receive: Receive, request: SimRequest,
                           answer: Coroutine[Any, Any, None]) -> None:
        """Answer ``request``, or abort it the moment its client goes away, as
        vLLM does: its slot is freed and it counts as aborted. uvicorn drops
        what is sent to a closed connection without a word, so the
        disconnect is read from ``receive``, not from a failed send."""
        answering = asyncio.ensure_future(answer)
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((answering, gone), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server is stopping
            answering.cancel()
            gone.cancel()
            assert self.engine is not None
            self.engine.abort(request)
            raise
        if answering.done():
            gone.cancel()
            try:
                answering.result()  # its BadRequest answers the client
            except OSError:  # a server that does report a send to a closed socket
                assert self.engine is not None
                self.engine.abort(request)
                raise
            return
        answering.cancel()
        await asyncio.gather(answering, return_exceptions=True)
        assert self.engine is not None
        self.engine.abort(request)

    async def _generate(self, receive: Receive, send: Send, body: Any, chat: bool) -> None:
        body = self._request_object(body)
        prompt, prompt_tokens, max_tokens, stream, ignore_eos = self._validate(body, chat)
        request = self._submit(prompt, prompt_tokens, max_tokens, ignore_eos, stream, body)
        prefix = "chatcmpl" if chat else "cmpl"
        ids = (f"{prefix}-{uuid.uuid4().hex[:16]}", int(time.time()))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if stream:
            answer = self._stream(send, request, chat, ids, include_usage)
        else:
            answer = self._complete(send, request, chat, ids)
        await self._unless_gone(receive, request, answer)

    async def _complete(self, send: Send, request: SimRequest, chat: bool,
                        ids: tuple[str, int]) -> None:
        await request.done
        if request.error is not None:
            raise BadRequest(500, str(request.error), "InternalServerError", None)
        await send_json(send, 200, self._response(request, chat, ids))

    def _usage(self, request: SimRequest, stream: bool = False) -> dict[str, Any]:
        generated = len(request.tokens)
        usage: dict[str, Any] = {"prompt_tokens": request.prompt_tokens,
                                 "total_tokens": request.prompt_tokens + generated,
                                 "completion_tokens": generated}
        if not stream:
            usage.update(prompt_tokens_details=None, completion_tokens_details=None)
        return usage

    def _response(self, request: SimRequest, chat: bool, ids: tuple[str, int]) -> dict[str, Any]:
        choice: dict[str, Any]
        if chat:
            choice = {"index": 0, "message": {
                "role": "assistant", "content": request.text(), "refusal": None,
                "annotations": None, "audio": None, "function_call": None,
                "reasoning": None}, "logprobs": None, "finish_reason": request.finish_reason,
                "stop_reason": None, "token_ids": None, "routed_experts": None}
        else:
            choice = {"index": 0, "text": request.text(), "logprobs": None,
                      "finish_reason": request.finish_reason, "stop_reason": None,
                      "token_ids": None, "prompt_logprobs": None, "prompt_token_ids": None,
                      "routed_experts": None}
        response: dict[str, Any] = {
            "id": ids[0], "object": "chat.completion" if chat else "text_completion",
                    "created": ids[1], "model": self.model_name, "choices": [choice],
                    "service_tier": None, "system_fingerprint": FINGERPRINT,
                    "usage": self._usage(request)}
        if chat:
            response.update(prompt_logprobs=None, prompt_token_ids=None, prompt_text=None)
        response.update(kv_transfer_params=None, ec_transfer_params=None, metrics=None)
        return response

    def _chunk(self, chat: bool, ids: tuple[str, int], delta: str | None,
               finish: str | None, role: bool = False) -> bytes:
        choice: dict[str, Any]
        if chat:
            content: dict[str, Any] = {"role": "assistant", "content": ""} if role else {
                "content": delta}
            choice = {"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}
            if finish is not None:
                choice["stop_reason"] = None
            if not role:
                choice["token_ids"] = None
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish,
                      "stop_reason": None, "prompt_token_ids": None, "token_ids": None}
        event: dict[str, Any] = {
            "id": ids[0], "object": "chat.completion.chunk" if chat else "text_completion",
            "created": ids[1], "model": self.model_name, "choices": [choice]}
        if role:
            event.update(prompt_token_ids=None, prompt_text=None)
        return sse_event(event)

    async def _stream(self, send: Send, request: SimRequest, chat: bool, ids: tuple[str, int],
                      include_usage: bool) -> None:
        await start_stream(send)
        if chat:
            await send_chunk(send, self._chunk(chat, ids, None, None, role=True))
        queue = request.stream
        assert queue is not None
        pending = await queue.get()
        while pending is not None:
            following = await queue.get()
            finish = request.finish_reason if following is None and request.error is None \
                else None
            await send_chunk(send, self._chunk(chat, ids, pending, finish))
            pending = following
        if request.error is not None:
            await send_stream_error(send, request.error)
        elif include_usage:
            usage: dict[str, Any] = {"id": ids[0], "object": "chat.completion.chunk" if chat
                     else "text_completion", "created": ids[1], "model": self.model_name,
                     "choices": [], "usage": self._usage(request, stream=True),
                     "system_fingerprint": FINGERPRINT}
            await send_chunk(send, sse_event(usage))
        await send_chunk(send, b"data: [DONE]\n\n")
        await end_stream(send)

    # --- the Responses API and the tokenizer ------------------------------
    async def _respond(self, receive: Receive, send: Send, body: Any) -> None:
        body = self._request_object(body)
        if "input" not in body:
            raise _validation_error("missing", "body.input", "Field required", body)
        try:
            messages = responses.input_messages(body)
        except responses.InputError as exc:
            raise BadRequest(400, str(exc), "Bad Request", "body.input") from exc
        stream = _flag(body, "stream")
        previous = body.get("previous_response_id")
        if previous is not None:
            raise BadRequest(404, f"Response with id '{previous}' not found.",
                             "invalid_request_error", "response_id")
        prompt, prompt_tokens = _chat_prompt(messages)
        max_tokens = self._max_tokens(prompt_tokens, body.get("max_output_tokens"),
                                      "max_output_tokens", True)
        request = self._submit(prompt, prompt_tokens, max_tokens, False, stream, body)
        ids, created = responses.ResponseIds(), int(time.time())
        if stream:
            answer = self._stream_response(send, request, body, ids, created)
        else:
            answer = self._complete_response(send, request, body, ids, created)
        await self._unless_gone(receive, request, answer)

    async def _complete_response(self, send: Send, request: SimRequest, body: dict[str, Any],
                                 ids: responses.ResponseIds, created: int) -> None:
        await request.done
        if request.error is not None:
            raise BadRequest(500, str(request.error), "InternalServerError", None)
        await send_json(send, 200, responses.response_object(
            body, ids, created, self.model_name, request.text(), request.finish_reason,
            self._response_usage(request)))

    @staticmethod
    def _response_usage(request: SimRequest) -> dict[str, Any]:
        return responses.usage(request.prompt_tokens, request.cached_tokens, len(request.tokens))

    async def _stream_response(self, send: Send, request: SimRequest, body: dict[str, Any],
                               ids: responses.ResponseIds, created: int) -> None:
        await start_stream(send)
        events = responses.EventStream(body, ids, created, self.model_name)
        for event in events.opening():
            await send_chunk(send, event)
        queue = request.stream
        assert queue is not None
        while (token := await queue.get()) is not None:
            await send_chunk(send, events.delta(token))
        if request.error is not None:
            await send_stream_error(send, request.error)
        else:
            for event in events.closing(request.text(), request.finish_reason,
                                        self._response_usage(request)):
                await send_chunk(send, event)
        await end_stream(send)

    def _tokenize(self, body: Any) -> dict[str, Any]:
        body = self._request_object(body)
        if "messages" in body:
            text, _ = _chat_prompt(body["messages"])
        elif isinstance(body.get("prompt"), str):
            text = body["prompt"]
        elif "prompt" in body:
            raise _validation_error("string_type", "body.prompt",
                                    "Input should be a valid string", body["prompt"])
        else:
            raise _validation_error("missing", "body.prompt", "Field required", body)
        return tokens.tokenize_answer(text, self.settings.max_model_len,
                                      _flag(body, "return_token_strs"))

    def _detokenize(self, body: Any) -> dict[str, Any]:
        body = self._request_object(body)
        ids = body.get("tokens")
        if ids is None:
            raise _validation_error("missing", "body.tokens", "Field required", body)
        if not isinstance(ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise _validation_error("list_type", "body.tokens",
                                    "Input should be a valid list of integers", ids)
        return {"prompt": tokens.decode(ids)}

    # --- faults ----------------------------------------------------------
    def faults(self) -> dict[str, Any]:
        engine = self.engine
        return {"hang": self.hang, "slow": self.slow, "error_rate": self.error_rate,
                "engine_dead": self.engine_dead_at is not None,
                "effective_speed": engine.speed if engine else None}

    async def _set_faults(self, send: Send, body: Any) -> None:
        if not isinstance(body, dict):
            raise BadRequest(400, "send a JSON object of faults", "BadRequestError", None)
        known = {"crash", "engine_dead", "hang", "slow", "error_rate", "clear"}
        unknown = sorted(set(body) - known)
        if unknown:
            raise BadRequest(400, f"unknown fault(s) {unknown}; known: {sorted(known)}",
                             "BadRequestError", unknown[0])
        engine = self.engine
        assert engine is not None
        if body.get("clear"):
            body = {"hang": False, "slow": 1.0, "error_rate": 0.0, **body}
        if "slow" in body:
            slow = body["slow"]
            if not isinstance(slow, int | float) or isinstance(slow, bool) or slow <= 0:
                raise BadRequest(400, "slow must be a number > 0 (0.33 is 3x slower)",
                                 "BadRequestError", "slow")
            self.slow = float(slow)
            engine.speed = self.settings.speed * self.slow
        if "error_rate" in body:
            rate = body["error_rate"]
            if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1:
                raise BadRequest(400, "error_rate must be between 0 and 1", "BadRequestError",
                                 "error_rate")
            self.error_rate = float(rate)
        if body.get("engine_dead"):
            log.warning("fault engine_dead: failing requests in flight, exiting with 0 in %.0fs",
                        ENGINE_DEAD_EXIT_S)
            self.engine_dead_at = time.monotonic()
            engine.kill()
            asyncio.get_running_loop().call_later(ENGINE_DEAD_EXIT_S, self._exit, 0)
        if body.get("crash"):
            log.warning("fault crash: exiting with status 1")
            asyncio.get_running_loop().call_later(0.05, self._exit, 1)
        if "hang" in body:
            self.hang = bool(body["hang"])
            engine.pause(self.hang)
        await send_json(send, 200, self.faults())


async def _disconnected(receive: Receive) -> None:
    """Returns once the client has gone (the body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        continue


async def read_json(receive: Receive) -> Any:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise OSError("client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(413, "request body too large", "BadRequestError", None)
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    raw = b"".join(chunks)
    if not raw.strip():
        raise _validation_error("missing", "body", "Field required", None)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # FastAPI's own answer (vLLM passes it through): not the OpenAI shape.
        raise RawError(400, {"detail": "There was an error parsing the body"}) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _validation_error("json_invalid", "body.1", "JSON decode error", {}) from exc


async def send_bytes(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, obj: Any) -> None:
    await send_bytes(send, status, json.dumps(obj, separators=(",", ":")).encode(),
                     b"application/json")


def sse_event(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def send_chunk(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def start_stream(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/event-stream; charset=utf-8")]})


async def send_stream_error(send: Send, error: BaseException) -> None:
    # After a 200 only an in-band error is possible, as vLLM sends it.
    await send_chunk(send, sse_event(error_body(500, str(error), "InternalServerError", None)))


async def end_stream(send: Send) -> None:
    await send({"type": "http.response.body", "body": b"", "more_body": False})
