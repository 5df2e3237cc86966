"""Where resumable streaming sessions are kept: Redis (any gateway replica resumes) or memory.

A session's record holds what another gateway needs to carry it on: its owner (the key
fingerprint), the hash of its resume token, the client's ``start``, the stream clock
(``start_sample``: where the kept audio begins; ``total_samples``: all audio received),
the last finals sent (each with its session ``index``) and the audio since the last final
(at most ``tail_s`` of it). Every write names the record's *generation*; a resume takes the
record over by raising it, so a write from the stream it replaced (a gateway that has not
noticed its client is gone) fails and that stream ends. Records lapse ``ttl_s`` after
their last write: a dropped session can be resumed that long.

In Redis the record is a hash and the audio a string beside it, under the registry's
prefix; each write and the take-over are one Lua script, so they are atomic.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from voicemesh.redis_link import RedisLink

__all__ = [
    "MemorySessionStore",
    "RedisSessionStore",
    "SessionRecord",
    "SessionStore",
    "token_hash",
]


def token_hash(token: str) -> str:
    """What a record keeps of its resume token (the token itself is never stored)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class SessionRecord:
    """One resumable session as a store keeps it."""

    session_id: str
    key_id: str
    token_hash: str
    start: dict[str, Any]
    model: str | None = None
    start_sample: int = 0
    total_samples: int = 0
    final_count: int = 0
    finals: list[dict[str, Any]] = field(default_factory=list)
    audio: bytes = b""
    generation: int = 1

    def owned_by(self, token: str, key_id: str) -> bool:
        """Whether ``token`` (a :func:`token_hash`) is this session's and ``key_id`` opened it."""
        same_token = hmac.compare_digest(self.token_hash, token)
        return same_token and hmac.compare_digest(self.key_id, key_id)


class SessionStore(Protocol):
    """Keeps resumable sessions for ``ttl_s`` after their last write."""

    name: str

    async def write(self, record: SessionRecord, *, append: bytes | None) -> bool:
        """Write ``record`` if its generation is still the stored one (or none is stored).

        ``append``: only these bytes are new audio (the stored audio is extended); None
        rewrites the audio whole. False: another stream took the session over."""
        ...

    async def take_over(self, session_id: str, token: str, key_id: str) -> SessionRecord | None:
        """The record with its generation raised (its old stream's writes now fail), when
        ``token`` (a :func:`token_hash`) and ``key_id`` are its own; else None, untouched."""
        ...

    async def forget(self, session_id: str, generation: int) -> None:
        """Drop the session (it ended) while ``generation`` is still the stored one."""
        ...

    async def close(self) -> None:
        """Let go of connections."""
        ...


class MemorySessionStore:
    """Sessions in this gateway's memory (Redis off): resumable through this replica only."""

    name = "memory"

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._records: dict[str, tuple[SessionRecord, float]] = {}

    def _live(self, session_id: str) -> SessionRecord | None:
        now = time.monotonic()
        for sid in [s for s, (_, lapse) in self._records.items() if lapse <= now]:
            del self._records[sid]
        held = self._records.get(session_id)
        return None if held is None else held[0]

    async def write(self, record: SessionRecord, *, append: bytes | None) -> bool:
        """Keep a copy of ``record`` unless a resume took the session over."""
        stored = self._live(record.session_id)
        if stored is not None and stored.generation != record.generation:
            return False
        audio = record.audio if append is None or stored is None else stored.audio + append
        copy = SessionRecord(**{**record.__dict__, "audio": audio, "finals": list(record.finals)})
        self._records[record.session_id] = (copy, time.monotonic() + self.ttl_s)
        return True

    async def take_over(self, session_id: str, token: str, key_id: str) -> SessionRecord | None:
        """The kept record, now one generation on, if ``token`` and ``key_id`` are its own."""
        stored = self._live(session_id)
        if stored is None or not stored.owned_by(token, key_id):
            return None
        stored.generation += 1
        return SessionRecord(**{**stored.__dict__, "finals": list(stored.finals)})

    async def forget(self, session_id: str, generation: int) -> None:
        """Drop the record if it is still ``generation``'s."""
        stored = self._live(session_id)
        if stored is not None and stored.generation == generation:
            del self._records[session_id]

    async def close(self) -> None:
        """Nothing to let go of."""


# KEYS: record hash, audio. ARGV: generation, ttl ms, mode (append|set), audio, fields JSON.
_WRITE = """
local gen = redis.call('HGET', KEYS[1], 'generation')
if gen and gen ~= ARGV[1] then return 0 end
if ARGV[3] == 'append' and gen then
  redis.call('APPEND', KEYS[2], ARGV[4])
else
  redis.call('SET', KEYS[2], ARGV[4])
end
local fields = cjson.decode(ARGV[5])
for name, value in pairs(fields) do redis.call('HSET', KEYS[1], name, value) end
redis.call('HSET', KEYS[1], 'generation', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""
# KEYS: record hash, audio. ARGV: token hash, key id. Returns the hash's fields and the
# audio, generation raised; nil (nothing changed) for an unknown session or another owner.
_TAKE_OVER = """
if redis.call('HGET', KEYS[1], 'token_hash') ~= ARGV[1] then return nil end
if redis.call('HGET', KEYS[1], 'key_id') ~= ARGV[2] then return nil end
redis.call('HINCRBY', KEYS[1], 'generation', 1)
return {redis.call('HGETALL', KEYS[1]), redis.call('GET', KEYS[2]) or ''}
"""
# KEYS: record hash, audio. ARGV: generation.
_FORGET = """
if redis.call('HGET', KEYS[1], 'generation') == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
end
return 1
"""


class RedisSessionStore:
    """Sessions in Redis under the registry's prefix: any gateway replica resumes them."""

    name = "redis"

    def __init__(
        self, redis_url: str, *, prefix: str, ttl_s: float, timeout_s: float = 1.0
    ) -> None:
        self.prefix = f"{prefix}:session"
        self.ttl_ms = int(ttl_s * 1000)
        self.timeout_s = timeout_s
        # A final waits on its write: a call is bounded by two timeouts, not three.
        self._link = RedisLink(
            "session store",
            redis_url,
            timeout_s=timeout_s,
            deadline_s=2 * timeout_s,
            decode_responses=False,
        )
        self._redis = self._link.redis
        self._call = self._link.call
        self.display_url = self._link.display_url
        self._write = self._redis.register_script(_WRITE)
        self._take_over = self._redis.register_script(_TAKE_OVER)
        self._forget = self._redis.register_script(_FORGET)

    def keys(self, session_id: str) -> list[str]:
        """The record's hash and its audio."""
        return [f"{self.prefix}:{session_id}", f"{self.prefix}:{session_id}:audio"]

    async def write(self, record: SessionRecord, *, append: bytes | None) -> bool:
        """One atomic write, refused when the stored generation is another's."""
        fields = {
            "key_id": record.key_id,
            "token_hash": record.token_hash,
            "start": json.dumps(record.start),
            "model": record.model or "",
            "start_sample": str(record.start_sample),
            "total_samples": str(record.total_samples),
            "final_count": str(record.final_count),
            "finals": json.dumps(record.finals),
        }
        mode, audio = ("set", record.audio) if append is None else ("append", append)
        args: list[bytes | str | int] = [
            record.generation,
            self.ttl_ms,
            mode,
            audio,
            json.dumps(fields),
        ]
        done = await self._call(
            "write of a session", self._write(keys=self.keys(record.session_id), args=args)
        )
        return bool(done)

    async def take_over(self, session_id: str, token: str, key_id: str) -> SessionRecord | None:
        """Check the owner, raise the generation and read the record back, in one step."""
        found = await self._call(
            "take-over of a session",
            self._take_over(keys=self.keys(session_id), args=[token, key_id]),
        )
        if not found:
            return None
        flat, audio = found
        raw = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
        return SessionRecord(
            session_id=session_id,
            key_id=raw.get("key_id", ""),
            token_hash=raw.get("token_hash", ""),
            start=json.loads(raw.get("start") or "{}"),
            model=raw.get("model") or None,
            start_sample=int(raw.get("start_sample", 0)),
            total_samples=int(raw.get("total_samples", 0)),
            final_count=int(raw.get("final_count", 0)),
            finals=json.loads(raw.get("finals") or "[]"),
            audio=bytes(audio),
            generation=int(raw.get("generation", 1)),
        )

    async def forget(self, session_id: str, generation: int) -> None:
        """Delete the record and its audio while they are still ``generation``'s."""
        await self._call(
            "delete of a session", self._forget(keys=self.keys(session_id), args=[generation])
        )

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
