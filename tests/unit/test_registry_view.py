"""The gateway's registry view: health probes and local session accounting."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from gateway.registry_view import RegistryView, static_replicas
from voicemesh.registry import ReplicaInfo

pytestmark = pytest.mark.unit


def view() -> RegistryView:
    replicas = static_replicas(
        "stt_cpu_ws", ["http://ok", "http://sick", "http://gone"], ["transcribe", "stream"]
    )
    return RegistryView(None, default_mode="auto", static=replicas, probe_interval_s=5.0)


async def test_replicas_failing_their_probe_leave_routing() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.host == "gone":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200 if request.url.host == "ok" else 503)

    v = view()
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        assert await v.probe(client) == []  # one miss may be a busy replica
        assert len(v.snapshot()) == 3
        failed = await v.probe(client)
    assert sorted(r.url for r in failed) == ["http://gone", "http://sick"]
    assert [r.url for r in v.snapshot()] == ["http://ok"]


def test_sessions_opened_here_count_before_replicas_report_them() -> None:
    v = view()
    ok = v.snapshot()[0]
    v.assign(ok)
    v.assign(ok)
    assert v.snapshot()[0].load.active_sessions == 2
    v.release(ok)
    v.release(ok)
    assert v.snapshot()[0].load.active_sessions == 0


class SlowRegistry:
    """Answers like RegistryClient, but holds get_mode until told (a read in flight)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.default_model: str | None = None
        self.release = asyncio.Event()

    async def snapshot(self) -> list[object]:
        return []

    async def get_mode(self, default: str) -> str:
        await self.release.wait()
        return self.mode

    async def get_default_model(self) -> str | None:
        return self.default_model


async def test_a_local_default_model_is_not_undone_by_a_read_in_flight() -> None:
    registry = SlowRegistry("auto")
    v = RegistryView(registry, default_mode="auto")  # type: ignore[arg-type]
    read = asyncio.create_task(v.refresh())
    await asyncio.sleep(0.01)  # the read has started and will return no default
    v.set_default_model("tiny.en")
    registry.release.set()
    await read
    assert v.default_model == "tiny.en"
    registry.default_model = "base"  # another gateway set it: a later read adopts it
    await v.refresh()
    assert v.default_model == "base"


async def test_a_local_mode_change_is_not_undone_by_a_read_in_flight() -> None:
    registry = SlowRegistry("gpu")
    v = RegistryView(registry, default_mode="auto")  # type: ignore[arg-type]
    read = asyncio.create_task(v.refresh())
    await asyncio.sleep(0.01)  # the read has started and will return the old "gpu"
    v.set_mode("cpu")
    registry.release.set()
    await read
    assert v.mode == "cpu" and v.connected
    registry.mode = "auto"  # a later read adopts what Redis says
    await v.refresh()
    assert v.mode == "auto"


async def test_held_out_replicas_are_tried_last_not_never() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200 if request.url.host == "ok" else 503)

    def by_url(replicas: list) -> list:  # type: ignore[type-arg]
        return sorted(replicas, key=lambda r: r.url)

    v = view()
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        await v.probe(client)
        await v.probe(client)
    assert [r.url for r in v.route(by_url)] == ["http://ok", "http://gone", "http://sick"]
    only_sick = static_replicas("stt_cpu_ws", ["http://sick"], ["stream"])
    lone = RegistryView(None, default_mode="auto", static=only_sick, probe_interval_s=5.0)
    lone.mark_failed(lone.snapshot()[0])
    assert lone.snapshot() == []
    assert [r.url for r in lone.route(by_url)] == ["http://sick"]


class StaticRegistry:
    """Answers like RegistryClient with whatever entries the test set last."""

    def __init__(self, replicas: list[ReplicaInfo]) -> None:
        self.replicas = replicas

    async def snapshot(self) -> list[ReplicaInfo]:
        return self.replicas

    async def get_mode(self, default: str) -> str:
        return default

    async def get_default_model(self) -> str | None:
        return None


def beating(url: str, updated_at: float) -> ReplicaInfo:
    entry = static_replicas("stt_cpu_ws", [url], ["stream"])[0]
    return entry.model_copy(
        update={"instance_id": url, "updated_at": updated_at, "heartbeat_interval_s": 0.1}
    )


async def test_a_replica_that_stops_beating_leaves_routing_until_it_beats_again() -> None:
    registry = StaticRegistry([beating("http://a", 1.0), beating("http://b", 1.0)])
    v = RegistryView(registry, default_mode="auto", refresh_s=0.05)  # type: ignore[arg-type]
    await v.refresh()
    assert {r.url for r in v.snapshot()} == {"http://a", "http://b"}
    # b goes on beating; a (SIGSTOPped, say) keeps its last entry while its TTL runs.
    for beat in range(2, 8):
        await asyncio.sleep(0.1)
        registry.replicas = [beating("http://a", 1.0), beating("http://b", float(beat))]
        await v.refresh()
    assert [r.url for r in v.snapshot()] == ["http://b"]
    # Still tried, after every replica that beats, rather than never.
    ordered = v.route(lambda replicas: sorted(replicas, key=lambda r: r.url))
    assert [r.url for r in ordered] == ["http://b", "http://a"]
    registry.replicas = [beating("http://a", 9.0), beating("http://b", 9.0)]
    await v.refresh()
    assert {r.url for r in v.snapshot()} == {"http://a", "http://b"}


async def test_no_replica_goes_silent_while_redis_is_away() -> None:
    registry = StaticRegistry([beating("http://a", 1.0)])
    v = RegistryView(registry, default_mode="auto", refresh_s=0.05)  # type: ignore[arg-type]
    await v.refresh()
    v.connected = False  # what a failed refresh leaves: nothing new can be seen
    await asyncio.sleep(0.6)
    assert [r.url for r in v.snapshot()] == ["http://a"]
