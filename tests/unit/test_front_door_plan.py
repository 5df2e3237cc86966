"""The front door in the runner's plan, the rendered nginx config, and advertised addresses."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gateway.settings import GatewaySettings
from voicemesh.errors import PlanError
from voicemesh.mesh.control import write_nginx_conf
from voicemesh.mesh.plan import MeshPaths, MeshPlan, build_plan, free_port
from voicemesh.nginx import (
    COMPOSE_CONF,
    MULTIPART_SLACK_BYTES,
    NginxLayout,
    NginxSettings,
    UpstreamGateway,
    render_compose_conf,
    render_nginx_conf,
)
from voicemesh.services import ServiceSpec
from voicemesh.settings import ServiceSettings, own_address

pytestmark = pytest.mark.unit

GATEWAY = ServiceSpec("gateway", "gateway.app:create_app", "VOICEMESH_GATEWAY_", 1, scalable=False)


def plan_with_nginx(
    tmp_path: Path, settings: NginxSettings, scale: dict[str, int] | None = None
) -> MeshPlan:
    """A plan of the gateway alone behind nginx, on free ports, with an external Redis."""
    return build_plan(
        [GATEWAY],
        paths=MeshPaths(tmp_path),
        host="127.0.0.1",
        port=free_port(),
        redis_url="redis://127.0.0.1:1/0",
        scale=scale or {},
        nginx=settings,
    )


def test_plan_puts_nginx_after_the_gateway_in_its_own_run_folder(tmp_path: Path) -> None:
    port = free_port()
    plan = plan_with_nginx(tmp_path, NginxSettings(port=port, binary="/usr/sbin/nginx"))
    gateway, nginx = plan.services
    assert (gateway.name, nginx.name, nginx.kind) == ("gateway", "nginx", "nginx")
    prefix = tmp_path / "run" / f"nginx-{port}"
    assert nginx.argv == [
        "/usr/sbin/nginx",
        "-p",
        str(prefix),
        "-c",
        str(prefix / "nginx.conf"),
        "-e",
        str(prefix / "error.log"),
        "-g",
        "daemon off;",
    ]
    assert nginx.url == f"http://127.0.0.1:{port}"
    write_nginx_conf(
        plan,
        MeshPaths(tmp_path),
        NginxSettings(port=port),
        body_limit_bytes=UpstreamGateway().body_limit_bytes,
    )
    conf = (prefix / "nginx.conf").read_text()
    assert f"server 127.0.0.1:{gateway.port} " in conf
    assert f"listen 127.0.0.1:{port};" in conf
    assert (prefix / "temp").is_dir()


def test_plan_refuses_a_busy_port_a_missing_binary_and_no_gateway(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        with pytest.raises(PlanError, match="--nginx-port"):
            plan_with_nginx(tmp_path, NginxSettings(port=busy, binary="/usr/sbin/nginx"))
    with pytest.raises(PlanError, match="setup-nginx"):
        plan_with_nginx(
            tmp_path, NginxSettings(port=free_port(), binary=str(tmp_path / "no-such-nginx"))
        )
    other = ServiceSpec("other", "other.app:create_app", "VOICEMESH_OTHER_", free_port())
    with pytest.raises(PlanError, match="scaled to 0"):
        build_plan(
            [other, GATEWAY],
            paths=MeshPaths(tmp_path),
            host="127.0.0.1",
            port=free_port(),
            redis_url="redis://127.0.0.1:1/0",
            scale={"gateway": 0},
            nginx=NginxSettings(port=free_port()),
        )


def test_compose_config_is_the_committed_rendering() -> None:
    assert COMPOSE_CONF.read_text() == render_compose_conf(), (
        "nginx/nginx.conf is stale: voicemesh nginx render --target compose "
        "--output nginx/nginx.conf"
    )


def test_body_limit_follows_the_gateway_upload_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    default = GatewaySettings.model_fields["max_upload_bytes"].default
    assert f"client_max_body_size {default + MULTIPART_SLACK_BYTES};" in render_compose_conf()
    monkeypatch.setenv("VOICEMESH_GATEWAY_MAX_UPLOAD_BYTES", str(4 * 1024 * 1024))
    upstream = UpstreamGateway()
    assert upstream.max_upload_bytes == GatewaySettings().max_upload_bytes == 4 * 1024 * 1024
    conf = render_nginx_conf(
        NginxSettings(),
        target="embedded",
        upstreams=["127.0.0.1:9"],
        body_limit_bytes=upstream.body_limit_bytes,
        layout=NginxLayout(tmp_path),
    )
    assert f"client_max_body_size {5 * 1024 * 1024};" in conf
    # The environment never leaks into the committed compose rendering.
    assert f"client_max_body_size {default + MULTIPART_SLACK_BYTES};" in render_compose_conf()
    explicit = NginxSettings(body_limit_bytes=3 * 1024 * 1024)
    conf = render_nginx_conf(
        explicit,
        target="embedded",
        upstreams=["127.0.0.1:9"],
        body_limit_bytes=upstream.body_limit_bytes,
        layout=NginxLayout(tmp_path),
    )
    assert f"client_max_body_size {3 * 1024 * 1024};" in conf


def test_the_upstream_gateway_mirrors_the_gateway_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The shared package reads these two gateway settings without importing the gateway.
    for name in UpstreamGateway.model_fields:
        assert name in GatewaySettings.model_fields
        assert (
            UpstreamGateway.model_fields[name].default == GatewaySettings.model_fields[name].default
        ), name
    assert UpstreamGateway.model_config["env_prefix"] == GatewaySettings.model_config["env_prefix"]
    monkeypatch.setenv("VOICEMESH_GATEWAY_PORT", "9099")
    assert UpstreamGateway().port == GatewaySettings().port == 9099
    assert UpstreamGateway.defaults().port == 8080


def _location(conf: str, opening: str) -> str:
    """The text of one location block (locations here do not nest)."""
    start = conf.index(opening)
    return conf[start : conf.index("\n        }", start)]


def test_compose_config_limits_streams_and_compression() -> None:
    conf = render_compose_conf()
    assert "listen 8080;" in conf and "server gateway:8080 " in conf
    for route in ("location /ws/ {", "location /v1/ws/ {", "location = /v1/asr/stream {"):
        block = _location(conf, route)
        assert "proxy_buffering off;" in block and "proxy_read_timeout 3600s;" in block
        assert "limit_req zone=voicemesh_ws" in block
    assert "limit_req zone=voicemesh_api burst=40 nodelay;" in _location(conf, "location /v1/ {")
    assert "proxy_set_header Connection $connection_upgrade;" in conf
    # gzip only where the static panel is served.
    assert conf.count("gzip on;") == 1 and "gzip on;" in _location(conf, "location / {")
    metrics = _location(conf, "location = /metrics {")
    assert "allow 127.0.0.1;" in metrics and "deny all;" in metrics
    for header in (
        "X-Content-Type-Options",
        "X-Frame-Options",
        "Referrer-Policy",
        "Content-Security-Policy",
    ):
        assert header in conf


def test_metrics_can_be_closed_to_everyone(tmp_path: Path) -> None:
    conf = render_nginx_conf(
        NginxSettings(metrics_allow=[]),
        target="embedded",
        upstreams=["127.0.0.1:9"],
        layout=NginxLayout(tmp_path),
        body_limit_bytes=2048,
    )
    assert "allow " not in _location(conf, "location = /metrics {")


def test_bad_settings_fail_fast(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="workers"):
        NginxSettings(workers="many")
    with pytest.raises(ValueError, match="upstream"):
        render_nginx_conf(
            NginxSettings(),
            target="embedded",
            upstreams=[],
            body_limit_bytes=2048,
            layout=NginxLayout(tmp_path),
        )


def test_replicas_advertise_their_own_address(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServiceSettings(host="0.0.0.0", port=8092).public_url == "http://127.0.0.1:8092"
    auto = ServiceSettings(host="0.0.0.0", port=8092, advertise_host="auto")
    assert auto.public_url == f"http://{socket.gethostbyname(socket.gethostname())}:8092"
    assert own_address() == socket.gethostbyname(socket.gethostname())
    pod = ServiceSettings(host="0.0.0.0", port=8092, advertise_host="10.1.2.3")
    assert pod.public_url == "http://10.1.2.3:8092"
    assert (
        ServiceSettings(port=8092, advertise_host="fd00::7").public_url == "http://[fd00::7]:8092"
    )
    both = ServiceSettings(
        port=8092, advertise_host="10.1.2.3", advertise_url="http://stt.example:80/"
    )
    assert both.public_url == "http://stt.example:80"


def test_an_unresolvable_own_name_fails_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_such_host(_name: str) -> str:
        raise socket.gaierror(-2, "Name or service not known")

    own_address.cache_clear()
    monkeypatch.setattr(socket, "gethostbyname", no_such_host)
    try:
        with pytest.raises(ValueError, match="ADVERTISE_HOST"):
            _ = ServiceSettings(port=8092, advertise_host="auto").public_url
    finally:
        own_address.cache_clear()
