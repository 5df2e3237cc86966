"""The VoiceMesh error tree.

::

    VoiceMeshError                 base of everything raised on purpose
    ├── BadRequest                 the caller sent something wrong (4xx, never fail over)
    │   ├── BadAudio               undecodable audio, wrong frame size, bad sample rate
    │   ├── PayloadTooLarge        a frame or body over its limit (413)
    │   └── UnknownModel           a model name or path that cannot be resolved (404)
    ├── ModelAssetError            a model package is missing or a prepared file is corrupt
    └── EngineUnavailable          a backend cannot serve now (fail over on this only)
        ├── BackendClosed          the backend closed or reset the connection
        ├── BackendTimeout         the backend stalled past its timeout
        └── RegistryUnavailable    Redis cannot be reached

Boundaries translate library exceptions (httpx, websockets, redis) into these with
``raise ... from exc`` so callers only ever catch this tree.
"""

from __future__ import annotations


class VoiceMeshError(Exception):
    """Base of every error VoiceMesh raises on purpose."""

    code = "internal_error"
    status_code = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(VoiceMeshError):
    """The caller sent something the service cannot accept."""

    code = "bad_request"
    status_code = 400


class BadAudio(BadRequest):
    """Audio that cannot be decoded or does not match its declared format."""

    code = "bad_audio"
    status_code = 400


class PayloadTooLarge(BadRequest):
    """A frame or a body larger than the configured limit."""

    code = "payload_too_large"
    status_code = 413


class UnknownModel(BadRequest):
    """A model name or path that does not resolve to files or a known hub name."""

    code = "unknown_model"
    status_code = 404


class ModelAssetError(VoiceMeshError):
    """A model package is not installed, or a prepared model file fails its check."""

    code = "model_asset_error"
    status_code = 500


class EngineUnavailable(VoiceMeshError):
    """A backend cannot serve right now; the only error the gateway fails over on."""

    code = "engine_unavailable"
    status_code = 503


class BackendClosed(EngineUnavailable):
    """The backend closed or reset the connection."""

    code = "backend_closed"


class BackendTimeout(EngineUnavailable):
    """The backend sent nothing for longer than its timeout."""

    code = "backend_timeout"
    status_code = 504


class RegistryUnavailable(EngineUnavailable):
    """The Redis registry cannot be reached."""

    code = "registry_unavailable"
