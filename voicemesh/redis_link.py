"""The one way VoiceMesh talks to Redis: the registry, the session store and the
benchmark run store each hold a :class:`RedisLink`.

A link's client retries once, quickly: that covers a pooled connection that died with a
Redis restart, where redis-py's default (retries with backoff) would hold a caller, a
final on its way to a client say, for seconds while Redis is away. Every failure of a
call leaves as :class:`~voicemesh.errors.RegistryUnavailable`, naming the store, what it
was doing and the URL without its password.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from voicemesh.errors import RegistryUnavailable
from voicemesh.tasks import within

__all__ = ["RedisLink", "display_url"]

_T = TypeVar("_T")


def display_url(redis_url: str) -> str:
    """``redis_url`` with its password masked, for messages and logs."""
    parts = urlsplit(redis_url)
    if parts.password is None:
        return redis_url
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{netloc}"))


class RedisLink:
    """A Redis client for one store (``name`` in messages) and its bounded calls.

    Each socket operation times out after ``timeout_s``; a whole call, its one retry
    included, after ``deadline_s`` (three timeouts unless given).
    """

    def __init__(
        self,
        name: str,
        redis_url: str,
        *,
        timeout_s: float,
        deadline_s: float | None = None,
        decode_responses: bool = True,
    ) -> None:
        self.name = name
        self.display_url = display_url(redis_url)
        self.deadline_s = timeout_s * 3 if deadline_s is None else deadline_s
        self.redis: Redis = Redis.from_url(
            redis_url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1),
            decode_responses=decode_responses,
        )

    async def call(self, what: str, operation: Awaitable[_T]) -> _T:
        """Await ``operation``; any Redis, socket or deadline failure is
        :class:`RegistryUnavailable` saying ``what`` was under way."""
        try:
            return await within(self.deadline_s, operation)
        except (RedisError, OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise RegistryUnavailable(
                f"{self.name} at {self.display_url} unavailable during {what}: {reason}"
            ) from exc
