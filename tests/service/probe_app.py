"""A tiny service for the runner tests: answers /health and tells who it is."""

from __future__ import annotations

import os

from fastapi import FastAPI


def create_app() -> FastAPI:
    """An app with ``/health`` and ``/pid`` (the process id and the environment it got)."""
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/pid")
    async def pid() -> dict[str, object]:
        return {
            "pid": os.getpid(),
            "env": {
                name: value
                for name, value in os.environ.items()
                if name.startswith("VOICEMESH_") or name == "PYTHONUNBUFFERED"
            },
        }

    return app


def create_failing_app() -> FastAPI:
    """A factory that fails the way a service with a broken model would."""
    raise RuntimeError("probe refuses to start: model file missing")
