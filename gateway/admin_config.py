"""``POST /v1/admin/config/reload``: re-read the settings that can change at run time.

The gateway reads its settings again as it would at start (``VOICEMESH_GATEWAY_*``
from its environment, over the ``config_file`` it started with: the file is what an
operator edits, since a running process's environment cannot change), with the keys
file they name, and applies what changed of :data:`RUNTIME_FIELDS`
(the default routing mode, the request and session limits, upload and frame sizes,
stall timeouts, the status interval, the log level, the API keys) to the running
replica. Every other setting that now reads differently is reported under
``requires_restart`` and left as it is. Settings that fail validation, or a keys file
that cannot be read, are a 422 ``config_invalid`` and nothing is applied.

Every gateway replica follows: the answering one counts the reload in Redis
(``{prefix}:config:generation``) and applies it at once; each :class:`ConfigFollower`
notices a new generation within a registry refresh, reloads from its own environment
and notes the generation it runs with (``{prefix}:config:applied:{instance_id}``),
which the answer lists. Each reload is a ``config_reloaded`` event on the status feed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError
from starlette.requests import HTTPConnection

from gateway.auth import AdminPrincipal, require_admin
from gateway.deps import GatewayStateDep
from gateway.keys import KeyRing, fingerprint
from gateway.settings import GatewaySettings, read_config
from gateway.state import GatewayState
from voicemesh.errors import ConfigInvalid, RegistryUnavailable
from voicemesh.lifecycle import apply_log_level
from voicemesh.registry import RegistryClient
from voicemesh.tasks import stop_task

_LOGGER = logging.getLogger(__name__)

RUNTIME_FIELDS = (
    "default_mode",
    "max_sessions_per_key",
    "max_sessions_total",
    "requests_per_minute_per_key",
    "requests_per_minute_total",
    "busy_retry_after_s",
    "max_upload_bytes",
    "max_frame_bytes",
    "stall_timeout_s",
    "max_utterance_s",
    "status_interval_s",
    "log_level",
    "api_keys",
    "api_keys_file",
    "admin_key",
)
"""Settings a reload applies to the running gateway (read where they are used)."""
PER_PROCESS_FIELDS = frozenset({"instance_id"})
"""Settings drawn afresh by each read (a random id): never compared."""
ACK_WAIT_REFRESHES = 3
"""How many registry refreshes the answer waits for the other gateways to apply it."""


class ConfigReload(BaseModel):
    """Body of ``POST /v1/admin/config/reload`` (optional; any other field: 422)."""

    model_config = ConfigDict(extra="forbid")

    dry_run: bool = False
    """Say what would change, apply nothing, tell no other replica."""


def _shown(name: str, value: Any) -> Any:
    """A setting as the answer may show it: keys by fingerprint, never the key."""
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        return f"admin-{fingerprint(secret)}" if name == "admin_key" else fingerprint(secret)
    if isinstance(value, list):
        return [_shown(name, item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _without_password(value: Any) -> Any:
    """A URL setting with its password masked (a Redis URL may carry one)."""
    if not isinstance(value, str) or "://" not in value:
        return value
    parts = urlsplit(value)
    if parts.password is None:
        return value
    return urlunsplit(parts._replace(netloc=f"***@{parts.netloc.rpartition('@')[2]}"))


@dataclass
class ReloadPlan:
    """What a fresh read of the settings would change."""

    fresh: GatewaySettings
    keys: KeyRing
    changed: dict[str, dict[str, Any]]
    unchanged: list[str]
    requires_restart: dict[str, dict[str, Any]]


def read_settings(current: GatewaySettings) -> GatewaySettings:
    """The settings as a start would read them now: the environment over the config file
    the gateway started with (422 ``config_invalid`` when they fail validation)."""
    try:
        if current.config_file is None:
            return GatewaySettings()
        return read_config(current.config_file)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigInvalid(f"the gateway settings fail validation: {problems}") from exc
    except ValueError as exc:
        raise ConfigInvalid(str(exc)) from exc


def plan_reload(current: GatewaySettings, fresh: GatewaySettings) -> ReloadPlan:
    """Compare ``fresh`` with ``current`` and read the keys it names (nothing applied)."""
    try:
        keys = KeyRing.from_settings(fresh)
    except ValueError as exc:
        raise ConfigInvalid(f"the API keys cannot be read: {exc}") from exc
    changed, unchanged, restart = {}, [], {}
    old_json, new_json = current.model_dump(mode="json"), fresh.model_dump(mode="json")
    for name in GatewaySettings.model_fields:
        old, new = getattr(current, name), getattr(fresh, name)
        if name in PER_PROCESS_FIELDS:
            continue
        if name in RUNTIME_FIELDS:
            if old == new:
                unchanged.append(name)
            else:
                changed[name] = {"old": _shown(name, old), "new": _shown(name, new)}
        elif old != new:
            restart[name] = {
                "running": _without_password(old_json[name]),
                "configured": _without_password(new_json[name]),
            }
    return ReloadPlan(fresh, keys, changed, unchanged, restart)


def apply_reload(state: GatewayState, plan: ReloadPlan) -> None:
    """Put the plan's settings, limits and keys into the running replica."""
    settings = state.settings
    # In place: every holder of the settings object (routes, the stream core) sees them.
    for name in plan.changed:
        setattr(settings, name, getattr(plan.fresh, name))
    state.keys = plan.keys
    state.limits.set_limits(
        requests_per_key=settings.requests_per_minute_per_key,
        requests_total=settings.requests_per_minute_total,
        sessions_per_key=settings.max_sessions_per_key,
        sessions_total=settings.max_sessions_total,
        busy_retry_after_s=settings.busy_retry_after_s,
    )
    view = state.view
    if "default_mode" in plan.changed:
        if view.client is None and view.mode == view.default_mode:
            view.set_mode(settings.default_mode)  # no shared mode: the default is the mode
        view.default_mode = settings.default_mode  # with Redis: read when it holds none
    if "log_level" in plan.changed:
        apply_log_level(settings, "gateway")


def reload_here(
    state: GatewayState, plan: ReloadPlan, *, source: str, by: str | None, generation: int
) -> None:
    """Apply ``plan`` on this replica and publish ``config_reloaded``."""
    apply_reload(state, plan)
    changed = ", ".join(plan.changed) or "nothing"
    _LOGGER.info("configuration reloaded (%s, by %s): changed %s", source, by, changed)
    state.events.publish(
        "config_reloaded",
        instance_id=state.settings.instance_id,
        source=source,
        by=by,
        generation=generation,
        changed=plan.changed,
        requires_restart=sorted(plan.requires_restart),
    )


class ConfigFollower:
    """Applies reloads asked on another gateway replica (through Redis)."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.generation: int | None = None
        """The reload generation this replica runs with (None until Redis answered)."""
        self.lock = asyncio.Lock()
        """Held while a generation is being applied here (a poll, or a reload asked here)."""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take the current generation as applied (the settings were just read) and watch."""
        if self.state.view.client is None:
            return
        await self.poll()
        self._task = asyncio.create_task(self._run(), name="gateway-config-follower")

    async def stop(self) -> None:
        """Stop watching."""
        await stop_task(self._task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.state.view.refresh_s)
            await self.poll()

    async def poll(self) -> None:
        """Apply a newer generation if one was asked; note the one this replica runs with."""
        client = self.state.view.client
        if client is None:
            return
        try:
            async with self.lock:
                generation = await client.get_config_generation()
                if self.generation is None:
                    self.generation = generation
                elif generation > self.generation:
                    self._follow(generation)
                applied = self.generation
            await client.mark_config_applied(self.state.settings.instance_id, applied)
        except RegistryUnavailable as exc:
            _LOGGER.debug("config generation not read: %s", exc.message)

    def _follow(self, generation: int) -> None:
        try:
            plan = plan_reload(self.state.settings, read_settings(self.state.settings))
            reload_here(self.state, plan, source="registry", by=None, generation=generation)
        except ConfigInvalid as exc:
            _LOGGER.error("configuration reload %d not applied here: %s", generation, exc.message)
            self.state.events.publish(
                "config_reload_failed",
                instance_id=self.state.settings.instance_id,
                generation=generation,
                error=exc.message,
            )
        # Either way this generation is done: a failed one is not retried every refresh.
        self.generation = generation


async def _other_gateways(
    client: RegistryClient, generation: int, refresh_s: float
) -> dict[str, list[str]]:
    """Which live gateway replicas run with ``generation``, after waiting a little for them."""
    deadline = time.monotonic() + ACK_WAIT_REFRESHES * refresh_s
    while True:
        applied = await client.config_applied()
        pending = sorted(i for i, g in applied.items() if g < generation)
        if not pending or time.monotonic() >= deadline:
            done = sorted(i for i, g in applied.items() if g >= generation)
            return {"applied": done, "pending": pending}
        await asyncio.sleep(refresh_s / 4)


def get_follower(conn: HTTPConnection) -> ConfigFollower:
    """The app's :class:`ConfigFollower` (set by the app's lifespan)."""
    follower: ConfigFollower = conn.app.state.config_follower
    return follower


ConfigFollowerDep = Annotated[ConfigFollower, Depends(get_follower)]
"""A route parameter of this type gets the app's configuration follower."""


router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)])
"""``POST /v1/admin/config/reload`` (the admin key, or any client key when none is set)."""


@router.post("/config/reload")
async def reload_config(
    principal: AdminPrincipal,
    state: GatewayStateDep,
    follower: ConfigFollowerDep,
    body: ConfigReload | None = Body(None),  # noqa: B008 (FastAPI's way to make it optional)
) -> dict[str, Any]:
    """Re-read the run-time settings and apply them on every gateway replica."""
    request = body or ConfigReload()
    # A 422 here: nothing is applied anywhere.
    plan = plan_reload(state.settings, read_settings(state.settings))
    answer: dict[str, Any] = {
        "changed": plan.changed,
        "unchanged": plan.unchanged,
        "requires_restart": plan.requires_restart,
        "reloaded_by": principal.key_id,
        "instance_id": state.settings.instance_id,
        "dry_run": request.dry_run,
    }
    if request.dry_run:
        return {**answer, "replicas": {"scope": "none"}}
    client = state.view.client
    if client is None:
        reload_here(state, plan, source="admin_api", by=principal.key_id, generation=0)
        return {**answer, "replicas": {"scope": "local"}}
    async with follower.lock:  # its poll must not apply this generation a second time
        # Raises RegistryUnavailable (503) when Redis is down: the other replicas would
        # not hear of it, so none (this one included) changes.
        generation = await client.bump_config_generation()
        follower.generation = generation
        reload_here(state, plan, source="admin_api", by=principal.key_id, generation=generation)
    replicas: dict[str, Any] = {"scope": "shared", "generation": generation}
    try:
        await client.mark_config_applied(state.settings.instance_id, generation)
        replicas |= await _other_gateways(client, generation, state.view.refresh_s)
    except RegistryUnavailable as exc:  # applied here and asked of the others; who did is unknown
        replicas["error"] = exc.message
    return {**answer, "replicas": replicas}
