"""The simulator against real vLLM, side by side: what the gateway and the
controller see must be the same.

Real: replica-0 of the session's CPU vLLM cluster, addressed directly.
Simulated: a `fleet sim serve` process with the same served name and context.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from router.sim.metrics import NOT_SIMULATED
from tests.e2e.conftest import GREEDY, Cluster
from tests.support.fidelity import metric_families, shape
from tests.support.harness import wait_for
from tests.support.sim import SimProcess, sim_replica

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def sim(cluster: Cluster) -> Iterator[SimProcess]:
    with sim_replica("--model", cluster.model, "--max-model-len",
                     str(cluster.max_model_len)) as replica:
        yield replica


def _both(cluster: Cluster, sim: SimProcess) -> dict[str, str]:
    return {"real": cluster.replica_urls[0], "sim": sim.url}


def test_metric_families_types_and_labels_match(cluster: Cluster, sim: SimProcess) -> None:
    real = metric_families(requests.get(cluster.replica_urls[0] + "/metrics", timeout=10).text)
    simulated = metric_families(requests.get(sim.url + "/metrics", timeout=10).text)
    assert simulated == {k: v for k, v in real.items() if k not in NOT_SIMULATED}


def _present(obj: Any) -> Any:
    """The fields the openai client found in an answer, with their types."""
    return shape(obj.model_dump(exclude_unset=True))


# Fields only a stream's last content chunk carries (as vLLM sends them).
_ENDING = ("finish_reason", "stop_reason")


def _mid_stream(chunk: Any) -> Any:
    """A streamed content chunk's shape without the fields that end a stream:
    vLLM merges the deltas a slow reader has not taken yet, so on a busy
    machine the first content chunk may also be the last. The last chunk is
    compared whole."""
    present = _present(chunk)
    for choice in present.get("choices", []):
        for field in _ENDING:
            choice.pop(field, None)
    return present


def _answers(url: str, model: str) -> dict[str, Any]:
    hi = [{"role": "user", "content": "Say hi."}]
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                       timeout=120) as client:
        chat = client.chat.completions.create(model=model, max_tokens=4, messages=hi, **GREEDY)
        completion = client.completions.create(model=model, max_tokens=4, prompt="Hello", **GREEDY)
        chat_chunks = list(client.chat.completions.create(
            model=model, max_tokens=4, messages=hi, stream=True, **GREEDY,
            stream_options={"include_usage": True}))
        completion_chunks = list(client.completions.create(
            model=model, max_tokens=4, prompt="Hello", stream=True, **GREEDY,
            stream_options={"include_usage": True}))
        plain_stream = list(client.chat.completions.create(
            model=model, max_tokens=4, messages=hi, stream=True, **GREEDY))
    return {
        "chat": _present(chat),
        "chat.finish": chat.choices[0].finish_reason in {"stop", "length"},
        "completion": _present(completion),
        "completion.finish": completion.choices[0].finish_reason in {"stop", "length"},
        "chat_stream.first": _present(chat_chunks[0]),
        "chat_stream.content": _mid_stream(chat_chunks[1]),
        "chat_stream.last": _present(chat_chunks[-2]),
        "chat_stream.finish": chat_chunks[-2].choices[0].finish_reason in {"stop", "length"},
        "chat_stream.usage": _present(chat_chunks[-1]),
        "completion_stream.content": _mid_stream(completion_chunks[0]),
        "completion_stream.last": _present(completion_chunks[-2]),
        "completion_stream.usage": _present(completion_chunks[-1]),
        "no_usage_unless_asked": all(c.usage is None for c in plain_stream),
    }


def test_openai_client_parses_both_identically(cluster: Cluster, sim: SimProcess) -> None:
    real = _answers(cluster.replica_urls[0], cluster.model)
    simulated = _answers(sim.url, cluster.model)
    for key in real:
        assert simulated[key] == real[key], key
    assert real["chat.finish"] and real["chat_stream.finish"]
    assert "usage" in real["chat_stream.usage"]


def _responses(url: str, model: str) -> dict[str, Any]:
    """The Responses API as the official client sees it: the answer, and each
    kind of streamed event in order (deltas once), with their shapes."""
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                       timeout=120) as client:
        answer = client.responses.create(model=model, input="Say hi.", max_output_tokens=4,
                                         **GREEDY)
        items = client.responses.create(
            model=model, instructions="Be brief.", max_output_tokens=4, **GREEDY,
            input=[{"role": "user", "content": [{"type": "input_text", "text": "Say hi."}]}])
        events = list(client.responses.create(model=model, input="Say hi.",
                                              max_output_tokens=4, stream=True, **GREEDY))
    kinds: dict[str, Any] = {}
    for event in events:
        kinds.setdefault(event.type, _present(event))
    return {"answer": _present(answer), "items": _present(items),
            "incomplete": answer.status == "incomplete" and answer.incomplete_details is not None,
            "event order": list(dict.fromkeys(e.type for e in events)), **kinds}


def test_responses_api_parses_the_same(cluster: Cluster, sim: SimProcess) -> None:
    real = _responses(cluster.replica_urls[0], cluster.model)
    simulated = _responses(sim.url, cluster.model)
    assert set(simulated) == set(real)
    for key in real:
        assert simulated[key] == real[key], key


def _tokenizer(url: str, model: str) -> dict[str, Any]:
    def post(path: str, body: dict[str, Any]) -> Any:
        response = requests.post(url + path, json=body, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    text = "Hello, wörld: tokens and back."
    plain = post("/tokenize", {"model": model, "prompt": text})
    with_strs = post("/tokenize", {"prompt": text, "return_token_strs": True})
    chat = post("/tokenize", {"messages": [{"role": "user", "content": "hi"}]})
    back = post("/detokenize", {"model": model, "tokens": plain["tokens"]})
    return {"tokenize": shape(plain), "token_strs": shape(with_strs), "chat": shape(chat),
            "detokenize": shape(back), "round trip": back["prompt"] == text,
            "count": plain["count"] == len(plain["tokens"]),
            "strs": len(with_strs["token_strs"]) == with_strs["count"]}


def test_tokenize_and_detokenize_answer_the_same(cluster: Cluster, sim: SimProcess) -> None:
    assert _tokenizer(sim.url, cluster.model) == _tokenizer(cluster.replica_urls[0],
                                                            cluster.model)


MALFORMED: list[tuple[str, str, bytes]] = [
    ("invalid JSON", "/v1/chat/completions", b"{bad"),
    ("empty body", "/v1/chat/completions", b""),
    ("body is a list", "/v1/chat/completions", b"[1, 2]"),
    ("no messages", "/v1/chat/completions", b'{"model": "MODEL"}'),
    ("messages not a list", "/v1/chat/completions", b'{"model": "MODEL", "messages": "hi"}'),
    ("empty messages", "/v1/chat/completions", b'{"model": "MODEL", "messages": []}'),
    ("unknown model", "/v1/chat/completions",
     b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}'),
    ("negative max_tokens", "/v1/completions",
     b'{"model": "MODEL", "prompt": "hi", "max_tokens": -1}'),
    ("max_tokens over context", "/v1/completions",
     b'{"model": "MODEL", "prompt": "hi", "max_tokens": 1000000}'),
    ("max_tokens not a number", "/v1/completions",
     b'{"model": "MODEL", "prompt": "hi", "max_tokens": "many"}'),
    ("no prompt", "/v1/completions", b'{"model": "MODEL"}'),
    ("prompt longer than context", "/v1/completions",
     b'{"model": "MODEL", "prompt": "' + b"hello " * 3000 + b'", "max_tokens": 4}'),
    ("stream not a boolean", "/v1/completions",
     b'{"model": "MODEL", "prompt": "hi", "stream": "maybe"}'),
    ("priority not a number", "/v1/completions",
     b'{"model": "MODEL", "prompt": "hi", "priority": "high"}'),
    ("responses: no input", "/v1/responses", b'{"model": "MODEL"}'),
    ("responses: input not text or items", "/v1/responses", b'{"model": "MODEL", "input": 5}'),
    ("responses: an item not an object", "/v1/responses",
     b'{"model": "MODEL", "input": [5]}'),
    ("responses: body is a list", "/v1/responses", b"[1]"),
    ("responses: unknown model", "/v1/responses", b'{"model": "nope", "input": "hi"}'),
    ("responses: max_output_tokens 0", "/v1/responses",
     b'{"model": "MODEL", "input": "hi", "max_output_tokens": 0}'),
    ("responses: max_output_tokens over context", "/v1/responses",
     b'{"model": "MODEL", "input": "hi", "max_output_tokens": 100000}'),
    ("responses: input longer than context", "/v1/responses",
     b'{"model": "MODEL", "input": "' + b"hello " * 3000 + b'", "max_output_tokens": 2}'),
    ("responses: unknown previous_response_id", "/v1/responses",
     b'{"model": "MODEL", "input": "hi", "previous_response_id": "resp_0"}'),
    ("responses: stream not a boolean", "/v1/responses",
     b'{"model": "MODEL", "input": "hi", "stream": "maybe"}'),
    ("tokenize: no prompt or messages", "/tokenize", b"{}"),
    ("tokenize: prompt not text", "/tokenize", b'{"prompt": 5}'),
    ("tokenize: unknown model", "/tokenize", b'{"model": "nope", "prompt": "hi"}'),
    ("detokenize: no tokens", "/detokenize", b"{}"),
    ("detokenize: tokens not a list", "/detokenize", b'{"tokens": "x"}'),
]


@pytest.mark.parametrize(("case", "path", "body"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_requests_get_the_same_status_and_error_shape(
        cluster: Cluster, sim: SimProcess, case: str, path: str, body: bytes) -> None:
    answers = {}
    for name, url in _both(cluster, sim).items():
        response = requests.post(url + path, data=body.replace(b"MODEL", cluster.model.encode()),
                                 headers={"Content-Type": "application/json"}, timeout=30)
        error = response.json()["error"]
        answers[name] = (response.status_code, sorted(error), error["type"], error["param"])
    assert answers["sim"] == answers["real"], case


def test_invalid_utf8_gets_the_same_answer(cluster: Cluster, sim: SimProcess) -> None:
    # FastAPI answers this itself, outside the OpenAI error shape.
    body = b'{"model": "MODEL", "prompt": "\xff\xfe"}'.replace(b"MODEL", cluster.model.encode())
    answers = {}
    for name, url in _both(cluster, sim).items():
        response = requests.post(url + "/v1/completions", data=body, timeout=30,
                                 headers={"Content-Type": "application/json"})
        answers[name] = (response.status_code, response.json())
    assert answers["sim"] == answers["real"]
    assert answers["real"][0] == 400


def _samples(urls: list[str]) -> list[Any]:
    """Every sample of every replica, each replica read once."""
    return [sample for url in urls
            for family in text_string_to_metric_families(
                requests.get(url + "/metrics", timeout=10).text)
            for sample in family.samples]


def _value(samples: list[Any], name: str, **labels: str) -> float:
    """A sample's value summed over replicas and over label sets that have ``labels``."""
    return sum(sample.value for sample in samples if sample.name == name
               and all(sample.labels.get(k) == v for k, v in labels.items()))


def _running(urls: list[str]) -> float:
    return _value(_samples(urls), "vllm:num_requests_running")


def _long_generations(urls: list[str]) -> float:
    """Requests that generated more than 1,000 tokens, from vLLM's histogram,
    its count and its bucket read in one scrape: a request that finishes
    between two scrapes would skew the difference."""
    samples = _samples(urls)
    name = "vllm:request_generation_tokens"
    return _value(samples, name + "_count") - _value(samples, name + "_bucket", le="1000.0")


@pytest.mark.parametrize("via", ["real", "sim", "gateway"])
def test_a_client_that_goes_away_frees_its_slot_at_once(
        cluster: Cluster, sim: SimProcess, via: str) -> None:
    """An abandoned stream is aborted, as vLLM does, in the simulator too, and
    through the gateway (nginx closes the upstream when its client leaves):
    the request leaves the replica's batch without running to its max_tokens."""
    urls = {"real": [cluster.replica_urls[0]], "sim": [sim.url],
            "gateway": cluster.replica_urls}[via]
    target = {"real": cluster.replica_urls[0], "sim": sim.url, "gateway": cluster.url}[via]
    long_before = _long_generations(urls)
    body = {"model": cluster.model, "prompt": "Count:", "ignore_eos": True, "stream": True,
            "max_tokens": cluster.max_model_len - 32, "temperature": 0.0}
    with requests.post(target + "/v1/completions", json=body, stream=True,
                       timeout=120) as response:
        assert response.status_code == 200
        # Held, not a temporary: a dropped iter_lines() generator lets
        # urllib3 close the connection, and the client is gone too early.
        lines = response.iter_lines()
        next(line for line in lines if line.startswith(b"data: "))
        wait_for(lambda: _running(urls) >= 1, 30,
                 f"the request in the batch ({via})", interval=0.2)
    # Leaving the block closed the connection after the first token.
    wait_for(lambda: _running(urls) == 0, 120,
             f"the abandoned request to leave the batch ({via})", interval=0.2)
    # Gone from the batch either way; aborted, not finished: no request ran
    # past 1,000 tokens.
    assert _long_generations(urls) == long_before
