"""Session resume's pieces: the kept audio, the memory store, the client's resume state."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gateway.replay import SessionBuffer
from gateway.resume import SessionKeeper, resume_request
from gateway.session_store import MemorySessionStore, SessionRecord, token_hash
from voicemesh.client.resume import ResumeState, open_session
from voicemesh.errors import BadRequest, RegistryUnavailable
from voicemesh.protocol import SAMPLE_RATE

pytestmark = pytest.mark.unit


def pcm(seconds: float, value: int = 1) -> bytes:
    return value.to_bytes(2, "little", signed=True) * int(seconds * SAMPLE_RATE)


def test_a_restored_buffer_continues_the_session_clock() -> None:
    buffer = SessionBuffer()
    buffer.restore(2 * SAMPLE_RATE, 5 * SAMPLE_RATE, pcm(3))
    assert buffer.pending_ms == 3000
    buffer.append(pcm(1, 2))
    assert buffer.total_samples == 6 * SAMPLE_RATE
    assert buffer.audio_since(5 * SAMPLE_RATE) == pcm(1, 2)
    assert buffer.audio_since(4 * SAMPLE_RATE) == pcm(1) + pcm(1, 2)
    buffer.drop_until(4.5)
    assert buffer.start_sample == int(4.5 * SAMPLE_RATE)
    assert buffer.replay_since_last_final() == pcm(0.5) + pcm(1, 2)
    # Nothing it holds is ahead of real time: a resumed stream is not refused.
    assert buffer.refusal(pcm(0.1), limit_s=5) is None


def record(**changes: Any) -> SessionRecord:
    fields: dict[str, Any] = {
        "session_id": "s1",
        "key_id": "k1",
        "token_hash": token_hash("s1.secret"),
        "start": {"type": "start"},
        "total_samples": SAMPLE_RATE,
        "audio": pcm(1),
    }
    return SessionRecord(**{**fields, **changes})


async def test_the_memory_store_hands_a_session_to_its_owner_only() -> None:
    store = MemorySessionStore(ttl_s=60)
    assert await store.write(record(), append=None)
    assert await store.write(record(total_samples=2 * SAMPLE_RATE), append=pcm(1, 3))
    assert await store.take_over("s1", token_hash("s1.other"), "k1") is None
    assert await store.take_over("s1", token_hash("s1.secret"), "k2") is None
    taken = await store.take_over("s1", token_hash("s1.secret"), "k1")
    assert taken is not None and taken.generation == 2
    assert taken.audio == pcm(1) + pcm(1, 3) and taken.total_samples == 2 * SAMPLE_RATE
    # The stream it replaced can no longer write; the new one can, and can forget it.
    assert not await store.write(record(), append=None)
    assert await store.write(taken, append=None)
    await store.forget("s1", generation=1)
    assert await store.take_over("s1", token_hash("s1.secret"), "k1") is not None
    await store.forget("s1", generation=3)
    assert await store.take_over("s1", token_hash("s1.secret"), "k1") is None


async def test_a_memory_store_record_lapses() -> None:
    store = MemorySessionStore(ttl_s=0.05)
    await store.write(record(), append=None)
    await asyncio.sleep(0.1)
    assert await store.take_over("s1", token_hash("s1.secret"), "k1") is None


class FailingStore(MemorySessionStore):
    """A store whose Redis is away until ``up``."""

    up = False

    async def write(self, record: SessionRecord, *, append: bytes | None) -> bool:
        if not self.up:
            raise RegistryUnavailable("session store away")
        return await super().write(record, append=append)


async def test_the_keeper_numbers_finals_and_rewrites_after_a_failed_write() -> None:
    store = FailingStore(ttl_s=60)
    keeper = SessionKeeper(
        store, session_id="s9", key_id="k", keep_finals=2, tail_s=30, ack_interval_s=1
    )
    buffer = SessionBuffer()
    buffer.append(pcm(1))
    assert not await keeper.save(buffer)  # Redis away: nothing acked, nothing lost
    buffer.append(pcm(1, 2))
    # While the store is away a final is not held up by a write; the keep loop tries.
    assert await keeper.final({"type": "final", "end": 0.1}, buffer)
    store.up = True
    assert await keeper.save(buffer)  # the keep loop's next write finds it back
    finals = [{"type": "final", "end": 0.5}, {"type": "final", "end": 1.0}, {"type": "final"}]
    for final in finals:
        assert await keeper.final(final, buffer)
    assert [f["index"] for f in finals] == [1, 2, 3]
    assert [f["index"] for f in keeper.record.finals] == [2, 3]  # keep_finals
    assert keeper.received_s == 2.0
    buffer.append(pcm(0.5, 3))
    assert await keeper.save(buffer)  # an append now
    # The whole audio, rewritten once the store came back, then extended.
    taken = await store.take_over("s9", token_hash(keeper.token), "k")
    assert taken is not None and taken.audio == pcm(1) + pcm(1, 2) + pcm(0.5, 3)
    assert taken.final_count == 4
    # Taken over: the keeper's next write fails and says so.
    assert not await keeper.save(buffer) and keeper.taken_over


def test_a_resume_on_the_url() -> None:
    assert resume_request({}) is None
    asked = resume_request({"resume_token": "s.t", "last_final": "4"})
    assert asked is not None and asked.resume_token == "s.t" and asked.last_final == 4
    with pytest.raises(BadRequest, match="last_final"):
        resume_request({"resume_token": "s.t", "last_final": "four"})


class FakeWs:
    """The server side of one connection, scripted."""

    def __init__(self, replies: list[dict[str, Any]]) -> None:
        self.sent: list[dict[str, Any]] = []
        self.replies = [json.dumps(r) for r in replies]

    async def send(self, text: str) -> None:
        self.sent.append(json.loads(text))

    async def recv(self) -> str:
        return self.replies.pop(0)


async def test_the_client_asks_to_resume_and_falls_back_to_a_new_session() -> None:
    state = ResumeState()
    start = {"type": "start", "language": "en"}
    ws = FakeWs([])
    ready = {"type": "ready", "session_id": "a", "resume_token": "a.t"}
    assert await open_session(ws, state, ready, start, origin=0, timeout_s=1) == (None, [])
    assert ws.sent == [start] and state.token == "a.t"
    assert state.fresh_final({"type": "final", "index": 0})
    assert not state.fresh_final({"type": "final", "index": 0})

    resumed = {"type": "resumed", "session_id": "a", "received_s": 2.5}
    ws = FakeWs([{"type": "ack", "received_s": 0.0}, resumed])
    ready_b = {"type": "ready", "session_id": "b", "resume_token": "b.t"}
    got, early = await open_session(ws, state, ready_b, start, origin=99, timeout_s=1)
    assert got == resumed and early == [{"type": "ack", "received_s": 0.0}]
    assert ws.sent == [{**start, "resume_token": "a.t", "last_final": 0}]
    assert state.resumed_at(resumed) == int(2.5 * SAMPLE_RATE) and state.token == "a.t"

    gone = {"type": "error", "code": "session_not_found", "message": "expired"}
    ws = FakeWs([gone])
    got, early = await open_session(ws, state, ready_b, start, origin=8000, timeout_s=1)
    assert got is None and early == [gone]
    assert state.token == "b.t" and state.origin == 8000 and state.last_final == -1


async def test_the_kept_tail_stays_bounded_and_consistent() -> None:
    store = MemorySessionStore(ttl_s=60)
    keeper = SessionKeeper(
        store, session_id="s7", key_id="k", keep_finals=4, tail_s=1.0, ack_interval_s=1
    )
    buffer = SessionBuffer()
    for i in range(12):  # 6 s without a final, written every 0.5 s
        buffer.append(pcm(0.5, i + 1))
        assert await keeper.save(buffer)
        stored = store._live("s7")
        assert stored is not None
        held = len(stored.audio) // 2
        assert held <= 2 * SAMPLE_RATE + SAMPLE_RATE // 2  # the tail, bounded
        assert stored.total_samples - stored.start_sample == held
    taken = await store.take_over("s7", token_hash(keeper.token), "k")
    assert taken is not None
    resumed = SessionKeeper(
        store, session_id="other", key_id="k", keep_finals=4, tail_s=1.0, ack_interval_s=1
    )
    audio = resumed.adopt(taken, keeper.token)
    restored = SessionBuffer()
    restored.restore(taken.start_sample, taken.total_samples, audio)
    assert restored.total_samples == 6 * SAMPLE_RATE
    assert restored.audio_since(restored.total_samples - SAMPLE_RATE // 2) == pcm(0.5, 12)
