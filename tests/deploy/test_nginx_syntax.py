"""The compose image's ``nginx/nginx.conf`` passes ``nginx -t`` (Debian's nginx), with its
absolute paths moved into a sandbox that holds what the image holds."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.harness import REPO
from voicemesh.nginx import COMPOSE_CONF, NginxSettings, nginx_binary

pytestmark = pytest.mark.deploy


def nginx_test(conf_text: str, sandbox: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on ``conf_text`` with the image's paths inside ``sandbox``."""
    binary = nginx_binary(NginxSettings())
    assert binary, "nginx is not installed: scripts/setup-nginx"
    (sandbox / "tmp").mkdir(parents=True, exist_ok=True)
    moved = (
        conf_text.replace("server gateway:8080 ", "server 127.0.0.1:9 ")
        .replace(" /tmp", f" {sandbox}/tmp")
        .replace("/usr/share/nginx/html", str(REPO / "control-panel"))
    )
    conf = sandbox / "nginx.conf"
    conf.write_text(moved)
    return subprocess.run(
        [binary, "-t", "-p", str(sandbox), "-c", str(conf), "-e", str(sandbox / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_compose_config_passes_nginx_t(tmp_path: Path) -> None:
    result = nginx_test(COMPOSE_CONF.read_text(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tmp" / "client_body").is_dir()


def test_nginx_t_catches_a_broken_config(tmp_path: Path) -> None:
    broken = COMPOSE_CONF.read_text().replace("proxy_buffering off;", "proxy_buffering of;", 1)
    result = nginx_test(broken, tmp_path)
    assert result.returncode != 0 and "proxy_buffering" in result.stderr
