"""Who is calling: the configured API keys and the principal a presented key names.

Keys come from settings: ``api_keys`` plus the lines of ``api_keys_file`` (blank
lines and ``#`` comments skipped; the file is read again when it changes, so keys
rotate without a restart). Keys are compared as SHA-256 digests with
:func:`hmac.compare_digest`, against every configured key, so timing says nothing
about which key or how much matched. A principal is named by a short fingerprint of
its key, never the key itself.

Pure bookkeeping, no FastAPI: :mod:`gateway.state` holds a :class:`KeyRing` and
:mod:`gateway.auth` asks it at the door.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from gateway.settings import GatewaySettings
from voicemesh.protocol import ANONYMOUS

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key fingerprint (never the key), and whether it may administer."""

    key_id: str
    admin: bool
    anonymous: bool = False

    @property
    def limit_key(self) -> str | None:
        """The key its per-key limits are booked under (None: only overall limits)."""
        return None if self.anonymous else self.key_id


def fingerprint(key: str) -> str:
    """A short, non-secret name for a key (8 hex digits of its SHA-256)."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def read_key_file(path: Path) -> list[str]:
    """The keys of a key file: one a line, blank lines and ``#`` comments skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


class KeyRing:
    """The configured client keys and admin key; tells a principal from a presented key."""

    def __init__(
        self, client_keys: list[str], admin_key: str | None = None, key_file: Path | None = None
    ) -> None:
        self._inline = [k for k in (key.strip() for key in client_keys) if k]
        self._admin: tuple[bytes, str] | None = None
        if admin_key:
            self._admin = (_digest(admin_key), f"admin-{fingerprint(admin_key)}")
        self._key_file = key_file
        self._file_stamp: tuple[float, int] | None = None
        self._clients: list[tuple[bytes, str]] = []
        if key_file is not None:
            try:
                self._file_stamp = self._stamp(key_file)
                file_keys = read_key_file(key_file)
            except (OSError, ValueError) as exc:  # ValueError: not UTF-8
                raise ValueError(f"cannot read api_keys_file {key_file}: {exc}") from exc
        else:
            file_keys = []
        self._set_clients(file_keys)

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> KeyRing:
        """The keys the gateway settings configure."""
        admin = settings.admin_key.get_secret_value() if settings.admin_key else None
        return cls(
            [key.get_secret_value() for key in settings.api_keys], admin, settings.api_keys_file
        )

    @staticmethod
    def _stamp(path: Path) -> tuple[float, int]:
        stat = path.stat()
        return stat.st_mtime, stat.st_size

    def _set_clients(self, file_keys: list[str]) -> None:
        keys = dict.fromkeys(self._inline + file_keys)
        self._clients = [(_digest(key), f"key-{fingerprint(key)}") for key in keys]

    def _reload_if_changed(self) -> None:
        """Pick up an edited key file; a file that vanished keeps the last keys."""
        if self._key_file is None:
            return
        try:
            stamp = self._stamp(self._key_file)
            if stamp == self._file_stamp:
                return
            file_keys = read_key_file(self._key_file)
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8
            _LOGGER.warning(
                "cannot re-read api_keys_file %s, keeping the last keys: %s", self._key_file, exc
            )
            return
        self._file_stamp = stamp
        self._set_clients(file_keys)
        _LOGGER.info("api_keys_file %s reloaded: %d keys", self._key_file, len(file_keys))

    @property
    def enabled(self) -> bool:
        """True when client keys are configured (auth is on).

        A configured key file keeps auth on even while it lists no key: emptying
        or truncating it must lock clients out, not open the gateway.
        """
        self._reload_if_changed()
        return bool(self._clients) or self._key_file is not None

    def identify(self, presented: str | None) -> Principal | None:
        """The principal of a presented key; None when the key is missing or wrong.

        With auth off, any caller without a recognised key is anonymous.
        """
        self._reload_if_changed()
        if presented:
            digest = _digest(presented)
            # Compare against every key without stopping early.
            found: str | None = None
            for stored, key_id in self._clients:
                if hmac.compare_digest(digest, stored) and found is None:
                    found = key_id
            if self._admin is not None and hmac.compare_digest(digest, self._admin[0]):
                return Principal(key_id=self._admin[1], admin=True)
            if found is not None:
                return Principal(key_id=found, admin=self._admin is None)
        if not self.enabled:
            return Principal(key_id=ANONYMOUS, admin=self._admin is None, anonymous=True)
        return None
