"""The control panel's operator tabs in Chromium, against real services: the dashboard's
resource bars, Logs (the live event stream, filtered), Settings (mode, limits, a config
reload that changes a limit), ASR models (unload, load, default) and Benchmark (a run
started from the page, followed to its result table and chart).

Every call the page makes goes through ``voicemesh.js`` (the panel's ``common.js``), so
these also exercise the JavaScript client's admin methods. Services of their own (a
Redis database, one CPU STT replica, a gateway with a keys file and a config file) keep
the unloads and the limit change away from the session mesh the other tests share.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import RedisServer, ServiceProcess, empty_redis_db, free_port
from tests.integration.test_panel_browser import (  # noqa: F401 - fixtures
    SHOTS,
    browser,
    capture_clip,
    page,
    save_keys,
)
from voicemesh.settings import default_home

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ADMIN_KEY = "tabs-admin-key"
CLIENT_KEY = "tabs-client-key"
PER_KEY = 8
TABS_DB = 6


class TabsMesh:
    """One CPU STT replica and a keyed gateway; the gateway's config file can be rewritten."""

    def __init__(self, stt: ServiceProcess, gateway: ServiceProcess, config_file: Path) -> None:
        self.stt = stt
        self.gateway = gateway
        self.config_file = config_file

    def configure(self, per_key: int) -> None:
        """Write the gateway's config file (read again by a reload)."""
        self.config_file.write_text(f"VOICEMESH_GATEWAY_MAX_SESSIONS_PER_KEY={per_key}\n")

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """An admin call to the gateway."""
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        return httpx.request(method, self.gateway.url + path, headers=headers, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def tabs_mesh(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TabsMesh]:
    """A Redis database of its own, one ``stt_cpu_ws`` and a gateway with a keys file."""
    folder = tmp_path_factory.mktemp("tabs")
    keys_file = folder / "keys.json"
    keys_file.write_text(json.dumps([CLIENT_KEY]))
    config_file = folder / "gateway.env"
    config_file.write_text(f"VOICEMESH_GATEWAY_MAX_SESSIONS_PER_KEY={PER_KEY}\n")
    with empty_redis_db(redis_server, TABS_DB) as url:
        env = {
            "VOICEMESH_REDIS_URL": url,
            "VOICEMESH_HOME": str(tmp_path_factory.getbasetemp() / "vmhome-tabs"),
            "VOICEMESH_MODELS_DIR": str(default_home() / "models"),
            "VOICEMESH_GATEWAY_USE_DETECTOR": "false",
            "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.5",
            "VOICEMESH_GATEWAY_API_KEYS_FILE": str(keys_file),
            "VOICEMESH_GATEWAY_ADMIN_KEY": ADMIN_KEY,
            "VOICEMESH_GATEWAY_CONFIG_FILE": str(config_file),
        }
        stt = ServiceProcess("stt_cpu_ws", free_port(), env, folder)
        gateway = ServiceProcess("gateway", free_port(), env, folder)
        try:
            stt.start()
            gateway.start()
            stt.wait_healthy()
            gateway.wait_healthy()
            yield TabsMesh(stt, gateway, config_file)
        finally:
            gateway.stop()
            stt.stop()


@pytest.fixture
def panel(tabs_mesh: TabsMesh, request: pytest.FixtureRequest) -> Any:
    """The panel on the tabs mesh, keys saved, the live feed up (a tab of ``page``)."""
    tab = request.getfixturevalue("page")
    tab.goto(tabs_mesh.gateway.url)
    save_keys(tab, CLIENT_KEY, ADMIN_KEY)
    tab.wait_for_selector("#conn.badge-ok", timeout=20000)
    return tab


def test_dashboard_bars_show_the_mesh_cpu_and_memory(panel: Any) -> None:
    panel.wait_for_function(
        "document.querySelector('#res-memory .value').textContent.includes('MB')", timeout=15000
    )
    memory = panel.inner_text("#res-memory .value")
    megabytes = float(memory.split(" MB")[0])
    # A gateway and a Whisper base replica: well over 100 MB together, under 20 GB.
    assert 100 < megabytes < 20000, memory
    assert "%" in panel.inner_text("#res-cpu .value")
    width = panel.eval_on_selector("#res-memory .fill", "el => parseFloat(el.style.width)")
    assert width > 0
    # No replica runs on a GPU here: the GPU bar stays hidden and the page says why.
    assert panel.eval_on_selector("#res-gpu", "el => el.hidden")
    assert "no GPU" in panel.inner_text("#res-note")


def test_logs_tab_shows_the_event_stream_and_filters_it(tabs_mesh: TabsMesh, panel: Any) -> None:
    panel.click("button[data-tab='logs']")
    for mode in ("cpu", "auto"):
        assert tabs_mesh.admin("POST", "/v1/admin/mode", json={"mode": mode}).status_code == 200
    panel.wait_for_selector("#logs li[data-type='mode_changed']", timeout=15000)
    panel.select_option("#logs-type", "mode_changed")
    types = panel.eval_on_selector_all(
        "#logs li[data-type]", "items => items.map(i => i.dataset.type)"
    )
    assert types and set(types) == {"mode_changed"}, types
    assert len(types) >= 2
    panel.fill("#logs-search", '"mode":"cpu"')
    texts = panel.eval_on_selector_all(
        "#logs li[data-type]", "items => items.map(i => i.textContent)"
    )
    assert len(texts) == 1 and '"cpu"' in texts[0], texts
    panel.fill("#logs-search", "no-such-text-anywhere")
    assert "no event matches" in panel.inner_text("#logs")
    panel.screenshot(path=str(SHOTS / "logs.png"), full_page=True)


def test_settings_tab_sets_the_mode_and_reloads_a_changed_limit(
    tabs_mesh: TabsMesh, panel: Any
) -> None:
    panel.click("button[data-tab='settings']")
    per_key = "#settings-limits dd[data-setting='max sessions per key']"
    panel.wait_for_selector(per_key, timeout=15000)
    assert panel.inner_text(per_key) == str(PER_KEY)
    panel.click("#settings-mode button[data-mode='cpu']")
    panel.wait_for_function(
        "document.getElementById('settings-mode-message').textContent.includes('→ cpu')",
        timeout=15000,
    )
    assert tabs_mesh.admin("GET", "/v1/admin/mode").json()["mode"] == "cpu"
    # A limit edited in the config file is in force after the reload the page asks for.
    tabs_mesh.configure(3)
    try:
        panel.click("#settings-reload")
        panel.wait_for_function(
            "document.getElementById('settings-reload-info').textContent.startsWith('changed')",
            timeout=15000,
        )
        assert "max_sessions_per_key: 8 → 3" in panel.inner_text("#settings-reload-info")
        panel.wait_for_function(
            f"document.querySelector(\"{per_key}\").textContent === '3'", timeout=15000
        )
        status = tabs_mesh.admin("GET", "/v1/admin/status").json()
        assert status["sessions"]["max_per_key"] == 3
        panel.screenshot(path=str(SHOTS / "settings.png"), full_page=True)
    finally:
        tabs_mesh.configure(PER_KEY)
        tabs_mesh.admin("POST", "/v1/admin/config/reload", json={})
        tabs_mesh.admin("POST", "/v1/admin/mode", json={"mode": "auto"})


def model_status(panel: Any, model: str) -> str:
    """The status cell of ``model``'s row in the ASR models table."""
    return str(panel.get_attribute(f"#models tr[data-model='{model}']", "data-status"))


def test_models_tab_unloads_loads_and_refuses_what_cannot_be_done(
    tabs_mesh: TabsMesh, panel: Any
) -> None:
    panel.click("button[data-tab='models']")
    panel.wait_for_selector("#models tr[data-model][data-default='true']", timeout=20000)
    model = panel.get_attribute("#models tr[data-default='true']", "data-model")
    assert model_status(panel, model) == "loaded"
    rtf = panel.inner_text(f"#models tr[data-model='{model}'] td:nth-child(5)")
    assert rtf == "\u2013" or float(rtf) > 0, rtf  # a dash until it has decoded
    # The mesh's only loaded STT model: refused without force, with the reason shown.
    panel.click(f"#models tr[data-model='{model}'] .model-unload")
    panel.wait_for_function(
        "document.getElementById('models-info').style.color.includes('bad')", timeout=15000
    )
    assert "force" in panel.inner_text("#models-info").lower()
    try:
        panel.check("#models-force")
        panel.click(f"#models tr[data-model='{model}'] .model-unload")
        panel.wait_for_selector(
            f"#models tr[data-model='{model}'][data-status='unloaded']", timeout=30000
        )
        panel.screenshot(path=str(SHOTS / "models-unloaded.png"), full_page=True)
    finally:
        panel.uncheck("#models-force")
        panel.click(f"#models tr[data-model='{model}'] .model-load")
    panel.wait_for_selector(
        f"#models tr[data-model='{model}'][data-status='loaded']", timeout=120000
    )
    # A bundled model no replica transcribes with cannot be the default: the page says why.
    other = panel.eval_on_selector_all(
        "#models tr[data-model]:not([data-default])", "rows => rows.map(r => r.dataset.model)"
    )
    assert other, "the bundled tiny.en should be listed beside the replica's model"
    panel.click(f"#models tr[data-model='{other[0]}'] .model-default")
    panel.wait_for_function(
        "document.getElementById('models-info').style.color.includes('bad')", timeout=15000
    )
    assert other[0] in panel.inner_text("#models-info")


def test_benchmark_tab_runs_and_shows_the_result(panel: Any) -> None:
    panel.click("button[data-tab='benchmark']")
    panel.select_option("#bench-kind", "stt")
    panel.fill("#bench-clients", "1")
    panel.fill("#bench-clips", "1")
    panel.click("#bench-go")
    panel.wait_for_selector("#bench-status[data-status='completed']", timeout=180000)
    summary = panel.inner_text("#bench-summary")
    assert "wer" in summary.lower() and "final" in summary.lower(), summary
    rows = panel.eval_on_selector_all("#bench-rows tbody tr", "rows => rows.length")
    assert rows == 1
    bars = panel.get_attribute("#chart-bench", "data-bars")
    assert bars is not None and int(bars) >= 1
    assert panel.eval_on_selector("#bench-progress", "p => p.value === p.max && p.max > 0")
    panel.wait_for_selector("#bench-runs a[data-run]", timeout=15000)
    panel.screenshot(path=str(SHOTS / "benchmark.png"), full_page=True)
