"""/healthz: whether the service can do its work, and if not, what is down."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from services.database import reason, unreachable
from services.public_errors import public_message

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
