"""The benchmark service: measure the live mesh from the gateway itself (admin key).

* ``POST /v1/benchmark/run``: start a run (202 with its id at once; 409
  ``benchmark_running`` with ``run_id`` and ``retry_after`` while another is under way);
* ``GET /v1/benchmark/results``: the kept runs, newest first;
* ``GET /v1/benchmark/results/{id}``: one run: progress while it runs, then its rows
  (every request, failed ones with their error) and its summary.

The runs themselves: :mod:`gateway.benchmark_runner`; what one request measures:
:mod:`gateway.benchmark_measure`; where runs are kept: :mod:`gateway.benchmark_store`.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import HTTPConnection

from gateway.auth import AdminPrincipal, require_admin
from gateway.benchmark_runner import MAX_CLIENTS, BenchmarkRunner
from gateway.benchmark_store import BenchmarkKind, BenchmarkRun
from voicemesh.assets.speech_clips import bundled_clips
from voicemesh.errors import BenchmarkRunning
from voicemesh.http import error_body

_LOGGER = logging.getLogger(__name__)

RESULTS_PATH = "/v1/benchmark/results"
BUNDLED_CLIPS = len(bundled_clips())
DEFAULT_CLIPS = min(2, BUNDLED_CLIPS)


def get_runner(conn: HTTPConnection) -> BenchmarkRunner:
    """The app's :class:`BenchmarkRunner` (set by the app's lifespan)."""
    runner: BenchmarkRunner = conn.app.state.benchmarks
    return runner


BenchmarkRunnerDep = Annotated[BenchmarkRunner, Depends(get_runner)]
"""A route parameter of this type gets the app's benchmark runner."""


class BenchmarkRequest(BaseModel):
    """Body of ``POST /v1/benchmark/run`` (any other field: 422 ``unknown_field``)."""

    model_config = ConfigDict(extra="forbid")

    kind: BenchmarkKind = "stt"
    """``stt``: stream the clips; ``tts``: speak the sentences; ``both``."""
    clients: int = Field(1, ge=1, le=MAX_CLIENTS)
    """Concurrent clients, each making every request of the run."""
    clips: int = Field(DEFAULT_CLIPS, ge=1, le=BUNDLED_CLIPS)
    """How many of the bundled clips each client streams (the first ones)."""
    real_time: bool = True
    """Stream at the pace the clips were spoken (false: as fast as the mesh takes them)."""


router = APIRouter(
    prefix="/v1/benchmark", tags=["benchmark"], dependencies=[Depends(require_admin)]
)
"""The benchmark routes: the admin key, or any client key when none is set."""


def results_url(run_id: str) -> str:
    """Where a run's results are read."""
    return f"{RESULTS_PATH}/{run_id}"


def run_answer(run: BenchmarkRun, store: str) -> dict[str, Any]:
    """``GET /v1/benchmark/results/{id}``'s body: the run, where it is kept, its URL."""
    body = run.model_dump(exclude={"heartbeat_at"})
    body["store"] = store
    body["results_url"] = results_url(run.id)
    return body


@router.post("/run", status_code=202)
async def start_run(
    body: BenchmarkRequest, principal: AdminPrincipal, runner: BenchmarkRunnerDep
) -> JSONResponse:
    """Start a run in the background; its id and where to read its results, at once."""
    run = await runner.start(
        principal, kind=body.kind, clients=body.clients, clips=body.clips, real_time=body.real_time
    )
    answer = {
        "id": run.id,
        "status": run.status,
        "kind": run.kind,
        "clients": run.clients,
        "clips": run.clips,
        "real_time": run.real_time,
        "estimated_s": run.estimated_s,
        "store": runner.store.name,
        "results_url": results_url(run.id),
    }
    return JSONResponse(answer, status_code=202, headers={"Location": results_url(run.id)})


@router.get("/results")
async def list_results(runner: BenchmarkRunnerDep) -> dict[str, Any]:
    """The kept runs, newest first, with their progress."""
    runs = await runner.recent()
    return {"runs": [run.listing() for run in runs], "store": runner.store.name}


@router.get("/results/{run_id}")
async def get_result(run_id: str, runner: BenchmarkRunnerDep) -> dict[str, Any]:
    """One run: progress while it runs, rows and summary once done (404 when unknown)."""
    return run_answer(await runner.get(run_id), runner.store.name)


def install_benchmark_errors(app: FastAPI) -> None:
    """A refused second run as the JSON error, with ``run_id`` and ``Retry-After``."""

    @app.exception_handler(BenchmarkRunning)
    async def _running(request: Request, exc: BenchmarkRunning) -> JSONResponse:
        rid = str(getattr(request.state, "request_id", "") or "")
        _LOGGER.info("request %s refused: %s", rid, exc.message)
        body = error_body(
            exc.code, exc.message, rid, run_id=exc.run_id, retry_after=exc.retry_after
        )
        return JSONResponse(
            body, status_code=exc.status_code, headers={"Retry-After": str(exc.retry_after)}
        )
