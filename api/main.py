"""The app factory: builds the FastAPI app, its database access and its error mapping."""
from __future__ import annotations

import gc
import logging
import re
import weakref
from contextlib import asynccontextmanager

import anyio

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from api.batching import Interrupted, StoreFailed, batcher_for
from api.limits import BodyLimit
from api.routes import datasets, health, jobs, metrics, studies
from services.database import (Reachability, make_engine, session_factory, unreachable,
                               upgrade_schema)
from services.capacity import KnownNodes
from services.dataset_store import DatasetStore
from services.datasets import register_bundled
from services.errors import (BundledDataset, DatasetInUse, DatasetNameTaken, DatasetNotFound,
                             IdempotencyConflict, InvalidDataset, InvalidJob, JobAlreadyFinished, StudyNotFound,
                             JobNotFound, UnsupportedFormat, UploadTooLarge)
from services.metrics import registry_for
from services.models import LOCAL_OWNER
from services.quotas import QuotaExceeded
from services.readiness import Readiness, service_checks
from services.settings import Settings, get_settings
from services.wakeups import Wakeup

log = logging.getLogger("crossfold.api")
FROZEN = False  # gc.freeze() done in this process


def create_app(settings: Settings | None = None, sessions: sessionmaker[Session] | None = None,
               wakeup: Wakeup | None = None) -> FastAPI:
    """`wakeup`: the dispatcher's, when it runs in this process (`crossfold serve`): the API
    wakes it once a job is stored or a cancel requested (services.wakeups)."""
    settings = settings or get_settings()
    if sessions is None:
        engine = make_engine(settings.resolved_database_url())
        upgrade_schema(engine)
        sessions = session_factory(engine)
    # The docs pages (/docs, /redoc) load their scripts from the installed fastapi-offline
    # package, not from a CDN: GPU clusters are often offline.
    app = FastAPIOffline(title="crossfold", version="0.1.0", lifespan=lifespan(settings.api_threads),
                         description="Cross-validation training jobs: one Ray task per fold, "
                                     "results in MLflow.",
                         swagger_ui_parameters={"validatorUrl": None})  # no call to swagger.io
    app.state.settings, app.state.sessions = settings, sessions
    app.state.wakeup = wakeup or Wakeup()  # a signal no one waits on, with no dispatcher here
    app.state.known_nodes = KnownNodes(sessions)  # the cluster's nodes, as the dispatcher saw them
    app.state.readiness = Readiness(service_checks(sessions, tracking_uri=settings.resolved_tracking_uri(),
                                                   lease_s=settings.lease_s))
    # A dispatcher in this process (it gave its wakeup) adds its own metrics to /metrics.
    app.state.metrics = registry_for(sessions, with_dispatcher=wakeup is not None)
    describe_authentication(app, settings.requires_auth())
    app.state.batchers = weakref.WeakKeyDictionary()  # one SubmissionBatcher per event loop
    app.state.database = Reachability(log, "API")
    settings.export_s3_credentials()  # where the dataset store's pyarrow reads them
    app.state.store = DatasetStore(settings.resolved_dataset_store())
    app.state.bundled = {}  # name → the bundled dataset, filled at start-up (lifespan)
    app.include_router(jobs.router)
    app.include_router(studies.router)
    app.include_router(datasets.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes,
                       streamed=frozenset({("POST", "/datasets")}))
    add_error_handlers(app)
    if not settings.requires_auth():
        # Loopback is not a login: a page the user visits can reach 127.0.0.1 through a
        # DNS name it controls (rebinding). Such a request names that name in its Host.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.trusted_hosts())
        log.warning("authentication is OFF: every caller is owner %r (the API listens on %s only)",
                    LOCAL_OWNER, settings.api_host)

    return app


def describe_authentication(app: FastAPI, required: bool) -> None:
    """Make the OpenAPI schema say what this service does: with authentication on, the
    job routes require a bearer key (HTTP bearer scheme) and may answer 401; off (the
    embedded default on loopback), they neither require nor read one, and the schema
    declares none, so that schema-driven clients and fuzzers are not misled."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            for operation in (op for path in schema["paths"].values() for op in path.values()):
                if "security" not in operation:
                    continue
                if required:
                    operation["responses"]["401"] = {"description": "a valid API key is required"}
                else:
                    del operation["security"]
            if not required:
                schema.get("components", {}).pop("securitySchemes", None)
        return app.openapi_schema

    app.openapi = openapi


def lifespan(threads: int):
    """At start-up: handlers run in a pool of `threads` worker threads. Fewer than anyio's
    default 40: on a small machine, 40 threads fighting over the GIL and the database
    serve fewer requests, and more unevenly, than a handful taking turns.

    Then the bundled datasets are stored as ordinary datasets, if this database has not
    got them yet (services.datasets.register_bundled). Last, everything allocated
    so far (the app and its libraries, hundreds of thousands of objects) is moved out of
    the garbage collector's reach: a full collection walked them all while no request
    moved, which showed in the latency tail under load (bench/submit_load.py measures it)."""
    @asynccontextmanager
    async def run(app: FastAPI):
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        with app.state.sessions() as session:
            app.state.bundled = register_bundled(session=session, store=app.state.store)
        freeze_start_up_objects()
        yield
        await batcher_for(app).close()  # answer what is queued before stopping
    return run


def freeze_start_up_objects() -> None:
    global FROZEN
    if not FROZEN:  # once per process: the objects of later apps (tests) are garbage too
        gc.collect()
        gc.freeze()
        FROZEN = True


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        response = await http_exception_handler(request, error)
        if error.status_code == 405:
            # Starlette names only the first route on this path; GET and POST /jobs are two.
            if methods := methods_on_path(request):
                response.headers["Allow"] = ", ".join(sorted(methods))
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError):
        # Field, rule and message only: echoing the input back would fail on NaN
        # (not valid JSON) and repeat large bodies.
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(JobNotFound)
    async def not_found(_: Request, error: JobNotFound):
        return JSONResponse({"detail": f"job {error} not found"}, status_code=404)

    # The other domain errors say what is wrong themselves; their class sets the status.
    for error_type, code in {DatasetNotFound: 404, StudyNotFound: 404, JobAlreadyFinished: 409, IdempotencyConflict: 409,
                             DatasetInUse: 409, DatasetNameTaken: 409, BundledDataset: 403,
                             InvalidDataset: 422, UnsupportedFormat: 415, UploadTooLarge: 413}.items():
        app.add_exception_handler(error_type, as_status(code))

    @app.exception_handler(StoreFailed)
    async def unavailable(request: Request, error: StoreFailed):
        if unreachable(error.__cause__):
            request.app.state.database.failed(error.__cause__)
        return JSONResponse({"detail": f"{error}; nothing was stored, try again"}, status_code=503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(DBAPIError)
    async def database_down(request: Request, error: DBAPIError):
        if not unreachable(error):
            raise error  # a statement the database refused: a server error, as any other
        # One line in the log when it goes (and one when it is back), not a traceback per
        # request: the client is told to come back.
        request.app.state.database.failed(error)
        return JSONResponse({"detail": "the database cannot be reached; try again shortly"},
                            status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(QuotaExceeded)
    async def over_quota(_: Request, error: QuotaExceeded):
        return JSONResponse({"detail": str(error)}, status_code=429,
                            headers={"Retry-After": str(error.retry_after)})

    @app.exception_handler(Interrupted)
    async def interrupted(_: Request, error: Interrupted):
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(InvalidJob)
    async def invalid(_: Request, error: InvalidJob):
        # Same shape as FastAPI's own validation errors, so clients parse one format.
        loc = ["body", *error.field.split(".")]
        return JSONResponse({"detail": [{"loc": loc, "msg": error.message,
                                         "type": "value_error"}]}, status_code=422)


def as_status(code: int):
    async def handler(_: Request, error: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=code)
    return handler


def methods_on_path(request: Request) -> set[str]:
    """Every method the API documents for this request's path."""
    paths = request.app.openapi()["paths"]
    return {method.upper() for template, operations in paths.items()
            if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), request.url.path)
            for method in operations}
