"""Benchmark runs of the live mesh, one at a time, in the background of a gateway replica.

:meth:`BenchmarkRunner.start` checks that no run is under way (the lock of the
:mod:`run store <gateway.benchmark_store>`: mesh-wide with Redis), records the run as
``queued`` and starts it; the caller gets the id at once. ``clients`` concurrent
clients each stream the first ``clips`` bundled clips (``kind`` ``stt`` or ``both``)
and speak the fixed :data:`TTS_SENTENCES` (``tts`` or ``both``), each request measured
by :mod:`gateway.benchmark_measure`. After each request the run is rewritten with its
row and progress and a ``benchmark_progress`` event goes out on the status feed; at
the end a ``benchmark_completed``.

While it runs, the runner beats: the run's ``heartbeat_at`` and the lock's expiry are
pushed forward every few seconds, so that a run whose gateway died is read as
``failed`` (``runner_stopped``) once ``benchmark_stale_s`` has passed, and the lock
lapses with it. A run past ``benchmark_max_run_s`` is stopped and ``failed`` too.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from typing import Any

from gateway.benchmark_measure import stream_clip, summarize, synthesize_sentence
from gateway.benchmark_store import (
    BenchmarkKind,
    BenchmarkRun,
    MemoryRunStore,
    RedisRunStore,
    RunStore,
)
from gateway.keys import Principal
from gateway.state import GatewayState
from voicemesh.assets.speech_clips import SpeechClip, bundled_clips
from voicemesh.errors import BenchmarkNotFound, BenchmarkRunning, RegistryUnavailable
from voicemesh.tasks import stop_task

_LOGGER = logging.getLogger(__name__)

TTS_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Speech in, text out, and back again, with no one waiting.",
)
"""What the TTS part speaks, each client every sentence."""
MAX_CLIENTS = 4
"""Concurrent clients a run may have."""
SESSION_OVERHEAD_S = 1.5
"""Expected time of one request beyond its audio (for ``estimated_s``)."""


def new_run_id() -> str:
    """A short random id for one run."""
    return "bm_" + uuid.uuid4().hex[:12]


def estimate_s(kind: BenchmarkKind, clips: list[SpeechClip], real_time: bool) -> float:
    """How long a run should take (its clients run side by side)."""
    total = 0.0
    if kind != "tts":
        audio = sum(c.duration_s for c in clips)
        total += (audio if real_time else audio / 4) + SESSION_OVERHEAD_S * len(clips)
    if kind != "stt":
        total += SESSION_OVERHEAD_S * len(TTS_SENTENCES)
    return round(total, 1)


def store_for(state: GatewayState) -> RunStore:
    """Redis under the registry's prefix when the gateway has Redis, else memory."""
    settings = state.settings
    client = state.view.client
    if client is None:
        return MemoryRunStore(settings.benchmark_keep_runs, settings.benchmark_ttl_s)
    return RedisRunStore(
        client.redis_url,
        prefix=client.prefix,
        keep=settings.benchmark_keep_runs,
        ttl_s=settings.benchmark_ttl_s,
    )


class BenchmarkRunner:
    """Starts runs and keeps the one under way going (one per replica, one per mesh)."""

    def __init__(self, state: GatewayState, store: RunStore | None = None) -> None:
        self.state = state
        self.settings = state.settings
        self.store = store or store_for(state)
        self.beat_s = min(5.0, self.settings.benchmark_stale_s / 4)
        self.current: BenchmarkRun | None = None
        self._task: asyncio.Task[None] | None = None
        self._save_lock = asyncio.Lock()

    # ------------------------------------------------------------ reading

    def _seen(self, run: BenchmarkRun) -> BenchmarkRun:
        return run.as_seen(time.time(), self.settings.benchmark_stale_s)

    async def get(self, run_id: str) -> BenchmarkRun:
        """The run with this id as a reader sees it; BenchmarkNotFound when there is none."""
        run = await self.store.get(run_id)
        if run is None:
            raise BenchmarkNotFound(
                f"no benchmark run {run_id!r} (runs are kept "
                f"{self.settings.benchmark_ttl_s / 86400:g} days, the last "
                f"{self.settings.benchmark_keep_runs})"
            )
        return self._seen(run)

    async def recent(self) -> list[BenchmarkRun]:
        """The kept runs, newest first."""
        return [self._seen(run) for run in await self.store.recent()]

    # ------------------------------------------------------------ starting

    async def start(
        self,
        principal: Principal,
        *,
        kind: BenchmarkKind,
        clients: int,
        clips: int,
        real_time: bool,
    ) -> BenchmarkRun:
        """Record a new run and start it; BenchmarkRunning while another is under way."""
        if self.current is not None:
            raise await self._running(self.current.id)
        chosen = list(bundled_clips()[:clips])
        now = time.time()
        run = BenchmarkRun(
            id=new_run_id(),
            kind=kind,
            clients=clients,
            clips=clips,
            real_time=real_time,
            gateway=self.settings.instance_id,
            started_at=now,
            heartbeat_at=now,
            estimated_s=estimate_s(kind, chosen, real_time),
        )
        holder = await self.store.acquire(run.id, self.settings.benchmark_stale_s)
        if holder is not None:
            raise await self._running(holder)
        run.progress.total = clients * (
            (len(chosen) if kind != "tts" else 0) + (len(TTS_SENTENCES) if kind != "stt" else 0)
        )
        self.current = run
        try:
            await self._save(run)
        except RegistryUnavailable:
            self.current = None
            raise
        self._task = asyncio.create_task(
            self._run(run, principal, chosen), name=f"benchmark-{run.id}"
        )
        _LOGGER.info(
            "benchmark %s started by %s: %s, %d client(s), %d clip(s)%s",
            run.id,
            principal.key_id,
            kind,
            clients,
            clips,
            "" if real_time else ", as fast as possible",
        )
        return run

    async def _running(self, run_id: str) -> BenchmarkRunning:
        run = await self.store.get(run_id)
        left = 1.0 if run is None else run.started_at + run.estimated_s - time.time()
        return BenchmarkRunning(
            f"benchmark run {run_id} is under way; one run at a time",
            run_id=run_id,
            retry_after=max(1, math.ceil(left)),
        )

    # ------------------------------------------------------------ running

    async def _save(self, run: BenchmarkRun) -> None:
        async with self._save_lock:  # one write at a time: a later state never goes first
            await self.store.save(run)

    async def _beat(self, run: BenchmarkRun) -> None:
        while True:
            await asyncio.sleep(self.beat_s)
            run.heartbeat_at = time.time()
            try:
                await self.store.renew(run.id, self.settings.benchmark_stale_s)
                await self._save(run)
            except RegistryUnavailable as exc:
                _LOGGER.warning("benchmark %s: heartbeat not stored: %s", run.id, exc.message)

    async def _record(self, run: BenchmarkRun, part: str, row: dict[str, Any]) -> None:
        """One request done: its row, the progress, an event."""
        getattr(run, part).append(row)
        if row["error"] is not None:
            where: dict[str, Any] = {k: row[k] for k in ("clip", "sentence", "client") if k in row}
            run.errors.append({"request": part, **where, **row["error"]})
        run.progress.done += 1
        run.heartbeat_at = time.time()
        self.state.events.publish(
            "benchmark_progress",
            id=run.id,
            done=run.progress.done,
            total=run.progress.total,
            request=part,
            ok=row["error"] is None,
        )
        try:
            await self._save(run)
        except RegistryUnavailable as exc:
            _LOGGER.warning("benchmark %s: progress not stored: %s", run.id, exc.message)

    async def _client(
        self, run: BenchmarkRun, principal: Principal, index: int, clips: list[SpeechClip]
    ) -> None:
        if run.kind != "tts":
            for clip in clips:
                row = await stream_clip(self.state, principal, clip, index, run.real_time)
                await self._record(run, "stt", row)
        if run.kind != "stt":
            for sentence in TTS_SENTENCES:
                await self._record(
                    run, "tts", await synthesize_sentence(self.state, sentence, index)
                )

    async def _run(self, run: BenchmarkRun, principal: Principal, clips: list[SpeechClip]) -> None:
        beat = asyncio.create_task(self._beat(run))
        run.status = "running"
        try:
            await self._save(run)
            self.state.events.publish(
                "benchmark_progress", id=run.id, done=0, total=run.progress.total, request=None
            )
            async with asyncio.timeout(self.settings.benchmark_max_run_s):
                await asyncio.gather(
                    *(self._client(run, principal, i, clips) for i in range(run.clients))
                )
            run.status = "completed"
        except TimeoutError:
            run.status = "failed"
            run.error = {
                "code": "runner_stopped",
                "message": f"stopped after benchmark_max_run_s "
                f"({self.settings.benchmark_max_run_s:g} s)",
            }
        except asyncio.CancelledError:
            run.status = "failed"
            run.error = {"code": "runner_stopped", "message": "runner stopped: the gateway stopped"}
            raise
        except Exception as exc:
            _LOGGER.exception("benchmark %s failed", run.id)
            run.status = "failed"
            run.error = {"code": "internal_error", "message": f"the run failed: {exc!r}"}
        finally:
            await stop_task(beat)
            await self._finish(run)

    async def _finish(self, run: BenchmarkRun) -> None:
        run.finished_at = time.time()
        run.heartbeat_at = run.finished_at
        run.summary = summarize(run.stt, run.tts)
        try:
            await self._save(run)
            await self.store.release(run.id)
        except RegistryUnavailable as exc:
            _LOGGER.error("benchmark %s: result not stored: %s", run.id, exc.message)
        self.current = None
        self.state.events.publish(
            "benchmark_completed", id=run.id, status=run.status, summary=run.summary
        )
        _LOGGER.info("benchmark %s %s: %s", run.id, run.status, run.summary)

    async def stop(self) -> None:
        """Stop the run under way (it is recorded ``failed``) and close the store."""
        await stop_task(self._task)
        await self.store.close()
