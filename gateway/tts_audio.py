"""Short-lived synthesized audio for ``GET /v1/tts/audio/{token}`` (:mod:`gateway.tts`).

``POST /v1/tts/synthesize`` with ``format: "json"`` and ``POST /v1/tts/compare`` answer
with an ``audio_url`` instead of the audio: the bytes wait here, under an unguessable
token, for ``tts_audio_ttl_s`` seconds. Only the API key that made them may fetch them
(another key gets 403, an unknown or expired token 404). The store is bounded by
``tts_audio_max_bytes``: past it the oldest entries go first.

The store is this gateway replica's memory, so with several gateway replicas behind
one front door the URL is served by the replica that made it (nginx's ``ip_hash`` or a
sticky cookie keeps a client there); the audio is not shared through Redis.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from voicemesh.errors import AudioNotFound, Forbidden, PayloadTooLarge

_LOGGER = logging.getLogger(__name__)

AUDIO_PATH = "/v1/tts/audio"
"""Where stored audio is served: ``{AUDIO_PATH}/{token}``."""
EXTENSIONS = {"wav": "wav", "pcm": "pcm", "flac": "flac", "mp3": "mp3", "opus": "ogg"}


@dataclass(frozen=True)
class StoredAudio:
    """One synthesized file waiting for its owner."""

    data: bytes
    media_type: str
    owner: str
    expires_at: float


class AudioStore:
    """Audio by token, each for one owner and a few minutes, the total bounded."""

    def __init__(self, ttl_s: float, max_bytes: int) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, StoredAudio] = OrderedDict()
        self._bytes = 0

    def put(self, data: bytes, *, media_type: str, owner: str, fmt: str) -> tuple[str, float]:
        """Keep ``data`` for ``owner``; its URL path and the Unix time it expires."""
        if len(data) > self.max_bytes:
            raise PayloadTooLarge(
                f"the audio is {len(data)} bytes, more than the {self.max_bytes} bytes the "
                "gateway keeps for audio URLs; ask for the audio itself (format wav, mp3...)",
                code="audio_too_large",
            )
        now = time.time()
        self._expire(now)
        while self._items and self._bytes + len(data) > self.max_bytes:
            self._drop(next(iter(self._items)))
        token = f"{secrets.token_urlsafe(18)}.{EXTENSIONS.get(fmt, 'bin')}"
        expires_at = now + self.ttl_s
        self._items[token] = StoredAudio(data, media_type, owner, expires_at)
        self._bytes += len(data)
        return f"{AUDIO_PATH}/{token}", expires_at

    def get(self, token: str, owner: str) -> StoredAudio:
        """The audio under ``token`` for ``owner``: 404 unknown or expired, 403 not theirs."""
        self._expire(time.time())
        found = self._items.get(token)
        if found is None:
            raise AudioNotFound(
                "no audio under this URL: it expired (audio URLs live "
                f"{self.ttl_s:.0f} s) or never existed; synthesize again"
            )
        if not secrets.compare_digest(found.owner, owner):
            raise Forbidden("this audio was made with another API key", code="forbidden")
        return found

    def _expire(self, now: float) -> None:
        for token in [t for t, item in self._items.items() if item.expires_at <= now]:
            self._drop(token)

    def _drop(self, token: str) -> None:
        item = self._items.pop(token)
        self._bytes -= len(item.data)
