"""The Redis registry client against a real redis-server on loopback."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from voicemesh.errors import BadRequest, RegistryUnavailable
from voicemesh.registry import RegistryClient, RegistryHeartbeat, ReplicaInfo, ReplicaLoad

pytestmark = pytest.mark.service


def make_info(kind: str = "stt_cpu_ws", instance_id: str = "a", port: int = 9001) -> ReplicaInfo:
    """A replica description with distinct values in every field."""
    now = time.time()
    return ReplicaInfo(
        instance_id=instance_id,
        kind=kind,
        url=f"http://127.0.0.1:{port}",
        device="cpu",
        model="base.en",
        engine="faster-whisper",
        capabilities=["stream", "file"],
        load=ReplicaLoad(active_sessions=2, queue=1, rtf=0.25, max_sessions=8),
        started_at=now - 5,
        updated_at=now - 5,
    )


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout_s: float, step_s: float = 0.1
) -> None:
    """Poll an async predicate until it is true or fail the test."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(step_s)
    pytest.fail(f"condition not met within {timeout_s} s")


@pytest.fixture
async def client(redis_server) -> AsyncIterator[RegistryClient]:
    """A client with its own key prefix so tests never see each other's replicas."""
    registry = RegistryClient(redis_server.url, prefix=f"test-{uuid.uuid4().hex[:8]}", ttl_s=5.0)
    yield registry
    await registry.close()


async def test_register_then_snapshot_lists_the_replica(client: RegistryClient) -> None:
    info = make_info()
    before = time.time()
    await client.register(info)

    replicas = await client.snapshot()

    assert len(replicas) == 1
    got = replicas[0]
    assert got.model_dump(exclude={"updated_at"}) == info.model_dump(exclude={"updated_at"})
    assert got.updated_at >= before
    assert await client.snapshot("stt_cpu_ws") == replicas


async def test_snapshot_filters_by_kind(client: RegistryClient) -> None:
    await client.register(make_info("stt_cpu_ws", "cpu-1", 9001))
    await client.register(make_info("stt_cpu_ws", "cpu-2", 9002))
    await client.register(make_info("stt_gpu_ws", "gpu-1", 9003))
    await client.register(make_info("stt_cpu_ws_x", "other", 9004))

    cpu = await client.snapshot("stt_cpu_ws")
    gpu = await client.snapshot("stt_gpu_ws")
    everything = await client.snapshot()

    assert [r.instance_id for r in cpu] == ["cpu-1", "cpu-2"]
    assert [r.url for r in gpu] == ["http://127.0.0.1:9003"]
    assert sorted(r.instance_id for r in everything) == ["cpu-1", "cpu-2", "gpu-1", "other"]
    assert await client.snapshot("tts_vits") == []


async def test_deregister_removes_only_that_replica(client: RegistryClient) -> None:
    await client.register(make_info(instance_id="keep"))
    await client.register(make_info(instance_id="drop"))

    await client.deregister("stt_cpu_ws", "drop")

    assert [r.instance_id for r in await client.snapshot()] == ["keep"]


async def test_replica_expires_after_its_ttl(redis_server) -> None:
    registry = RegistryClient(redis_server.url, prefix=f"ttl-{uuid.uuid4().hex[:8]}", ttl_s=1.0)
    try:
        await registry.register(make_info())
        assert len(await registry.snapshot()) == 1
        await asyncio.sleep(1.3)
        assert await registry.snapshot() == []
    finally:
        await registry.close()


async def test_heartbeat_keeps_a_short_ttl_replica_alive_and_stop_deregisters(
    redis_server,
) -> None:
    registry = RegistryClient(redis_server.url, prefix=f"hb-{uuid.uuid4().hex[:8]}", ttl_s=1.0)
    sessions = iter(range(100))

    def current() -> ReplicaInfo:
        info = make_info()
        info.load.active_sessions = next(sessions)
        return info

    heartbeat = RegistryHeartbeat(registry, current, interval_s=0.3)
    try:
        registered_at = time.time()
        await heartbeat.start()
        assert heartbeat.connected and heartbeat.last_error is None
        await asyncio.sleep(2.5)  # well past the 1 s TTL
        replicas = await registry.snapshot()
        assert len(replicas) == 1
        # Rewritten after its first TTL would have run out, not just left in place...
        assert replicas[0].updated_at > registered_at + 1.0
        # ... with fresh info each time: the stored load is the latest one.
        latest = replicas[0].load.active_sessions

        async def newer_load_stored() -> bool:
            current = await registry.snapshot()
            return bool(current) and current[0].load.active_sessions > latest

        await wait_for(newer_load_stored, timeout_s=20)

        await heartbeat.stop()
        assert await registry.snapshot() == []
    finally:
        await heartbeat.stop(deregister=False)
        await registry.close()


async def test_stop_without_deregister_leaves_the_entry_to_expire(client: RegistryClient) -> None:
    heartbeat = RegistryHeartbeat(client, make_info, interval_s=0.5)
    await heartbeat.start()
    await heartbeat.stop(deregister=False)
    assert len(await client.snapshot()) == 1


async def test_mode_defaults_then_round_trips(client: RegistryClient) -> None:
    assert await client.get_mode("auto") == "auto"
    assert await client.get_mode("cpu") == "cpu"

    await client.set_mode("gpu")
    assert await client.get_mode("auto") == "gpu"
    await client.set_mode("cpu")
    assert await client.get_mode("auto") == "cpu"

    with pytest.raises(BadRequest):
        await client.set_mode("tpu")
    assert await client.get_mode("auto") == "cpu"


async def test_unknown_mode_in_redis_reads_as_the_default(client: RegistryClient) -> None:
    await client._redis.set(client.mode_key, "turbo")
    assert await client.get_mode("auto") == "auto"


async def test_ping(client: RegistryClient) -> None:
    assert await client.ping() is True


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_every_call_raises_registry_unavailable_when_redis_is_absent() -> None:
    registry = RegistryClient(f"redis://127.0.0.1:{closed_port()}/0", timeout_s=0.5)
    try:
        started = time.monotonic()
        assert await registry.ping() is False
        for call in (
            registry.register(make_info()),
            registry.heartbeat(make_info()),
            registry.deregister("stt_cpu_ws", "a"),
            registry.snapshot(),
            registry.get_mode("auto"),
            registry.set_mode("cpu"),
        ):
            with pytest.raises(RegistryUnavailable) as caught:
                await call
            assert caught.value.__cause__ is not None
            assert caught.value.code == "registry_unavailable"
        # Fails fast: no long retry loop hidden in the client.
        assert time.monotonic() - started < 5.0
    finally:
        await registry.close()


async def test_heartbeat_survives_a_redis_outage_and_re_registers(redis_server) -> None:
    registry = RegistryClient(
        redis_server.url, prefix=f"outage-{uuid.uuid4().hex[:8]}", ttl_s=2.0, timeout_s=0.5
    )
    heartbeat = RegistryHeartbeat(registry, make_info, interval_s=0.2)
    try:
        await heartbeat.start()
        assert len(await registry.snapshot()) == 1

        redis_server.stop()
        try:

            async def disconnected() -> bool:
                return not heartbeat.connected

            await wait_for(disconnected, timeout_s=5)
            assert heartbeat.last_error and str(redis_server.port) in heartbeat.last_error
            with pytest.raises(RegistryUnavailable):
                await registry.snapshot()
            await asyncio.sleep(0.6)  # several failed beats: the task must still be alive
            assert heartbeat._task is not None and not heartbeat._task.done()
        finally:
            redis_server.start()  # a fresh server: the old registration is gone

        async def registered_again() -> bool:
            return heartbeat.connected and len(await registry.snapshot()) == 1

        await wait_for(registered_again, timeout_s=5)
        assert heartbeat.last_error is None
        assert (await registry.snapshot())[0].instance_id == "a"
    finally:
        await heartbeat.stop()
        await registry.close()


async def test_heartbeat_start_does_not_raise_when_redis_is_absent() -> None:
    registry = RegistryClient(f"redis://127.0.0.1:{closed_port()}/0", timeout_s=0.3)
    heartbeat = RegistryHeartbeat(registry, make_info, interval_s=0.2)
    try:
        await heartbeat.start()
        assert heartbeat.connected is False
        assert heartbeat.last_error
        await asyncio.sleep(0.5)
        assert heartbeat._task is not None and not heartbeat._task.done()
    finally:
        await heartbeat.stop()
        await registry.close()
