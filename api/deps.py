"""Request dependencies, as Annotated aliases."""
from __future__ import annotations

from typing import Annotated, AsyncIterator

import anyio
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from services.auth import owner_of
from services.models import LOCAL_OWNER
from services.settings import Settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A database session for one request.

    An async dependency on purpose: its clean-up (returning the connection to the pool)
    then runs on the event loop. As a sync one it would need a worker thread, and under
    load every worker thread can be taken by requests waiting for a connection that only
    that clean-up would free: a deadlock until the pool times out.
    """
    session = request.app.state.sessions()
    try:
        yield session
        request.app.state.database.succeeded()  # a request went through: say so if it had been down
    finally:
        session.close()


# The dependencies below are async: a plain `def` one would cost every request a hop to
# a worker thread and back, even where it only reads app state.
async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


bearer = HTTPBearer(auto_error=False, description="an API key from `crossfold keys create`")


async def get_owner(request: Request,
                    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    """Who is calling: the owner of the presented API key, or the local owner when
    authentication is off. Every job route is scoped to this owner."""
    if not request.app.state.settings.requires_auth():
        return LOCAL_OWNER
    owner = None
    if credentials:
        owner = await anyio.to_thread.run_sync(look_up_owner, request.app.state.sessions,
                                               credentials.credentials)
    if owner is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "a valid API key is required "
                            "(Authorization: Bearer KEY)", headers={"WWW-Authenticate": "Bearer"})
    return owner


def look_up_owner(sessions, key: str) -> str | None:
    # A session of its own, closed at once: holding a connection from here until the
    # handler runs in another thread could deadlock the pool (see get_session). Looked up
    # on every request, never cached, so that a revoked or expired key is refused at once.
    # Here, in the worker thread, is also where the key's last use is written, about once
    # a minute (services.auth.note_use): never on the event loop.
    with sessions() as session:
        return owner_of(session=session, key=key)


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
OwnerDep = Annotated[str, Depends(get_owner)]


def mlflow_client(request: Request):
    """The MLflow client the API reads curves with (figures), made on first use: most API
    processes never draw one. Credentials for an MLflow server with basic-auth come from
    the standard MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD variables."""
    client = getattr(request.app.state, "mlflow_client", None)
    if client is None:
        from mlflow.tracking import MlflowClient
        client = request.app.state.mlflow_client = MlflowClient(
            request.app.state.settings.resolved_tracking_uri())
    return client
