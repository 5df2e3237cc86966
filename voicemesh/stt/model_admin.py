"""Unloading and loading an STT replica's model while it runs (the gateway's admin calls
these through the routes of :mod:`voicemesh.stt.service`).

* ``POST /v1/model/unload`` ``{"force": false}``: drops the engine so its memory is
  freed. Open sessions refuse it (409 ``model_in_use`` naming how many) unless
  ``force``, which ends each with a fatal ``model_unloaded`` error (close 1013) so the
  gateway moves it to another replica.
* ``POST /v1/model/load`` ``{}``: loads the configured model again in the background
  (202, status ``loading``, then ``loaded``, or ``failed`` with the error).

While the model is not loaded, new sessions get ``model_unloaded`` before any audio
and file transcriptions a 503 ``model_unloaded``: the gateway fails both over. Every
change is published to the registry at once (``AsrModel.status``), and ``/health``
shows it. Like the replica's other routes these have no key of their own: replicas
sit on the internal network, behind the gateway, which holds the admin key.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

import numpy as np

from voicemesh.errors import ModelInUse
from voicemesh.protocol import SAMPLE_RATE
from voicemesh.stt.state import SttState
from voicemesh.stt.types import Transcriber

_LOGGER = logging.getLogger(__name__)


def warm_up(transcriber: Transcriber) -> None:
    """Run one decode so the first real request does not pay for lazy init."""
    silence = np.zeros(SAMPLE_RATE, dtype=np.float32)  # one second
    try:
        transcriber.transcribe(silence, language="en")
    except Exception:
        _LOGGER.exception("warm-up decode failed")


def model_answer(state: SttState, previous: str, **extra: Any) -> dict[str, Any]:
    """What both routes answer: the replica, its model, the status before and now."""
    return {
        "instance_id": state.settings.instance_id,
        "model": state.settings.model,
        "status": state.model_status,
        "previous": previous,
        "error": state.model_error,
        **extra,
    }


async def publish(state: SttState) -> None:
    """Write the replica's entry now, so the gateways route by the new status at once."""
    if state.heartbeat is not None:
        await state.heartbeat.beat_now()


async def unload_model(state: SttState, *, force: bool) -> dict[str, Any]:
    """Drop the engine (refused with open sessions unless ``force``, which ends them)."""
    previous = state.model_status
    if previous == "loading":
        raise ModelInUse(
            f"model {state.settings.model!r} is loading on {state.settings.instance_id}; "
            "unload it once it is loaded"
        )
    if previous != "loaded":
        return model_answer(state, previous, sessions_ended=0)
    open_sessions = len(state.sessions)
    if open_sessions and not force:
        raise ModelInUse(
            f"{open_sessions} open session(s) on {state.settings.instance_id} use model "
            f"{state.settings.model!r}; send force=true to end them (they move to another "
            "replica) or try again when they are over"
        )
    state.set_engine(None, "unloaded")  # first, so no new session or decode takes it
    enders = list(state.enders.values())
    await asyncio.gather(*(end() for end in enders), return_exceptions=True)
    # Drop the last references now so the model's memory goes back at once.
    await asyncio.to_thread(gc.collect)
    await publish(state)
    _LOGGER.info(
        "%s: model %s unloaded (%d session(s) ended)",
        state.settings.instance_id,
        state.settings.model,
        len(enders),
    )
    return model_answer(state, previous, sessions_ended=len(enders))


async def _load_in_background(state: SttState) -> None:
    """Load the model, warm it up, and say loaded or failed (with the error)."""
    assert state.loader is not None
    started = time.perf_counter()
    try:
        engine = await asyncio.to_thread(state.loader)
        await asyncio.to_thread(warm_up, engine)
    except Exception as exc:
        state.model_status = "failed"
        state.model_error = f"{type(exc).__name__}: {exc}"
        _LOGGER.exception("%s: loading %s failed", state.settings.instance_id, state.settings.model)
    else:
        state.model_load_ms = round((time.perf_counter() - started) * 1000, 1)
        state.set_engine(engine, "loaded")
        _LOGGER.info(
            "%s: model %s loaded in %.0f ms",
            state.settings.instance_id,
            state.settings.model,
            state.model_load_ms,
        )
    await publish(state)


async def load_model(state: SttState) -> tuple[dict[str, Any], int]:
    """Start loading the model in the background (202), or say it is loaded / loading."""
    previous = state.model_status
    if previous in ("loaded", "loading"):
        return model_answer(state, previous), 200
    state.model_status = "loading"
    state.model_error = None
    await publish(state)
    state.load_task = asyncio.create_task(
        _load_in_background(state), name=f"load-{state.settings.model}"
    )
    return model_answer(state, previous), 202
