"""What a conversation of `fleet bench scenario chat` sends as its affinity key."""

from __future__ import annotations

from router.bench.chat import ChatWorkload, session_headers


def test_a_conversation_keys_on_itself_its_tenant_or_nothing() -> None:
    assert session_headers(ChatWorkload(seed=3), 7, 2) == [("X-Session-Id", "conversation-3-7")]
    assert session_headers(ChatWorkload(key_by="tenant"), 7, 2) == [("X-Session-Id", "tenant-2")]
    assert session_headers(ChatWorkload(key_by="none"), 7, 2) == []
