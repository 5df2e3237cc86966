"""The control panel (``control-panel/``), served as static files at ``/``.

The page itself is public: it holds no secret, and every API call it makes carries
the key the user typed. The mount goes after every route, so ``/v1``, ``/ws``,
``/health``, ``/ready`` and ``/metrics`` always win; a WebSocket to a path no route
knows is closed (403 before accept) instead of reaching the file server.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from voicemesh.protocol import CLOSE_POLICY

_LOGGER = logging.getLogger(__name__)


class PanelFiles(StaticFiles):
    """Static files for HTTP; any other scope (a stray WebSocket) is refused."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a file, or close a WebSocket that matched no route."""
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": "no such route"})
            return
        await super().__call__(scope, receive, send)


def mount_control_panel(app: FastAPI, folder: Path | None, client_js: Path | None = None) -> bool:
    """Serve ``folder`` at ``/`` if it holds an ``index.html``; call after every route.

    ``client_js`` (``client/js``) holds ``voicemesh.js``, the JavaScript client the panel
    imports: it is served as ``/voicemesh.js``, beside the panel's own files.
    """
    if folder is None:
        return False
    if not (folder / "index.html").is_file():
        _LOGGER.warning("control panel not served: no index.html in %s", folder)
        return False
    module = client_js / "voicemesh.js" if client_js is not None else None
    if module is not None and module.is_file():

        async def client_module(request: Request) -> FileResponse:
            return FileResponse(module, media_type="text/javascript")

        # A plain Starlette route: public like the panel's files, outside the API's key check.
        app.router.routes.append(Route("/voicemesh.js", client_module, include_in_schema=False))
    else:
        _LOGGER.warning("the control panel's client module is missing: no %s", module)
    app.mount("/", PanelFiles(directory=folder, html=True), name="control-panel")
    return True
