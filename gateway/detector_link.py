"""The speech-detector end of a gateway stream: audio out, VAD events back to the client.

Each session opens ``WS /ws/detect`` on the first detector replica that answers and
sends it the same 16 kHz PCM16 as the STT backend. The detector's ``speech_start`` and
``speech_end`` go to the client as ``vad`` messages (``source: detector``) and to the
session's :class:`~gateway.stt_backend.StallWatch`. A confirmed ``speech_end`` arms a
backstop: if the engine has not finalized that speech within the grace time, the
session flushes it. Without a detector (none registered, or it went away) the engine's
own VAD endpoints alone end utterances.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

import websockets
from websockets.asyncio.client import ClientConnection

from gateway.registry_view import RegistryView
from gateway.routing import choose_detector
from gateway.session_client import SessionClient
from gateway.state import GatewayState
from gateway.stt_backend import StallWatch, shift_times, ws_url
from voicemesh.errors import EngineUnavailable, backend_errors
from voicemesh.protocol import VadMessage
from voicemesh.registry import ReplicaInfo
from voicemesh.tasks import within

_LOGGER = logging.getLogger(__name__)


def detector_wanted(state: GatewayState, backend: ReplicaInfo, session_id: str) -> bool:
    """Whether a new session gets the detector beside its STT backend.

    Not when the detector is off, nor when the backend's decode workers are already
    busier than ``detector_max_utilization``: on a loaded host the detector's second
    VAD and model per session take the cores decoding needs, and the engine's own VAD
    endpoints the session. Such a shed is logged and counted.
    """
    settings = state.settings
    if not settings.use_detector:
        return False
    utilization = backend.load.utilization
    if utilization is None or utilization <= settings.detector_max_utilization:
        return True
    _LOGGER.info(
        "session %s runs without the detector: %s's workers are %.0f%% busy (limit %.0f%%)",
        session_id,
        backend.url,
        100 * utilization,
        100 * settings.detector_max_utilization,
    )
    state.metrics.count("shed", "detector")
    return False


async def open_detector(
    view: RegistryView, connect_timeout_s: float, session_id: str
) -> ClientConnection | None:
    """A WebSocket to the first speech detector that answers (None: engine VAD alone)."""
    for replica in choose_detector(view.snapshot()):
        url = ws_url(replica.url, "/ws/detect")
        try:
            with backend_errors(url, doing="connect to"):
                return await within(
                    connect_timeout_s,
                    websockets.connect(
                        url,
                        additional_headers=view.engine_headers,
                        max_size=None,
                        compression=None,
                    ),
                )
        except EngineUnavailable as exc:
            _LOGGER.warning(
                "session %s: detector %s unavailable: %s", session_id, replica.url, exc.message
            )
            view.mark_failed(replica)
    return None


class DetectorLink:
    """One session's detector connection: feeds it audio, relays its events, arms backstops."""

    def __init__(
        self,
        client: SessionClient,
        stall: StallWatch,
        *,
        session_id: str,
        grace_s: float,
        backstop: Callable[[float], Awaitable[None]],
    ) -> None:
        self.client = client
        self.stall = stall
        self.session_id = session_id
        self.grace_s = grace_s
        self.backstop = backstop
        """Called ``grace_s`` after a confirmed speech end, with its stream time."""
        self.ws: ClientConnection | None = None
        self.offset = 0.0
        """Added to the detector's times (a resumed session's clock starts past 0)."""
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self, view: RegistryView, connect_timeout_s: float) -> None:
        """Connect to a detector; the session goes on without one if none answers."""
        self.ws = await open_detector(view, connect_timeout_s, self.session_id)

    async def send(self, pcm: bytes) -> None:
        """Give the detector the session's audio; a detector that went away is dropped."""
        if self.ws is None:
            return
        try:
            await self.ws.send(pcm)
        except websockets.ConnectionClosed:
            _LOGGER.warning(
                "session %s: detector went away; engine VAD endpoints alone", self.session_id
            )
            self.ws = None

    async def relay(self) -> None:
        """Until the detector closes: its VAD events to the client and the stall watch."""
        detector = self.ws
        if detector is None:
            return
        try:
            async for raw in detector:
                message = shift_times(json.loads(raw), self.offset)
                kind = message.get("type")
                self.stall.track_detector(message)
                if kind == "speech_start":
                    await self.client.send(
                        VadMessage(event="speech_start", t=message["t"], source="detector")
                    )
                elif kind == "speech_end":
                    await self.client.send(
                        VadMessage(
                            event="speech_end",
                            t=message["t"],
                            source="detector",
                            confirmed=message.get("confirmed"),
                            text=message.get("text"),
                        )
                    )
                    if message.get("confirmed"):
                        self._arm_backstop(float(message["t"]))
        except websockets.ConnectionClosed:
            _LOGGER.warning(
                "session %s: detector closed; engine VAD endpoints alone", self.session_id
            )
        self.ws = None

    def _arm_backstop(self, speech_end: float) -> None:
        async def after_grace() -> None:
            await asyncio.sleep(self.grace_s)
            await self.backstop(speech_end)

        task = asyncio.create_task(after_grace())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Cancel pending backstops and close the connection."""
        for task in list(self._tasks):
            task.cancel()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
