"""The embedded runner (up, status, down, supervisor) with a tiny probe service on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from voicemesh.cli import mesh as cli
from voicemesh.mesh.health import redis_answers
from voicemesh.mesh.plan import ProcessPlan, free_port, port_is_free
from voicemesh.mesh.state import pid_alive
from voicemesh.mesh.supervisor import BACKOFF_FIRST_S, BACKOFF_RESET_AFTER_S, ChildProcess
from voicemesh.services import ServiceSpec

pytestmark = pytest.mark.service

HERE = Path(__file__).resolve().parent


def probe_spec(
    name: str = "probe", *, factory: str = "probe_app:create_app", scalable: bool = True
) -> ServiceSpec:
    """A service entry for the probe app on a free port."""
    return ServiceSpec(name, factory, f"VOICEMESH_{name.upper()}_", free_port(), scalable=scalable)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll until ``predicate`` holds or fail with ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if (text in cmdline or text in environ) and pid_alive(int(entry.name)):
            found.append(f"{entry.name}: {cmdline}")
    return found


def get_json(url: str) -> dict:
    """GET a loopback URL, bypassing any proxy settings."""
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        response = client.get(url)
        response.raise_for_status()
        return response.json()


def read_state(home: Path) -> dict:
    """state.json as a dict."""
    return json.loads((home / "run" / "state.json").read_text())


@pytest.fixture
def mesh_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temp VOICEMESH_HOME; makes the probe importable; stops whatever a test leaves."""
    home = tmp_path / "home"
    monkeypatch.setenv("VOICEMESH_HOME", str(home))
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    )
    yield home
    cli.cmd_down(timeout=10)
    if Path("/proc/self").exists():
        assert processes_mentioning(str(home)) == []


def test_up_status_restart_scale_and_down(
    mesh_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = probe_spec()
    redis_port = free_port()
    rc = cli.cmd_up(
        host="127.0.0.1",
        port=free_port(),
        redis_url=None,
        scale={"probe": 2},
        no_gpu=True,
        foreground=False,
        timeout=30,
        services=[spec],
        redis_port=redis_port,
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "probe-1" in out and "probe-2" in out and "ready in" in out
    assert f"redis://127.0.0.1:{redis_port}/0" in out

    state = read_state(mesh_home)
    supervisor_pid = state["supervisor_pid"]
    replicas = state["services"]
    assert [(r["name"], r["replica"]) for r in replicas] == [("probe", 1), ("probe", 2)]
    assert replicas[0]["port"] == spec.default_port
    assert replicas[0]["port"] != replicas[1]["port"]
    assert (mesh_home / "logs" / "probe-1.log").is_file()
    assert (mesh_home / "logs" / "probe-2.log").is_file()
    for replica in replicas:
        info = get_json(f"{replica['url']}/pid")
        assert info["pid"] == replica["pid"]
        assert info["env"]["VOICEMESH_PROBE_PORT"] == str(replica["port"])
        assert info["env"]["VOICEMESH_PROBE_HOST"] == "127.0.0.1"
        assert info["env"]["VOICEMESH_REDIS_URL"] == f"redis://127.0.0.1:{redis_port}/0"
        assert info["env"]["VOICEMESH_HOME"] == str(mesh_home.resolve())
        assert info["env"]["PYTHONUNBUFFERED"] == "1"
        # Engines accept only the gateway: every process reads the mesh's own token file.
        token_file = mesh_home.resolve() / "secrets" / "internal-token"
        assert info["env"]["VOICEMESH_INTERNAL_TOKEN_FILE"] == str(token_file)
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert "engines accept only the gateway" in out
    assert token_file.read_text().strip() not in out
    redis_pid = state["redis"]["pid"]
    assert redis_answers(state["redis_url"])

    assert cli.cmd_status() == 0
    out = capsys.readouterr().out
    assert out.count(" ok ") == 3, out  # redis and both replicas
    assert str(mesh_home.resolve() / "logs") in out

    # A second up finds the running mesh and changes nothing.
    assert (
        cli.cmd_up(
            host="127.0.0.1",
            port=free_port(),
            redis_url=None,
            scale={},
            no_gpu=True,
            foreground=False,
            timeout=30,
            services=[spec],
            redis_port=redis_port,
        )
        == 0
    )
    assert "already running" in capsys.readouterr().out
    assert read_state(mesh_home)["supervisor_pid"] == supervisor_pid

    # A replica that dies is restarted by the supervisor.
    victim = replicas[1]
    os.kill(victim["pid"], signal.SIGKILL)

    def restarted() -> bool:
        current = read_state(mesh_home)["services"][1]
        return current["pid"] not in (None, victim["pid"]) and current["restarts"] == 1

    wait_until(restarted, 10, "the killed replica to be restarted")
    new = read_state(mesh_home)["services"][1]
    wait_until(lambda: cli.cmd_status() == 0, 10, "status healthy again")
    assert get_json(f"{new['url']}/pid")["pid"] == new["pid"]
    assert new["port"] == victim["port"]
    out = capsys.readouterr().out
    assert "probe" in out
    assert read_state(mesh_home)["services"][0]["restarts"] == 0

    all_pids = [supervisor_pid, redis_pid, replicas[0]["pid"], new["pid"]]
    assert cli.cmd_down(timeout=15) == 0
    out = capsys.readouterr().out
    assert f"stopped supervisor (pid {supervisor_pid})" in out
    wait_until(lambda: not any(pid_alive(pid) for pid in all_pids), 5, "every pid gone")
    assert not (mesh_home / "run" / "state.json").exists()

    assert cli.cmd_status() == 3
    assert "not running" in capsys.readouterr().out
    assert cli.cmd_down(timeout=5) == 0
    assert "not running" in capsys.readouterr().out


def test_up_fails_and_cleans_up_when_a_service_cannot_start(
    mesh_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = probe_spec("probe")
    bad = probe_spec("broken", factory="probe_app:create_failing_app")
    started = time.monotonic()
    rc = cli.cmd_up(
        host="127.0.0.1",
        port=free_port(),
        redis_url=None,
        scale={},
        no_gpu=True,
        foreground=False,
        timeout=25,
        services=[good, bad],
        redis_port=free_port(),
    )
    captured = capsys.readouterr()
    assert rc == 1
    assert time.monotonic() - started < 20  # gives up on repeated crashes before the timeout
    assert "broken exited 3 times" in captured.err
    assert "probe refuses to start: model file missing" in captured.err  # the log tail
    assert not (mesh_home / "run" / "state.json").exists()
    assert port_is_free("127.0.0.1", good.default_port)
    assert cli.cmd_status() == 3


def test_foreground_stops_everything_on_sigint(
    mesh_home: Path, redis_server, tmp_path: Path
) -> None:
    spec = probe_spec()
    script = textwrap.dedent(f"""
        import sys
        from voicemesh.cli.mesh import cmd_up
        from voicemesh.services import ServiceSpec
        spec = ServiceSpec("probe", "probe_app:create_app", "VOICEMESH_PROBE_", {spec.default_port})
        sys.exit(cmd_up(host="127.0.0.1", port={free_port()},
                        redis_url={redis_server.url!r}, scale={{}}, no_gpu=True,
                        foreground=True, timeout=20, services=[spec]))
    """)
    output = tmp_path / "foreground.out"
    with open(output, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", script], stdout=sink, stderr=subprocess.STDOUT, cwd=Path.cwd()
        )
    try:
        wait_until(lambda: "voicemesh is up" in output.read_text(), 20, "foreground up")
        state = read_state(mesh_home)
        assert state["supervisor_pid"] == process.pid
        assert state["redis"] is None  # an external Redis is used, none is started
        replica = state["services"][0]
        info = get_json(f"{replica['url']}/pid")
        assert info["env"]["VOICEMESH_REDIS_URL"] == redis_server.url
        assert cli.cmd_status() == 0

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
        assert not pid_alive(replica["pid"])
        assert not (mesh_home / "run" / "state.json").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_scale_errors_exit_2_and_start_nothing(
    mesh_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    specs = [probe_spec(), probe_spec("front", scalable=False)]

    def up(scale: dict[str, int]) -> int:
        return cli.cmd_up(
            host="127.0.0.1",
            port=free_port(),
            redis_url=None,
            scale=scale,
            no_gpu=True,
            foreground=False,
            timeout=5,
            services=specs,
            redis_port=free_port(),
        )

    assert up({"nope": 2}) == 2
    assert "unknown service 'nope'" in capsys.readouterr().err
    assert up({"front": 2}) == 2
    assert "front cannot be scaled" in capsys.readouterr().err
    assert up({"probe": 0, "front": 0}) == 2
    assert "nothing to start" in capsys.readouterr().err
    assert not (mesh_home / "run").exists()


def test_restart_backoff_doubles_to_the_cap_and_resets_after_a_long_run(tmp_path: Path) -> None:
    plan = ProcessPlan(
        name="blip",
        argv=[sys.executable, "-c", "pass"],
        host="127.0.0.1",
        port=1,
        url="http://127.0.0.1:1",
        log=str(tmp_path / "blip.log"),
    )
    child = ChildProcess(plan, str(tmp_path))
    delays = []
    for _ in range(7):
        child.launch(fresh_log=False)
        assert child.process is not None
        child.process.wait(timeout=10)
        now = time.monotonic()
        assert child.check_exit(now)
        assert child.state().status == "backoff" and child.state().pid is None
        assert child.restart_due(now + 0.5 * (child.restart_at - now)) is False
        assert child.restart_due(child.restart_at)
        delays.append(round(child.restart_at - now))
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert child.exits == 7

    child.launch(fresh_log=False)
    assert child.process is not None
    child.process.wait(timeout=10)
    later = time.monotonic() + BACKOFF_RESET_AFTER_S + 1  # as if it ran for a minute
    assert child.check_exit(later)
    assert child.restart_at - later == pytest.approx(BACKOFF_FIRST_S)
    assert (tmp_path / "blip.log").read_text().count("starting blip") == 8


def test_a_process_that_cannot_be_spawned_counts_as_a_crash(tmp_path: Path) -> None:
    plan = ProcessPlan(
        name="ghost",
        argv=[str(tmp_path / "no-such-binary")],
        host="127.0.0.1",
        port=1,
        url="http://127.0.0.1:1",
        log=str(tmp_path / "ghost.log"),
    )
    child = ChildProcess(plan, str(tmp_path))
    child.launch(fresh_log=True)
    assert child.process is None
    assert child.exits == 1 and child.state().status == "backoff"
    assert "cannot start" in (tmp_path / "ghost.log").read_text()
