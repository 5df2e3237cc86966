"""The nginx front door: settings, and the config rendered from ``nginx/nginx.conf.template``.

One template serves two targets. ``embedded``: ``voicemesh up --with-nginx`` runs the
Debian ``nginx`` binary as the current user, on a loopback port, with its pid, logs and
temp files under the run folder, in front of the embedded gateway. ``compose``: the
committed ``nginx/nginx.conf`` that the nginx image of ``docker-compose.yml`` uses
(upstream ``gateway:8080``, files under ``/usr/share/nginx/html``, logs to stdout).
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_LOGGER = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_ROOT / "nginx" / "nginx.conf.template"
"""The one template both targets render."""
COMPOSE_CONF = REPO_ROOT / "nginx" / "nginx.conf"
"""The compose rendering, committed so the image build needs no Python."""
DEFAULT_STATIC_DIR = REPO_ROOT / "control-panel"
DEFAULT_CLIENT_JS_DIR = REPO_ROOT / "client" / "js"
MULTIPART_SLACK_BYTES = 1024 * 1024
"""Room above the gateway's upload limit for the multipart envelope and form fields."""
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")

Target = Literal["embedded", "compose"]


class NginxSettings(BaseSettings):
    """``VOICEMESH_NGINX_*``: how the front door listens, limits and proxies."""

    model_config = SettingsConfigDict(env_prefix="VOICEMESH_NGINX_", extra="ignore")

    host: str = "127.0.0.1"
    """Interface nginx listens on (embedded target)."""
    port: int = Field(8000, ge=1, le=65535)
    """Port nginx listens on (embedded target; the compose image listens on 8080)."""
    binary: str | None = None
    """The nginx executable; default: ``nginx`` on PATH, then ``/usr/sbin/nginx``."""
    static_dir: Path = DEFAULT_STATIC_DIR
    """Folder of the control panel served at ``/`` (embedded target)."""
    client_js_dir: Path = DEFAULT_CLIENT_JS_DIR
    """Folder of the JavaScript client the panel imports as ``/voicemesh.js`` (embedded)."""
    workers: str = "1"
    """``worker_processes``: a number, or ``auto``."""
    api_rate_per_s: int = Field(20, ge=1)
    """Sustained HTTP API requests per second from one client address."""
    api_burst: int = Field(40, ge=0)
    """Requests above the rate one address may send at once before it gets 429."""
    ws_rate_per_s: int = Field(5, ge=1)
    """New WebSocket sessions per second from one client address."""
    ws_burst: int = Field(20, ge=0)
    """New sessions above that rate one address may open at once."""
    max_connections_per_client: int = Field(64, ge=1)
    """Concurrent WebSocket connections from one client address."""
    stream_timeout_s: int = Field(3600, ge=10)
    """How long a streaming connection may stay silent in either direction."""
    http_timeout_s: int = Field(300, ge=10)
    """Read and send timeout of HTTP API calls (above the gateway's request timeout)."""
    metrics_allow: list[str] = ["127.0.0.1", "::1"]
    """Addresses or CIDR ranges allowed to read ``/metrics``; everyone else gets 403."""
    body_limit_bytes: int | None = Field(None, ge=1024)
    """``client_max_body_size``; default: the gateway's ``max_upload_bytes`` plus 1 MiB."""

    @field_validator("workers")
    @classmethod
    def _workers_is_count_or_auto(cls, value: str) -> str:
        if value != "auto" and not value.isdigit():
            raise ValueError(f"workers must be a number or 'auto', got {value!r}")
        return value


@lru_cache
def get_settings() -> NginxSettings:
    """Settings from the environment, read once."""
    return NginxSettings()


@dataclass(frozen=True)
class NginxLayout:
    """Where one nginx instance keeps its files."""

    prefix: Path
    """Folder passed to ``nginx -p``; holds the config, pid, logs and temp files."""

    @property
    def conf(self) -> Path:
        """The rendered config."""
        return self.prefix / "nginx.conf"

    @property
    def pid(self) -> Path:
        """nginx's pid file."""
        return self.prefix / "nginx.pid"

    @property
    def temp(self) -> Path:
        """Parent of the body and proxy temp folders."""
        return self.prefix / "temp"

    @property
    def access_log(self) -> Path:
        """The access log (one line per request, with its request id)."""
        return self.prefix / "access.log"

    @property
    def error_log(self) -> Path:
        """nginx's error log."""
        return self.prefix / "error.log"


class UpstreamGateway(BaseSettings):
    """The gateway nginx proxies to: the two of its settings the front door follows.

    Read from the gateway's own ``VOICEMESH_GATEWAY_*`` variables, so the shared
    package never imports the gateway; a unit test keeps the defaults equal to
    ``GatewaySettings``'.
    """

    model_config = SettingsConfigDict(env_prefix="VOICEMESH_GATEWAY_", extra="ignore")

    port: int = 8080
    """The gateway's port (``VOICEMESH_GATEWAY_PORT``)."""
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    """The gateway's upload limit (``VOICEMESH_GATEWAY_MAX_UPLOAD_BYTES``)."""

    @classmethod
    def defaults(cls) -> UpstreamGateway:
        """The defaults, whatever the environment says (what the compose image is built with)."""
        return cls.model_construct()

    @property
    def body_limit_bytes(self) -> int:
        """``client_max_body_size`` that matches the gateway's upload limit."""
        return body_limit_for(self.max_upload_bytes)


def body_limit_for(max_upload_bytes: int) -> int:
    """``client_max_body_size`` for a gateway that accepts ``max_upload_bytes`` uploads."""
    return max_upload_bytes + MULTIPART_SLACK_BYTES


def nginx_binary(settings: NginxSettings) -> str | None:
    """The nginx executable to run, or None when none is installed."""
    if settings.binary:
        return shutil.which(settings.binary)
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def _mime_types(binary: str | None) -> str:
    """The ``mime.types`` next to the installed nginx config (Debian: /etc/nginx)."""
    for candidate in ("/etc/nginx/mime.types", "/usr/local/nginx/conf/mime.types"):
        if Path(candidate).is_file():
            return candidate
    raise FileNotFoundError(f"no mime.types found for {binary or 'nginx'}")


def _listen(host: str, port: int) -> str:
    if host in ("0.0.0.0", ""):
        return str(port)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def render_nginx_conf(
    settings: NginxSettings,
    *,
    target: Target,
    upstreams: list[str],
    body_limit_bytes: int,
    layout: NginxLayout | None = None,
) -> str:
    """The nginx config for ``target``; ``upstreams`` are the gateway's ``host:port``s.

    ``body_limit_bytes`` is the caller's ``client_max_body_size`` (see
    :func:`body_limit_for`); ``settings.body_limit_bytes``, when set, wins over it.
    """
    if not upstreams:
        raise ValueError("at least one gateway upstream is needed")
    limit = settings.body_limit_bytes or body_limit_bytes
    allow = "\n".join(f"            allow {item};" for item in settings.metrics_allow)
    servers = "\n".join(f"        server {item} max_fails=3 fail_timeout=5s;" for item in upstreams)
    if target == "compose":
        values = {
            "USER_LINE": "# runs as the image's unprivileged user",
            "WORKERS": "auto",
            "PID_FILE": "/tmp/nginx.pid",
            "ERROR_LOG": "/dev/stderr",
            "ACCESS_LOG": "/dev/stdout",
            # nginx creates only the last folder of a temp path: /tmp exists in the image.
            "TEMP_DIR": "/tmp",
            "MIME_TYPES": "/etc/nginx/mime.types",
            "LISTEN": "8080",
            "STATIC_DIR": "/usr/share/nginx/html",
            "CLIENT_JS_DIR": "/usr/share/nginx/client",
        }
    else:
        if layout is None:
            raise ValueError("the embedded target needs a layout (its prefix folder)")
        # As root nginx would hand its workers to "nobody"; keep them as this user.
        user = f"user {getpass.getuser()};" if os.geteuid() == 0 else "# runs as the current user"
        values = {
            "USER_LINE": user,
            "WORKERS": settings.workers,
            "PID_FILE": str(layout.pid),
            "ERROR_LOG": str(layout.error_log),
            "ACCESS_LOG": str(layout.access_log),
            "TEMP_DIR": str(layout.temp),
            "MIME_TYPES": _mime_types(nginx_binary(settings)),
            "LISTEN": _listen(settings.host, settings.port),
            "STATIC_DIR": str(settings.static_dir.resolve()),
            "CLIENT_JS_DIR": str(settings.client_js_dir.resolve()),
        }
    values.update(
        {
            "UPSTREAM_SERVERS": servers,
            "METRICS_ALLOW": allow or "            # nobody",
            "CLIENT_MAX_BODY_SIZE": str(limit),
            "API_RATE": str(settings.api_rate_per_s),
            "API_BURST": str(settings.api_burst),
            "WS_RATE": str(settings.ws_rate_per_s),
            "WS_BURST": str(settings.ws_burst),
            "MAX_CONN": str(settings.max_connections_per_client),
            "STREAM_TIMEOUT": str(settings.stream_timeout_s),
            "HTTP_TIMEOUT": str(settings.http_timeout_s),
        }
    )
    text = TEMPLATE.read_text(encoding="utf-8")
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    left = sorted(set(_PLACEHOLDER.findall(text)))
    if left:
        raise ValueError(f"unrendered placeholders in {TEMPLATE}: {', '.join(left)}")
    return text


def render_compose_conf(gateway: UpstreamGateway | None = None) -> str:
    """The config baked into the compose nginx image (defaults, gateway at ``gateway:8080``).

    ``gateway`` defaults to :meth:`UpstreamGateway.defaults`, never the environment,
    so the committed rendering does not depend on who renders it.
    """
    upstream = gateway or UpstreamGateway.defaults()
    return render_nginx_conf(
        NginxSettings.model_construct(),
        target="compose",
        upstreams=[f"gateway:{upstream.port}"],
        body_limit_bytes=upstream.body_limit_bytes,
    )


def embedded_argv(settings: NginxSettings, layout: NginxLayout) -> list[str]:
    """The command that runs nginx in the foreground on ``layout`` (checks it is installed)."""
    binary = nginx_binary(settings)
    if binary is None:
        raise FileNotFoundError(
            "nginx is not installed: run scripts/setup-nginx (it installs Debian's nginx package)"
        )
    # -e: nginx opens its error log before it reads the config; keep that one ours too.
    return [
        binary,
        "-p",
        str(layout.prefix),
        "-c",
        str(layout.conf),
        "-e",
        str(layout.error_log),
        "-g",
        "daemon off;",
    ]


def write_embedded_conf(
    settings: NginxSettings, layout: NginxLayout, upstreams: list[str], *, body_limit_bytes: int
) -> None:
    """Write the embedded config and create its temp folder."""
    layout.temp.mkdir(parents=True, exist_ok=True)
    layout.conf.write_text(
        render_nginx_conf(
            settings,
            target="embedded",
            upstreams=upstreams,
            layout=layout,
            body_limit_bytes=body_limit_bytes,
        ),
        encoding="utf-8",
    )
    _LOGGER.info("nginx config written to %s", layout.conf)
