"""The Python client of VoiceMesh: ``from voicemesh.client import VoiceMeshClient``.

* :class:`VoiceMeshClient` (blocking) and :class:`AsyncVoiceMeshClient` (asyncio), the
  same methods: ``transcribe``, ``transcribe_text``, ``stream``, ``synthesize``,
  ``synthesize_stream``, ``compare_voices``, ``clone_voice``, ``status``,
  ``stream_status`` and a few listings;
* typed results (:mod:`voicemesh.client.models`) and typed errors
  (:mod:`voicemesh.client.errors`, the tree is drawn there).

It talks to the gateway over HTTP and WebSockets only and imports no service code:
``pip install voicemesh`` is enough (``voicemesh[codecs]`` to stream compressed files).
See ``docs/client.md``.
"""

from voicemesh.client.api import AsyncVoiceMeshClient
from voicemesh.client.errors import (
    ApiError,
    BadInputError,
    BusyError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    ServerError,
    StreamLostError,
    TransportError,
    UnauthorizedError,
    VoiceMeshClientError,
)
from voicemesh.client.models import (
    ClonedVoice,
    ComparedVoice,
    Comparison,
    MeshStatus,
    ReconnectEvent,
    StatusEvent,
    StreamEvent,
    Synthesis,
    Transcription,
    TranscriptSegment,
    VoiceCandidate,
)
from voicemesh.client.sync import VoiceMeshClient
from voicemesh.protocol import (
    AckMessage,
    ErrorMessage,
    FailoverMessage,
    FinalMessage,
    PartialMessage,
    ReadyMessage,
    ResumedMessage,
    VadMessage,
)

__all__ = [
    "AckMessage",
    "ApiError",
    "AsyncVoiceMeshClient",
    "BadInputError",
    "BusyError",
    "ClonedVoice",
    "ComparedVoice",
    "Comparison",
    "ConflictError",
    "ErrorMessage",
    "FailoverMessage",
    "FinalMessage",
    "ForbiddenError",
    "MeshStatus",
    "NotFoundError",
    "PartialMessage",
    "ReadyMessage",
    "ReconnectEvent",
    "ResumedMessage",
    "ServerError",
    "StatusEvent",
    "StreamEvent",
    "StreamLostError",
    "Synthesis",
    "TranscriptSegment",
    "Transcription",
    "TransportError",
    "UnauthorizedError",
    "VadMessage",
    "VoiceCandidate",
    "VoiceMeshClient",
    "VoiceMeshClientError",
]
