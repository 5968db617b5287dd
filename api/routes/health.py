"""/healthz: whether the API can do its work (its database answers); /readyz: whether
the whole service can (its database, Ray and MLflow answer), and if not, what is down.
Neither needs an API key, as probes (a load balancer, Kubernetes) send none; neither
names an address (services.public_errors)."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from services.database import reason, unreachable
from services.public_errors import public_message
from services.readiness import is_ok

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    database: str  # "ok", or "unreachable: " and the driver's reason


@router.get("/healthz", response_model=Health,
            responses={503: {"model": Health, "description": "the database cannot be reached"}})
def healthz(request: Request) -> JSONResponse:
    try:
        with request.app.state.sessions() as session:
            session.execute(text("SELECT 1"))
    except DBAPIError as error:
        if not unreachable(error):
            raise
        request.app.state.database.failed(error)
        # Unauthenticated: the reason without the database's host or address (the log has it).
        return JSONResponse({"status": "unavailable", "database": f"unreachable: {public_message(reason(error))}"},
                            status_code=503, headers={"Retry-After": "5"})
    request.app.state.database.succeeded()
    return JSONResponse({"status": "ok", "database": "ok"})


class Ready(BaseModel):
    status: Literal["ok", "unavailable"]
    database: str  # "ok", or why not
    ray: str
    mlflow: str


@router.get("/readyz", response_model=Ready,
            responses={503: {"model": Ready, "description": "a dependency does not answer: "
                                                                  "each says ok or why not"}})
def readyz(request: Request) -> JSONResponse:
    checks = request.app.state.readiness.current()  # at most one round of checks a second
    ready = all(is_ok(status) for status in checks.values())
    return JSONResponse({"status": "ok" if ready else "unavailable", **checks},
                        status_code=200 if ready else 503, headers={} if ready else {"Retry-After": "5"})
