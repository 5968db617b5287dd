"""/metrics, in Prometheus's text format or OpenMetrics (services.metrics). It needs no
API key: it holds service-wide counts and timings, nothing of any owner's (no owner, no
job name)."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response

from services.metrics import exposition

router = APIRouter(tags=["health"])
TEXT = {"schema": {"type": "string"}}


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": TEXT, "application/openmetrics-text": TEXT},
                             "description": "the service's metrics, for Prometheus"}})
def metrics(request: Request) -> Response:
    body, content_type = exposition(request.app.state.metrics, request.headers.get("accept", ""))
    return Response(body, media_type=content_type)
