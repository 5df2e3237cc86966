"""The supervisor: runs a :class:`~voicemesh.mesh.plan.MeshPlan` until asked to stop.

It starts Redis and every service replica, restarts any that exits with
exponential backoff, records what runs in the state file, and on SIGTERM stops
the services first and Redis last. ``voicemesh up`` runs it as a detached
``voicemesh supervise`` process, or in its own process with ``--foreground``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from voicemesh.mesh.health import POLL_S, redis_answers
from voicemesh.mesh.plan import MeshPaths, MeshPlan, ProcessPlan
from voicemesh.mesh.state import (
    MeshState,
    ProcessState,
    remove_run_files,
    signal_group,
    write_atomic,
)

_LOGGER = logging.getLogger(__name__)

BACKOFF_FIRST_S = 1.0
"""Delay before the first restart of a process that exited."""
BACKOFF_MAX_S = 30.0
"""The restart delay doubles up to this."""
BACKOFF_RESET_AFTER_S = 60.0
"""A process that ran this long counts as healthy: its next restart waits the first delay again."""
REDIS_START_TIMEOUT_S = 15.0
"""How long services wait for the bundled Redis to answer before they start anyway."""


class ChildProcess:
    """One supervised process: its plan, its current Popen and its restart schedule."""

    def __init__(self, plan: ProcessPlan, cwd: str) -> None:
        self.plan = plan
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.exits = 0
        self.started_at: float | None = None
        self._started_mono = 0.0
        self.backoff_s = BACKOFF_FIRST_S
        self.restart_at: float | None = None

    def launch(self, *, fresh_log: bool) -> None:
        """Start the process with its log file as stdout and stderr."""
        log = Path(self.plan.log)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb" if fresh_log else "ab") as handle:
            banner = f"--- voicemesh: starting {self.plan.label} at {time.ctime()} ---\n"
            handle.write(banner.encode())
            handle.flush()
            self.started_at = time.time()
            self._started_mono = time.monotonic()
            self.restart_at = None
            try:
                self.process = subprocess.Popen(
                    self.plan.argv,
                    cwd=self.cwd,
                    env={**os.environ, **self.plan.env},
                    stdin=subprocess.DEVNULL,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                # Counted and retried like a crash, so one bad binary never ends the mesh.
                handle.write(f"voicemesh: cannot start {self.plan.argv[0]}: {exc}\n".encode())
                _LOGGER.error("cannot start %s: %s", self.plan.label, exc)
                self._schedule_restart(time.monotonic(), f"failed to start ({exc})")
                return
        _LOGGER.info("started %s (pid %d)", self.plan.label, self.process.pid)

    def check_exit(self, now: float) -> bool:
        """If the process has exited, schedule its restart; True when it just exited."""
        if self.process is None or self.process.poll() is None:
            return False
        code = self.process.returncode
        self.process = None
        self._schedule_restart(now, f"exited with {code}")
        return True

    def _schedule_restart(self, now: float, why: str) -> None:
        self.exits += 1
        if now - self._started_mono >= BACKOFF_RESET_AFTER_S:
            self.backoff_s = BACKOFF_FIRST_S
        self.restart_at = now + self.backoff_s
        _LOGGER.warning(
            "%s %s; restarting in %.0f s (log: %s)",
            self.plan.label,
            why,
            self.backoff_s,
            self.plan.log,
        )
        self.backoff_s = min(self.backoff_s * 2, BACKOFF_MAX_S)

    def restart_due(self, now: float) -> bool:
        """True when a scheduled restart should happen now."""
        return self.process is None and self.restart_at is not None and now >= self.restart_at

    def state(self) -> ProcessState:
        """This child as recorded in ``state.json``."""
        running = self.process is not None
        return ProcessState(
            name=self.plan.name,
            replica=self.plan.replica,
            kind=self.plan.kind,
            pid=self.process.pid if self.process is not None else None,
            host=self.plan.host,
            port=self.plan.port,
            url=self.plan.url,
            log=self.plan.log,
            wyoming=self.plan.wyoming,
            restarts=self.restarts,
            exits=self.exits,
            started_at=self.started_at,
            status="running" if running else ("backoff" if self.restart_at else "stopped"),
        )


class Supervisor:
    """Runs a :class:`MeshPlan`: starts, watches, restarts and finally stops every process."""

    def __init__(self, plan: MeshPlan, paths: MeshPaths) -> None:
        self.plan = plan
        self.paths = paths
        self.redis = ChildProcess(plan.redis, plan.cwd) if plan.redis else None
        self.services = [ChildProcess(item, plan.cwd) for item in plan.services]
        self.started_at = time.time()
        self._stop_requested = threading.Event()

    @property
    def stop_requested(self) -> bool:
        """True once a stop was asked for (signal or caller)."""
        return self._stop_requested.is_set()

    def request_stop(self) -> None:
        """Ask the loop to stop; safe from a signal handler."""
        self._stop_requested.set()

    def start(self) -> None:
        """Start Redis, wait for it to answer PING, then start every service."""
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        if self.redis is not None:
            self.paths.redis_data.mkdir(parents=True, exist_ok=True)
            self.redis.launch(fresh_log=True)
            self._write_state()
            self._wait_for_redis()
        for child in self.services:
            if self.stop_requested:
                break
            child.launch(fresh_log=True)
        self._write_state()

    def _wait_for_redis(self) -> None:
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline and not self.stop_requested:
            if redis_answers(self.plan.redis_url, timeout_s=0.5):
                _LOGGER.info("redis answers at %s", self.plan.redis_url)
                return
            assert self.redis is not None
            if self.redis.check_exit(time.monotonic()):
                self._write_state()
                return
            time.sleep(0.05)
        _LOGGER.warning(
            "redis did not answer within %.0f s; starting services anyway", REDIS_START_TIMEOUT_S
        )

    def tick(self) -> None:
        """Reap exited processes and restart the ones whose backoff is over."""
        now = time.monotonic()
        changed = False
        for child in self._children():
            changed |= child.check_exit(now)
            if child.restart_due(now) and not self.stop_requested:
                child.restarts += 1
                child.launch(fresh_log=False)
                changed = True
        if changed:
            self._write_state()

    def run(self) -> None:
        """Start, then watch until a stop is requested, then stop everything."""
        try:
            self.start()
            while not self.stop_requested:
                self.tick()
                self._stop_requested.wait(POLL_S)
        finally:
            self.stop()

    def watch(self) -> None:
        """Keep restarting what exits until a stop is requested (the caller stops after)."""
        while not self.stop_requested:
            self.tick()
            time.sleep(POLL_S)

    def stop(self) -> None:
        """SIGTERM the services, then Redis; SIGKILL what outlives the grace period."""
        self.request_stop()
        self._terminate(self.services)
        if self.redis is not None:
            self._terminate([self.redis])
        remove_run_files(self.paths)
        _LOGGER.info("mesh stopped")

    def _terminate(self, children: Sequence[ChildProcess]) -> None:
        running = [child for child in children if child.process is not None]
        for child in running:
            assert child.process is not None
            signal_group(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.plan.grace_s
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _LOGGER.warning(
                    "%s ignored SIGTERM for %.0f s; killing it", child.plan.label, self.plan.grace_s
                )
                signal_group(child.process.pid, signal.SIGKILL)
                child.process.wait()
            child.process = None
            child.restart_at = None

    def _children(self) -> list[ChildProcess]:
        return ([self.redis] if self.redis else []) + self.services

    def state(self) -> MeshState:
        """The state to record."""
        return MeshState(
            supervisor_pid=os.getpid(),
            started_at=self.started_at,
            home=self.plan.home,
            logs_dir=str(self.paths.logs),
            redis_url=self.plan.redis_url,
            redis=self.redis.state() if self.redis else None,
            services=[child.state() for child in self.services],
        )

    def _write_state(self) -> None:
        if self.stop_requested and not self.paths.state.exists():
            return
        write_atomic(self.paths.state, self.state().model_dump_json(indent=2))


@contextlib.contextmanager
def stop_on_signals(supervisor: Supervisor) -> Iterator[None]:
    """Route SIGTERM and SIGINT to ``supervisor.request_stop`` while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        _LOGGER.info("received %s; stopping the mesh", signal.Signals(signum).name)
        supervisor.request_stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def supervise(plan_path: str | Path) -> None:
    """Run the supervisor for the plan in ``plan_path`` until SIGTERM or SIGINT."""
    plan = MeshPlan.model_validate_json(Path(plan_path).read_text(encoding="utf-8"))
    supervisor = Supervisor(plan, MeshPaths(Path(plan.home)))
    with stop_on_signals(supervisor):
        supervisor.run()
