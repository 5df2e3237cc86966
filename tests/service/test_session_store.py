"""The Redis session store against a real Redis: what a resume on another gateway reads.

Writes are checked against the generation (a resumed session's old stream cannot write
over it), take-over checks the owner and raises the generation in one step, records
lapse with their TTL, and a store whose Redis is away says so as ``RegistryUnavailable``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis

from gateway.session_store import RedisSessionStore, SessionRecord, token_hash
from tests.harness import RedisServer, free_port
from voicemesh.errors import RegistryUnavailable
from voicemesh.protocol import SAMPLE_RATE

pytestmark = [pytest.mark.service, pytest.mark.timeout(60)]

STORE_TEST_DB = 5
TOKEN = "sess1.secret-part"


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisSessionStore]:
    url = f"{redis_server.url.rsplit('/', 1)[0]}/{STORE_TEST_DB}"
    redis.Redis.from_url(url).flushdb()
    store = RedisSessionStore(url, prefix="test", ttl_s=0.8)
    try:
        yield store
    finally:
        await store.close()


def record(**changes: object) -> SessionRecord:
    base = SessionRecord(
        session_id="sess1",
        key_id="key-a",
        token_hash=token_hash(TOKEN),
        start={"type": "start", "language": "en"},
        model="base",
        start_sample=SAMPLE_RATE,
        total_samples=2 * SAMPLE_RATE,
        final_count=1,
        finals=[{"type": "final", "index": 0, "text": "hello", "end": 1.0}],
        audio=b"\x01\x00" * SAMPLE_RATE,
    )
    for name, value in changes.items():
        setattr(base, name, value)
    return base


async def test_a_record_round_trips_with_appended_audio(store: RedisSessionStore) -> None:
    first = record()
    assert await store.write(first, append=None)
    more = record(total_samples=3 * SAMPLE_RATE)
    assert await store.write(more, append=b"\x02\x00" * SAMPLE_RATE)
    taken = await store.take_over("sess1", token_hash(TOKEN), "key-a")
    assert taken is not None
    assert taken.generation == 2
    assert taken.start == {"type": "start", "language": "en"} and taken.model == "base"
    assert (taken.start_sample, taken.total_samples) == (SAMPLE_RATE, 3 * SAMPLE_RATE)
    assert taken.audio == b"\x01\x00" * SAMPLE_RATE + b"\x02\x00" * SAMPLE_RATE
    assert taken.finals == first.finals and taken.final_count == 1


async def test_take_over_needs_the_token_and_the_key(store: RedisSessionStore) -> None:
    await store.write(record(), append=None)
    assert await store.take_over("sess1", token_hash("sess1.guess"), "key-a") is None
    assert await store.take_over("sess1", token_hash(TOKEN), "key-b") is None
    assert await store.take_over("nope", token_hash(TOKEN), "key-a") is None
    # The failed tries changed nothing: the owner's stream still writes.
    assert await store.write(record(), append=None)


async def test_the_replaced_stream_can_no_longer_write(store: RedisSessionStore) -> None:
    old = record()
    await store.write(old, append=None)
    new = await store.take_over("sess1", token_hash(TOKEN), "key-a")
    assert new is not None
    assert not await store.write(old, append=b"\x09\x00")
    assert await store.write(new, append=b"\x03\x00")
    await store.forget("sess1", old.generation)  # not the old stream's to forget
    assert await store.take_over("sess1", token_hash(TOKEN), "key-a") is not None
    await store.forget("sess1", new.generation + 1)
    assert await store.take_over("sess1", token_hash(TOKEN), "key-a") is None


async def test_a_record_lapses_after_its_ttl(store: RedisSessionStore) -> None:
    await store.write(record(), append=None)
    await asyncio.sleep(1.0)
    assert await store.take_over("sess1", token_hash(TOKEN), "key-a") is None


async def test_a_store_without_redis_says_so() -> None:
    store = RedisSessionStore(f"redis://127.0.0.1:{free_port()}/0", prefix="t", ttl_s=5)
    try:
        with pytest.raises(RegistryUnavailable, match="session store"):
            await store.write(record(), append=None)
    finally:
        await store.close()
