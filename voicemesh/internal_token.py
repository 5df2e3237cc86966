"""The internal token callers send to the engines (no web framework here).

The engines trust what the gateway tells them (whose voice profile a call is for, in
:data:`~voicemesh.protocol.OWNER_HEADER`), so with ``internal_token`` set
(``VOICEMESH_INTERNAL_TOKEN`` or its ``_FILE``) they answer only callers that send it in
:data:`~voicemesh.protocol.INTERNAL_TOKEN_HEADER` (:mod:`voicemesh.engine_guard` checks it).
The gateway, an engine calling another (``tts_clone`` asking STT for a transcript) and the
command-line client send :func:`internal_headers`. The client imports this module, so it
stays free of FastAPI.
"""

from __future__ import annotations

from pydantic import SecretStr

from voicemesh.protocol import INTERNAL_TOKEN_HEADER
from voicemesh.settings import CommonSettings


def internal_headers(token: SecretStr | None) -> dict[str, str]:
    """The header that lets a call through an engine's guard (none when no token is set)."""
    return {INTERNAL_TOKEN_HEADER: token.get_secret_value()} if token is not None else {}


def internal_headers_from_environment() -> dict[str, str]:
    """:func:`internal_headers` for a tool that talks to engines directly (CLI, benchmarks):
    the token of ``VOICEMESH_INTERNAL_TOKEN`` (or its ``_FILE``) when the environment has one."""
    return internal_headers(CommonSettings().internal_token)
