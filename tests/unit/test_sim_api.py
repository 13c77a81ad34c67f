"""The simulator's Responses API input and its tokenizer, without a server."""

from __future__ import annotations

import pytest

from router.sim import responses, tokens


@pytest.mark.parametrize("text", ["", "a", "Hello, world", "Héllo wörld ✓ 🙂", "\x00\x00x"])
def test_detokenize_gives_back_what_tokenize_took(text: str) -> None:
    assert tokens.decode(tokens.encode(text)) == text


def test_ids_past_the_vocabulary_decode_to_nothing() -> None:
    assert tokens.decode([0, 5, 1 << 64]) == ""


def test_about_four_characters_a_token() -> None:
    answer = tokens.tokenize_answer("x" * 40, 2048, token_strs=True)
    assert answer["count"] == 10 == len(answer["token_strs"])
    assert answer["token_strs"][0] == "xxxx"


def test_instructions_and_input_become_chat_messages() -> None:
    body = {"instructions": "Be brief.",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                      {"role": "assistant", "content": "hello"}]}
    assert responses.input_messages(body) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}]
    assert responses.input_messages({"input": "hi"}) == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("given", [5, [5], [{"content": "no role"}], [{"role": "user",
                                                                      "content": 5}]])
def test_input_the_simulator_cannot_read_is_refused(given: object) -> None:
    with pytest.raises(responses.InputError):
        responses.input_messages({"input": given})


def test_a_response_cut_at_the_limit_is_incomplete() -> None:
    ids = responses.ResponseIds()
    usage = responses.usage(10, 4, 3)
    cut = responses.response_object({"max_output_tokens": 3}, ids, 0, "m", "abc", "length",
                                     usage)
    assert cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}
    assert cut["usage"]["input_tokens_details"]["cached_tokens"] == 4
    done = responses.response_object({}, ids, 0, "m", "abc", "stop", usage)
    assert done["status"] == "completed" and done["incomplete_details"] is None


def test_streamed_events_are_numbered_in_order() -> None:
    events = responses.EventStream({}, responses.ResponseIds(), 0, "m")
    raw = [*events.opening(), events.delta("a"), *events.closing("a", "stop",
                                                                 responses.usage(1, 0, 1))]
    kinds = [line.split(b"\n")[0].removeprefix(b"event: ").decode() for line in raw]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.delta",
                     "response.output_text.done", "response.content_part.done",
                     "response.output_item.done", "response.completed"]
    assert all(f'"sequence_number":{n},'.encode() in event for n, event in enumerate(raw))
