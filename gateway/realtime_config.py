"""OpenAI Realtime transcription sessions: what the client sets, read and shown (pure).

Two spellings of the same session reach ``WS /v1/realtime``, and both are read:

* GA (``client.realtime``): ``session.update`` whose ``session`` has ``type:
  "transcription"`` and ``audio.input.{format, transcription, turn_detection}``;
  answered with ``session.created`` / ``session.updated``;
* beta (``client.beta.realtime``, ``?intent=transcription``, header ``OpenAI-Beta:
  realtime=v1``): ``transcription_session.update`` with ``input_audio_format``,
  ``input_audio_transcription`` and ``turn_detection`` at the top of ``session``;
  answered with ``transcription_session.created`` / ``.updated``.

:func:`read_update` turns either into a :class:`TranscriptionConfig`;
:func:`session_object` renders one back in the client's spelling. Audio is PCM16 mono
at 24 kHz (OpenAI's ``pcm16``) or 16 kHz. An option the mesh has no engine for is
refused with ``feature_unavailable``, never ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, replace
from typing import Any

from voicemesh.errors import BadAudio, BadEvent, BadRequest, FeatureUnavailable
from voicemesh.protocol import StartMessage

SAMPLE_RATES = (24000, 16000)
"""Input rates served: OpenAI's ``pcm16`` (24 kHz) and 16 kHz."""
UPDATE_EVENTS = ("session.update", "transcription_session.update")
BUFFER_EVENTS = (
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
)
SERVED_EVENTS = (*UPDATE_EVENTS, *BUFFER_EVENTS)


@dataclass(frozen=True)
class ServerVad:
    """``turn_detection`` of type ``server_vad``: the engine's endpointing."""

    threshold: float = 0.5
    prefix_padding_ms: int = 500
    silence_duration_ms: int = 500


@dataclass(frozen=True)
class TranscriptionConfig:
    """A transcription session's settings, as the client last set them."""

    sample_rate: int = 24000
    model: str = "whisper-1"
    language: str | None = None
    prompt: str = ""
    turn_detection: ServerVad | None = ServerVad()
    """None: manual turns (the client commits)."""

    def engine_fields(self) -> tuple[object, ...]:
        """What the session core and its engine are started with (fixed once audio flows)."""
        return (self.sample_rate, self.model, self.language, self.prompt, self.turn_detection)

    def start_message(self, session_id: str) -> StartMessage:
        """The core's ``start``: the audio format, and what the engine is tuned with.

        VAD parameters go to the engine only where they differ from its defaults (which
        ``ServerVad()`` shows), so a service configured otherwise keeps its own.
        """
        vad, default = self.turn_detection or ServerVad(), ServerVad()

        def changed(value: float, stock: float, scale: float = 1.0) -> float | None:
            return None if value == stock else value / scale

        return StartMessage(
            sample_rate=self.sample_rate,
            encoding="pcm_s16le",
            language=self.language,
            session_id=session_id,
            prompt=self.prompt or None,
            vad_threshold=changed(vad.threshold, default.threshold),
            min_silence_s=changed(vad.silence_duration_ms, default.silence_duration_ms, 1000),
            preroll_s=changed(vad.prefix_padding_ms, default.prefix_padding_ms, 1000),
        )


def parse_event(text: str) -> dict[str, Any]:
    """One client event: a JSON object with a string ``type`` (else BadEvent)."""
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise BadEvent(f"an event must be one JSON object: {exc}") from exc
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise BadEvent("an event must be a JSON object with a string 'type'")
    return event


def unsupported(kind: str) -> BadRequest:
    """The error for an event type this endpoint does not serve, naming it."""
    return BadRequest(
        f"event type {kind!r} is not supported: /v1/realtime serves transcription sessions "
        f"only ({', '.join(SERVED_EVENTS)}); responses and conversation items are not served",
        code="unsupported_event",
    )


def audio_of(event: dict[str, Any]) -> bytes:
    """The audio of ``input_audio_buffer.append`` (base64 in ``audio``)."""
    data = event.get("audio")
    if not isinstance(data, str):
        raise BadEvent("input_audio_buffer.append needs 'audio': base64-encoded PCM16")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadAudio(f"'audio' is not valid base64: {exc}") from exc


def pcm_frames(carry: bytes, data: bytes, max_frame_bytes: int) -> tuple[list[bytes], bytes]:
    """``data`` after ``carry`` as whole-sample PCM16 frames, and the odd byte left over."""
    data = carry + data
    whole = len(data) - len(data) % 2
    step = max(2, max_frame_bytes - max_frame_bytes % 2)
    return [data[i : min(i + step, whole)] for i in range(0, whole, step)], data[whole:]


def _mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadEvent(f"{where} must be an object")
    return value


def _check_keys(value: dict[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(value) - known)
    if unknown:
        raise BadEvent(f"unknown parameter {where}.{unknown[0]}")


def _unserved(value: object, where: str) -> None:
    """Options this mesh has no engine for: refused when set, never silently ignored."""
    if value not in (None, [], False, ""):
        raise FeatureUnavailable(f"{where} is not supported by this server; leave it out")


def read_format(value: object) -> int:
    """The input sample rate ``format`` / ``input_audio_format`` names."""
    if value == "pcm16":
        return 24000
    if isinstance(value, str):
        raise BadAudio(
            f"input audio format {value!r} is not served: use pcm16", code="bad_encoding"
        )
    fmt = _mapping(value, "audio.input.format")
    _check_keys(fmt, {"type", "rate"}, "audio.input.format")
    if fmt.get("type", "audio/pcm") != "audio/pcm":
        raise BadAudio(
            f"input audio format {fmt.get('type')!r} is not served: use audio/pcm",
            code="bad_encoding",
        )
    rate = fmt.get("rate", 24000)
    if rate not in SAMPLE_RATES:
        raise BadAudio(f"rate must be 24000 or 16000, got {rate!r}", code="bad_sample_rate")
    return int(rate)


def read_transcription(value: object, config: TranscriptionConfig) -> TranscriptionConfig:
    """``{model, language, prompt}`` applied to ``config``."""
    if value is None:
        raise BadEvent("input audio transcription cannot be turned off in a transcription session")
    options = _mapping(value, "transcription")
    known = {"model", "language", "prompt", "delay", "keywords", "languages"}
    _check_keys(options, known, "transcription")
    for name in ("delay", "keywords", "languages"):
        _unserved(options.get(name), f"transcription.{name}")
    model, language, prompt = (
        options.get(k, getattr(config, k)) for k in ("model", "language", "prompt")
    )
    if not isinstance(model, str) or not model.strip():
        raise BadEvent("transcription.model must be a non-empty string")
    if language is not None and not isinstance(language, str):
        raise BadEvent("transcription.language must be a string (ISO-639-1, e.g. 'en')")
    if not isinstance(prompt, str):
        raise BadEvent("transcription.prompt must be a string")
    return replace(
        config,
        model=model.strip(),
        language=(language or "").strip().lower() or None,
        prompt=prompt,
    )


def read_turn_detection(value: object) -> ServerVad | None:
    """``turn_detection``: server VAD with its parameters, or None (manual commit)."""
    if value is None:
        return None
    options = _mapping(value, "turn_detection")
    kind = options.get("type", "server_vad")
    if kind != "server_vad":
        raise FeatureUnavailable(f"turn_detection type {kind!r} is not served: use server_vad")
    known = {"type", "threshold", "prefix_padding_ms", "silence_duration_ms"}
    responses = {"create_response", "interrupt_response", "idle_timeout_ms"}
    _check_keys(options, known | responses, "turn_detection")
    for name in sorted(responses):
        _unserved(options.get(name), f"turn_detection.{name}")  # no responses here
    vad = ServerVad()
    threshold = options.get("threshold", vad.threshold)
    if not isinstance(threshold, int | float) or not 0.0 < threshold < 1.0:
        raise BadEvent(f"turn_detection.threshold must be between 0 and 1, got {threshold!r}")
    timings: dict[str, int] = {}
    for name in ("prefix_padding_ms", "silence_duration_ms"):
        ms = options.get(name, getattr(vad, name))
        if not isinstance(ms, int) or isinstance(ms, bool) or not 0 <= ms <= 10_000:
            raise BadEvent(f"turn_detection.{name} must be 0-10000 ms, got {ms!r}")
        timings[name] = ms
    return ServerVad(float(threshold), **timings)


def _input_options(session: dict[str, Any]) -> dict[str, object]:
    """The input settings of either spelling, keyed by their GA names."""
    session_keys = {"type", "id", "object", "include", "modalities"}
    if "audio" in session:
        _check_keys(session, session_keys | {"audio"}, "session")
        audio = _mapping(session["audio"], "session.audio")
        _check_keys(audio, {"input", "output"}, "session.audio")
        _unserved(audio.get("output"), "session.audio.output")
        inputs = _mapping(audio.get("input", {}), "session.audio.input")
        fields = {"format", "transcription", "turn_detection", "noise_reduction"}
        _check_keys(inputs, fields, "session.audio.input")
        return dict(inputs)
    beta = {
        "input_audio_format": "format",
        "input_audio_transcription": "transcription",
        "turn_detection": "turn_detection",
        "input_audio_noise_reduction": "noise_reduction",
    }
    _check_keys(session, session_keys | set(beta), "session")
    return {beta[key]: value for key, value in session.items() if key in beta}


def read_update(event: dict[str, Any], config: TranscriptionConfig) -> TranscriptionConfig:
    """``config`` with what a ``session.update`` / ``transcription_session.update`` sets."""
    session = _mapping(event.get("session"), f"{event['type']} 'session'")
    kind = session.get("type", "transcription")
    if kind != "transcription":
        raise FeatureUnavailable(
            f"session type {kind!r} is not served: /v1/realtime transcribes (type 'transcription')"
        )
    _unserved(session.get("include"), "session.include")
    _unserved([m for m in session.get("modalities") or [] if m != "text"], "session.modalities")
    options = _input_options(session)
    _unserved(options.get("noise_reduction"), "noise_reduction")
    if "format" in options:
        config = replace(config, sample_rate=read_format(options["format"]))
    if "transcription" in options:
        config = read_transcription(options["transcription"], config)
    if "turn_detection" in options:
        config = replace(config, turn_detection=read_turn_detection(options["turn_detection"]))
    return config


def check_locked(current: TranscriptionConfig, wanted: TranscriptionConfig) -> None:
    """Refuse to change what the engine was started with once audio has been appended."""
    if current.engine_fields() != wanted.engine_fields():
        raise BadEvent(
            "the input format, transcription settings and turn_detection are fixed once audio "
            "has been appended; open a new session to change them"
        )


# ---------------------------------------------------------------------- shown back


def _turn_detection(vad: ServerVad | None) -> dict[str, Any] | None:
    if vad is None:
        return None
    return {
        "type": "server_vad",
        "threshold": vad.threshold,
        "prefix_padding_ms": vad.prefix_padding_ms,
        "silence_duration_ms": vad.silence_duration_ms,
    }


def session_object(config: TranscriptionConfig, session_id: str, *, beta: bool) -> dict[str, Any]:
    """The session as ``session.created`` / ``.updated`` show it, in the client's spelling."""
    transcription = {"model": config.model, "language": config.language, "prompt": config.prompt}
    fmt: dict[str, Any] = {"type": "audio/pcm", "rate": config.sample_rate}
    common = {"id": f"sess_{session_id}", "object": "realtime.transcription_session"}
    if beta:
        return {
            **common,
            "input_audio_format": "pcm16" if config.sample_rate == 24000 else fmt,
            "input_audio_transcription": transcription,
            "turn_detection": _turn_detection(config.turn_detection),
            "input_audio_noise_reduction": None,
            "include": None,
            "modalities": ["text"],
        }
    audio_input = {
        "format": fmt,
        "transcription": transcription,
        "turn_detection": _turn_detection(config.turn_detection),
        "noise_reduction": None,
    }
    return {**common, "type": "transcription", "audio": {"input": audio_input}, "include": None}
