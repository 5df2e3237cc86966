"""Route dependencies of the gateway, as ``Annotated`` aliases.

A route (HTTP or WebSocket) that needs the replica's shared state takes a parameter
``state: GatewayStateDep``; nothing else digs in ``app.state``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from gateway.state import GatewayState


def get_state(conn: HTTPConnection) -> GatewayState:
    """The :class:`GatewayState` of the app serving ``conn`` (set by the app's lifespan)."""
    state: GatewayState = conn.app.state.gateway
    return state


GatewayStateDep = Annotated[GatewayState, Depends(get_state)]
"""A route parameter of this type gets the gateway's state."""
