"""``voicemesh up``, ``status``, ``down`` and the hidden ``supervise``, as the user sees them.

The steps live in :mod:`voicemesh.mesh`; this module decides what is said about them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from voicemesh.errors import PlanError
from voicemesh.mesh.control import (
    StopReport,
    ensure_internal_token,
    spawn_supervisor,
    stop_mesh,
    stop_supervisor,
    write_nginx_conf,
    write_plan,
)
from voicemesh.mesh.health import HealthWait, check_mesh_health, wait_until_healthy
from voicemesh.mesh.plan import (
    BUNDLED_REDIS_PORT,
    GATEWAY,
    MeshPaths,
    MeshPlan,
    ProcessPlan,
    plan_mesh,
)
from voicemesh.mesh.state import MeshState, log_tail, pid_alive, read_state, running_state
from voicemesh.mesh.supervisor import Supervisor, stop_on_signals, supervise
from voicemesh.nginx import NginxSettings, UpstreamGateway
from voicemesh.services import SERVICES, ServiceSpec


def _say(text: str = "") -> None:
    print(text, flush=True)


def _complain(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _print_urls(state: MeshState) -> None:
    gateway = next((item for item in state.services if item.name == GATEWAY), None)
    front = next((item for item in state.services if item.kind == "nginx"), None)
    width = max([len(item.label) for item in state.processes()] + [10])
    if front is not None:
        _say(f"  {'front door':<{width}}  {front.url}  (nginx: control panel, /v1, /ws)")
    if gateway is not None:
        ws = gateway.url.replace("http://", "ws://", 1)
        _say(f"  {'gateway':<{width}}  {gateway.url}")
        _say(f"  {'streaming':<{width}}  {ws}/ws/transcribe")
        _say(f"  {'panel':<{width}}  {gateway.url}/")
        if gateway.wyoming:
            _say(f"  {'wyoming':<{width}}  {gateway.wyoming}  (Home Assistant: STT and TTS)")
    for item in state.services:
        if item.name != GATEWAY and item.kind != "nginx":
            _say(f"  {item.label:<{width}}  {item.url}")
    _say(f"  {'redis':<{width}}  {state.redis_url}")
    _say(f"Logs: {state.logs_dir}")


def _print_stop(report: StopReport, timeout: float) -> None:
    if report.supervisor == "killed" and timeout == 0:
        _say(f"killed supervisor (pid {report.supervisor_pid})")
    elif report.supervisor == "killed":
        _complain(
            f"supervisor (pid {report.supervisor_pid}) did not stop in {timeout:.0f} s; killing it"
        )
    elif report.supervisor == "stopped":
        _say(f"stopped supervisor (pid {report.supervisor_pid})")
    for label in report.stopped:
        _say(f"stopped {label}")
    for label in report.leftovers:
        _say(f"stopped {label}, which the supervisor left running")


def _ready_printer(plan: MeshPlan) -> Callable[[ProcessPlan, float], None]:
    """A progress callback that says which process is ready after how long."""
    width = max(len(item.label) for item in plan.processes())

    def on_ready(item: ProcessPlan, elapsed: float) -> None:
        _say(f"  {item.label:<{width}}  ready in {elapsed:5.1f} s  {item.url}")

    return on_ready


def _report_failure(outcome: HealthWait) -> None:
    _complain(f"voicemesh up: {outcome.reason}")
    if outcome.log:
        tail = log_tail(outcome.log)
        _complain(f"--- last lines of {outcome.log} ---")
        _complain(tail or "(the log is empty)")
        _complain("--- end of log ---")


def cmd_up(
    *,
    host: str,
    port: int,
    redis_url: str | None,
    scale: dict[str, int],
    no_gpu: bool,
    foreground: bool,
    timeout: float,
    services: Sequence[ServiceSpec] | None = None,
    redis_port: int = BUNDLED_REDIS_PORT,
    nginx: NginxSettings | None = None,
    gateway: UpstreamGateway | None = None,
) -> int:
    """Start the embedded mesh (or report the running one); 0 once every service is healthy.

    ``gateway`` gives the upload limit the front door follows (default: the
    ``VOICEMESH_GATEWAY_*`` environment).
    """
    paths = MeshPaths.from_settings()
    running = running_state(paths)
    if running is not None:
        _say(f"voicemesh is already running (supervisor pid {running.supervisor_pid}):")
        _print_urls(running)
        return 0
    if read_state(paths) is not None:
        _say("cleaning up what a previous run left behind")
        stop_mesh(paths, timeout=5.0)

    specs = list(SERVICES.values()) if services is None else list(services)
    try:
        plan, notes = plan_mesh(
            specs,
            paths=paths,
            host=host,
            port=port,
            redis_url=redis_url,
            scale=scale,
            no_gpu=no_gpu,
            redis_port=redis_port,
            nginx=nginx,
        )
        if plan.internal_token_file is not None:
            ensure_internal_token(Path(plan.internal_token_file))
        if nginx is not None:
            upstream = gateway or UpstreamGateway()
            write_nginx_conf(plan, paths, nginx, body_limit_bytes=upstream.body_limit_bytes)
    except (PlanError, OSError, ValueError) as exc:
        _complain(f"voicemesh up: {exc}")
        return 2
    for note in notes:
        _say(note)
    write_plan(plan, paths)
    count = len(plan.services)
    _say(
        f"starting voicemesh ({count} service process{'' if count == 1 else 'es'}"
        f"{', bundled redis' if plan.redis else ''}); logs in {paths.logs}"
    )
    where = plan.internal_token_file or "VOICEMESH_INTERNAL_TOKEN from your environment"
    _say(f"engines accept only the gateway (internal token: {where})")
    if foreground:
        return _up_foreground(plan, paths, timeout)
    return _up_detached(plan, paths, timeout)


def _up_detached(plan: MeshPlan, paths: MeshPaths, timeout: float) -> int:
    supervisor = spawn_supervisor(plan, paths)
    try:
        outcome = wait_until_healthy(
            plan, paths, timeout=timeout, on_ready=_ready_printer(plan), supervisor=supervisor
        )
    except KeyboardInterrupt:
        outcome = HealthWait(False, "interrupted")
    if not outcome.ok:
        _report_failure(outcome)
        _complain("stopping everything that was started")
        stop_supervisor(supervisor, paths, plan.grace_s + 5.0)
        return 1
    state = read_state(paths)
    assert state is not None
    _say(f"voicemesh is up (supervisor pid {state.supervisor_pid}):")
    _print_urls(state)
    _say("Stop it with: voicemesh down")
    return 0


def _up_foreground(plan: MeshPlan, paths: MeshPaths, timeout: float) -> int:
    supervisor = Supervisor(plan, paths)
    with stop_on_signals(supervisor):
        try:
            supervisor.start()
            outcome = wait_until_healthy(
                plan,
                paths,
                timeout=timeout,
                on_ready=_ready_printer(plan),
                tick=supervisor.tick,
                stopped=lambda: supervisor.stop_requested,
            )
            if not outcome.ok:
                if outcome.reason == "interrupted":
                    return 130
                _report_failure(outcome)
                return 1
            _say("voicemesh is up (foreground):")
            _print_urls(supervisor.state())
            _say("Ctrl-C stops it.")
            supervisor.watch()
            return 0
        finally:
            _say("stopping voicemesh")
            supervisor.stop()


def cmd_supervise(plan_path: str) -> int:
    """Run the supervisor for a plan until SIGTERM (the hidden ``voicemesh supervise``)."""
    supervise(plan_path)
    return 0


def cmd_status() -> int:
    """Print every process with its live health; 0 all healthy, 1 some not, 3 not running."""
    paths = MeshPaths.from_settings()
    state = running_state(paths)
    if state is None:
        stale = read_state(paths)
        if stale is not None:
            _say(
                f"(a stale state from supervisor pid {stale.supervisor_pid} remains; "
                "voicemesh down cleans it up)"
            )
        _say("voicemesh is not running; start it with: voicemesh up")
        return 3
    checked = check_mesh_health(state)
    rows = [("SERVICE", "REPLICA", "PID", "PORT", "HEALTH", "RESTARTS", "URL")]
    for item, status in zip(state.processes(), checked.health, strict=True):
        rows.append(
            (
                item.name,
                str(item.replica),
                str(item.pid or "-"),
                str(item.port),
                status,
                str(item.restarts),
                item.url,
            )
        )
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    uptime = int(time.time() - state.started_at)
    _say(f"voicemesh supervisor pid {state.supervisor_pid}, up {uptime // 60}m {uptime % 60}s")
    for row in rows:
        _say("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    external_ok = checked.external_redis_ok
    redis_note = "" if external_ok is None else f" (external, {'ok' if external_ok else 'down'})"
    _say(f"Redis: {state.redis_url}{redis_note}")
    _say(f"Logs: {state.logs_dir}")
    return 0 if checked.all_ok else 1


def cmd_down(timeout: float, *, force: bool = False) -> int:
    """Stop the mesh: SIGTERM the supervisor, then kill what is left; idempotent.

    ``force`` (``stop --force``) kills every process at once, with no graceful stop.
    """
    paths = MeshPaths.from_settings()
    state = read_state(paths)
    if state is None:
        _say("voicemesh is not running")
        return 0
    if not pid_alive(state.supervisor_pid):
        _say(f"the supervisor (pid {state.supervisor_pid}) is gone; cleaning up what it left")
    if force:
        _say(f"killing the mesh of supervisor pid {state.supervisor_pid} (--force)")
        timeout = 0.0
    _print_stop(stop_mesh(paths, timeout=timeout, grace_s=0.0 if force else 5.0), timeout)
    _say("voicemesh is stopped")
    return 0
