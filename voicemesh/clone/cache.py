"""The synthesis result cache: audio on disk, index and LRU order in Redis, a size bound.

A result is keyed by :func:`cache_key` over (voice audio hash, text, parameters,
engine, model version), so a new recording, another engine or a new model never
serves an old result. The file is ``{cache_dir}/{key}``; Redis holds its metadata
under ``{prefix}:clone:cache:{key}``, the LRU order in the sorted set
``{prefix}:clone:cache:lru`` (score: last use) and the bytes stored in
``{prefix}:clone:cache:bytes``. Past ``max_bytes`` the least recently used results
are evicted. Replicas sharing the volume and the Redis share the cache.

A Redis failure never fails a synthesis: the lookup counts as a miss and the store
is skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from voicemesh.tasks import within

_LOGGER = logging.getLogger(__name__)


def cache_key(
    *, voice_sha256: str, text: str, params: dict[str, object], engine: str, model_version: str
) -> str:
    """The key of one result: a hash over everything that changes the audio."""
    material = json.dumps(
        {
            "voice": voice_sha256,
            "text": text,
            "params": params,
            "engine": engine,
            "model": model_version,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class CachedResult:
    """A result read from the cache."""

    data: bytes
    media_type: str
    engine: str
    approximate: bool
    sample_rate: int | None = None
    """Rate of the audio (None for entries cached before it was recorded)."""


class ResultCache:
    """LRU cache of encoded synthesis results, bounded by ``max_bytes``."""

    def __init__(
        self,
        redis: Redis,
        cache_dir: Path,
        *,
        max_bytes: int,
        prefix: str = "voicemesh",
        timeout_s: float = 1.0,
    ) -> None:
        self.redis = redis
        self.cache_dir = cache_dir
        self.max_bytes = max_bytes
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.hits = 0
        self.misses = 0
        cache_dir.mkdir(parents=True, exist_ok=True)

    @property
    def hit_rate(self) -> float | None:
        """Hits over lookups on this replica; None before any lookup."""
        total = self.hits + self.misses
        return None if total == 0 else self.hits / total

    def _meta_key(self, key: str) -> str:
        return f"{self.prefix}:clone:cache:{key}"

    @property
    def _lru_key(self) -> str:
        return f"{self.prefix}:clone:cache:lru"

    @property
    def _bytes_key(self) -> str:
        return f"{self.prefix}:clone:cache:bytes"

    def _path(self, key: str) -> Path:
        return self.cache_dir / key

    async def get(self, key: str) -> CachedResult | None:
        """The cached result, or None (a miss); marks it most recently used."""
        try:
            meta = await within(self.timeout_s, self.redis.hgetall(self._meta_key(key)))
        except (RedisError, OSError, TimeoutError) as exc:
            _LOGGER.warning("cache index unavailable, counting a miss: %s", exc)
            self.misses += 1
            return None
        if not meta:
            self.misses += 1
            return None
        try:
            data = self._path(key).read_bytes()
        except OSError:
            # The index outlived its file (evicted by another replica, volume wiped).
            await self._forget(key)
            self.misses += 1
            return None
        self.hits += 1
        try:
            await within(self.timeout_s, self.redis.zadd(self._lru_key, {key: time.time()}))
        except (RedisError, OSError, TimeoutError) as exc:
            _LOGGER.debug("could not refresh LRU order: %s", exc)
        return CachedResult(
            data=data,
            media_type=str(meta.get("media_type", "audio/wav")),
            engine=str(meta.get("engine", "")),
            approximate=meta.get("approximate") == "1",
            sample_rate=int(meta["sample_rate"]) if meta.get("sample_rate") else None,
        )

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        media_type: str,
        engine: str,
        approximate: bool,
        sample_rate: int | None = None,
    ) -> None:
        """Store a result, then evict least recently used ones past the size bound."""
        if len(data) > self.max_bytes:
            return
        path = self._path(key)
        tmp = path.with_name(f"{key}.{uuid.uuid4().hex[:8]}.tmp")
        await asyncio.to_thread(tmp.write_bytes, data)
        os.replace(tmp, path)
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.exists(self._meta_key(key))
            pipe.hset(
                self._meta_key(key),
                mapping={
                    "media_type": media_type,
                    "engine": engine,
                    "size": len(data),
                    "approximate": "1" if approximate else "0",
                    "sample_rate": sample_rate or "",
                },
            )
            pipe.zadd(self._lru_key, {key: time.time()})
            existed = (await within(self.timeout_s, pipe.execute()))[0]
            if not existed:
                await self.redis.incrby(self._bytes_key, len(data))
            await self._evict()
        except (RedisError, OSError, TimeoutError) as exc:
            _LOGGER.warning("cache index unavailable, result not indexed: %s", exc)

    async def _forget(self, key: str) -> int:
        """Drop one entry from the index and disk; returns the bytes it held."""
        try:
            size = int(await self.redis.hget(self._meta_key(key), "size") or 0)
            pipe = self.redis.pipeline(transaction=True)
            pipe.delete(self._meta_key(key))
            pipe.zrem(self._lru_key, key)
            pipe.decrby(self._bytes_key, size)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            _LOGGER.debug("could not drop cache entry %s: %s", key[:12], exc)
            size = 0
        self._path(key).unlink(missing_ok=True)
        return size

    async def _evict(self) -> None:
        while int(await self.redis.get(self._bytes_key) or 0) > self.max_bytes:
            oldest = await self.redis.zrange(self._lru_key, 0, 0)
            if not oldest:
                await self.redis.set(self._bytes_key, 0)
                return
            freed = await self._forget(str(oldest[0]))
            _LOGGER.debug("evicted cache entry %s (%d bytes)", str(oldest[0])[:12], freed)

    async def size_bytes(self) -> int:
        """Bytes the index says are stored."""
        return int(await self.redis.get(self._bytes_key) or 0)
