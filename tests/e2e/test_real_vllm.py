"""`fleet up` with two real CPU vLLM replicas, used through the official client.

The tests share the session's cluster (conftest.py) and run in file order:
the last one takes it down.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests

from router.runtime.health import port_in_use
from router.runtime.procs import descendants, process_alive
from router.runtime.supervise import Supervisor
from tests.e2e.conftest import GREEDY, Cluster
from tests.support.cli import fleet
from tests.support.harness import wait_for
from tests.support.njs import count_answers

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def test_chat_completion(cluster: Cluster, client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=cluster.model, max_tokens=16, **GREEDY,
        messages=[{"role": "user", "content": "Name a colour."}])
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in {"stop", "length"}
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 16


def test_completion(cluster: Cluster, client: openai.OpenAI) -> None:
    reply = client.completions.create(model=cluster.model, prompt="The sky is",
                                      max_tokens=8, **GREEDY)
    assert reply.choices[0].text
    assert reply.usage is not None and reply.usage.completion_tokens <= 8


def test_streaming_chat_arrives_in_pieces(cluster: Cluster, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=cluster.model, max_tokens=24, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Count from one to ten."}],
        # vLLM's own field: all 24 tokens, whatever the model would stop at.
        extra_body={"ignore_eos": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert len(pieces) >= 3, pieces
    assert finish in {"stop", "length"}
    assert usage is not None and usage.completion_tokens >= len(pieces) - 1


def test_responses_api_through_the_gateway(cluster: Cluster, client: openai.OpenAI) -> None:
    answer = client.responses.create(model=cluster.model, input="Name a colour.",
                                     max_output_tokens=8, **GREEDY)
    assert answer.output_text and answer.usage is not None
    assert answer.usage.output_tokens <= 8
    events = list(client.responses.create(model=cluster.model,
                                          input="Count from one to ten.",
                                          max_output_tokens=12, stream=True, **GREEDY))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 2, deltas
    assert events[-1].type == "response.completed"
    assert "".join(deltas) == events[-1].response.output_text


def test_tokenizer_through_the_gateway(cluster: Cluster) -> None:
    tokens = requests.post(f"{cluster.url}/tokenize", json={"prompt": "The sky is blue."},
                           timeout=30).json()["tokens"]
    back = requests.post(f"{cluster.url}/detokenize", json={"tokens": tokens}, timeout=30)
    assert back.json() == {"prompt": "The sky is blue."}


def _bad_requests(model: str, max_model_len: int) -> list[tuple[str, bytes, int, str]]:
    """(name, JSON body, status, a fragment of vLLM's message) for /v1/chat/completions."""
    def chat(**fields: object) -> bytes:
        return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                           **fields}).encode()
    return [
        ("malformed JSON", b'{"messages": [', 400, "JSON decode error"),
        ("empty body", b"", 400, "Field required"),
        ("JSON that is not an object", b"[1, 2]", 400, "valid dictionary"),
        # FastAPI's own answer, not the OpenAI shape; the simulator copies it.
        ("invalid UTF-8", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400,
         "error parsing the body"),
        ("unknown model", chat(model="gpt-17"), 404, "does not exist"),
        ("negative max_tokens", chat(max_tokens=-5), 400, "max_tokens"),
        ("huge max_tokens", chat(max_tokens=10**9), 400, "max_tokens"),
        ("max_tokens not a number", chat(max_tokens="ten"), 400, "valid integer"),
        ("prompt longer than the context",
         chat(messages=[{"role": "user", "content": "word " * (2 * max_model_len)}]), 400,
         "maximum context length"),
    ]


def test_bad_requests_get_vllms_4xx_and_cost_no_replica(cluster: Cluster) -> None:
    """A subset of the gateway's bad-request catalogue against real vLLM: its own
    clear 4xx passes through, and no replica is benched or restarted."""
    pids = {p.name: p.pid for p in Supervisor(cluster.paths).processes()}
    wrong = []
    for _ in range(2):  # twice: more than max_fails per replica, had 4xx counted
        for name, body, status, says in _bad_requests(cluster.model, cluster.max_model_len):
            response = requests.post(f"{cluster.url}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"}, timeout=60)
            answer = response.json()
            message = answer["error"]["message"] if "error" in answer else answer["detail"]
            if response.status_code != status or says not in message:
                wrong.append(f"{name}: {response.status_code} {response.text[:200]}")
    assert not wrong, "\n".join(wrong)
    assert {p.name: p.pid for p in Supervisor(cluster.paths).processes()} == pids


def test_both_replicas_serve(cluster: Cluster, client: openai.OpenAI) -> None:
    """Pairs of overlapping requests: least_conn sends the second of a pair to
    the idle replica whatever the weights are, so both answer unless one is
    out of rotation. On a busy host the controller may hold uneven weights for
    a while, which is why this waits rather than counting a fixed number."""
    seen: set[str] = set()

    def replica_of_one() -> str:
        raw = client.chat.completions.with_raw_response.create(
            model=cluster.model, max_tokens=8, messages=[{"role": "user", "content": "hi"}])
        return raw.headers["X-Fleet-Replica"]

    def both_seen() -> bool:
        with ThreadPoolExecutor(max_workers=2) as pool:
            seen.update(pool.map(lambda _: replica_of_one(), range(2)))
        return seen == {"replica-0", "replica-1"}

    wait_for(both_seen, timeout=300, what="both replicas to answer",
             interval=0.5)


def test_priority_classes_reach_real_vllm(cluster: Cluster) -> None:
    vllm_pid = int(cluster.paths.launch_state("replica-0").read_text())
    argv = Path(f"/proc/{vllm_pid}/cmdline").read_bytes().split(b"\0")
    assert argv[argv.index(b"--scheduling-policy") + 1] == b"priority"
    body = {"model": cluster.model, "max_tokens": 2, **GREEDY,
            "messages": [{"role": "user", "content": "hi"}]}
    # vLLM takes the level the gateway writes into each body, for every class.
    for header in ({}, {"X-Fleet-Priority": "batch"}, {"X-Fleet-Priority": "interactive"}):
        response = requests.post(f"{cluster.url}/v1/chat/completions", json=body,
                                 headers=header, timeout=120)
        assert response.status_code == 200, (header, response.text)
    refused = requests.post(f"{cluster.url}/v1/chat/completions", json=body,
                            headers={"X-Fleet-Priority": "urgent"}, timeout=30)
    assert refused.status_code == 400
    assert "interactive, default, batch" in refused.json()["error"]["message"]


def test_real_vllm_answers_are_counted_as_the_gateway_counts_them(
        cluster: Cluster, tmp_path: Path) -> None:
    """Token budgets read vLLM's own bytes: a stream's usage chunk (asked for,
    and taken out for a client that did not ask) and a JSON answer's usage,
    fed through nginx/usage.js as vLLM sent them."""
    body = {"model": cluster.model, "max_tokens": 6, **GREEDY,
            "messages": [{"role": "user", "content": "Say hi."}]}
    with requests.post(f"{cluster.replica_urls[0]}/v1/chat/completions", timeout=120,
                       stream=True, json={**body, "stream": True,
                                          "stream_options": {"include_usage": True}}) as answer:
        assert answer.status_code == 200, answer.text
        buffers = [chunk.decode() for chunk in answer.iter_content(chunk_size=None) if chunk]
    streamed = "".join(buffers)
    events = [e for e in streamed.split("\n\n") if e]
    usage = json.loads(events[-2].removeprefix("data: "))["usage"]
    whole = requests.post(f"{cluster.replica_urls[0]}/v1/chat/completions", json=body,
                          timeout=120)
    counted = count_answers([{"buffers": buffers, "hidden": False},
                             {"buffers": buffers, "hidden": True},
                             {"buffers": [whole.text], "hidden": False}], tmp_path)
    assert counted[0] == {"sent": streamed, "tokens": usage["total_tokens"]}
    assert counted[1] == {"sent": "\n\n".join(events[:-2] + events[-1:]) + "\n\n",
                          "tokens": usage["total_tokens"]}
    assert counted[2]["tokens"] == whole.json()["usage"]["total_tokens"]


def test_drill_kill_real_replica_restarts_and_no_request_fails_before_streaming(
        cluster: Cluster, tmp_path: Path) -> None:
    supervisor = Supervisor(cluster.paths)
    before = supervisor.process("replica-0").pid
    vllm_pid = int(cluster.paths.launch_state("replica-0").read_text())
    done = fleet("drill", "--spec", str(cluster.spec_path), "kill", "replica-0",
                 "--load", "1", "--before", "3", "--after", "2", "--recover-timeout", "300",
                 "--out", str(tmp_path),
                 # The drill waits for every request it sent; on a busy 2-core
                 # host a CPU replica's restart can hold them past 300 s.
                 timeout=840)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["engine"] == "cpu"
    moments = result["moments_s"]
    assert moments["out_of_rotation"] is not None, moments
    assert moments["back_in_rotation"] is not None, moments
    # Streams cut by the kill may fail; nothing that had not started may.
    assert result["measures"]["failed_before_first_byte"] == 0, result["windows"]
    assert result["windows"]["during the fault"]["requests"] > 0
    after = supervisor.process("replica-0")
    assert after.pid != before and after.state == "RUNNING"
    assert not process_alive(vllm_pid)


def test_down_leaves_no_process_behind(cluster: Cluster) -> None:
    supervisor = Supervisor(cluster.paths)
    root = supervisor.pid()
    assert root is not None
    tree = [root, *descendants(root)]
    assert len(tree) >= 8  # supervisord, 2 launchers, 2 vLLM trees, nginx, Prometheus
    result = fleet("down", "--spec", str(cluster.spec_path), timeout=180)
    assert result.returncode == 0, result.stderr
    assert wait_for(lambda: not any(process_alive(p) for p in tree), 30, "every process to exit")
    assert not any(port_in_use("127.0.0.1", port) for port in cluster.ports)
    with pytest.raises(requests.ConnectionError):
        requests.get(cluster.url + "/health", timeout=2)
