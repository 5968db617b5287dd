"""Owners' MLflow logins, where MLflow runs its basic-auth app: an owner logs in as their
owner name with an API key of theirs as the password. The key that is the password is
marked (ApiKey.mlflow_login); once it is revoked or expires, the password is replaced by
a random one, so that a key refused by the API is refused by MLflow too.
"""
from __future__ import annotations

import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.auth import utcnow
from services.models import ApiKey
from services.mlflow_access import MlflowAccess


def use_as_mlflow_password(session: Session, access: MlflowAccess, key_row: ApiKey, key: str) -> None:
    """Make a new key its owner's MLflow password (the owner's earlier one stops working)."""
    access.set_password(key_row.owner, key)
    session.execute(update(ApiKey).where(ApiKey.owner == key_row.owner).values(mlflow_login=False))
    key_row.mlflow_login = True
    session.commit()


def retire(session: Session, access: MlflowAccess, key_row: ApiKey) -> None:
    """The key is no longer the owner's MLflow password: nobody knows the new one."""
    access.set_password(key_row.owner, secrets.token_urlsafe(32))
    key_row.mlflow_login = False
    session.commit()


def retire_refused_logins(session: Session, access: MlflowAccess) -> int:
    """Replace every MLflow password that is a revoked or expired key; how many were."""
    refused = session.scalars(select(ApiKey).where(
        ApiKey.mlflow_login.is_(True), ApiKey.revoked.is_(True) | (ApiKey.expires_at <= utcnow())))
    count = 0
    for key_row in refused:
        retire(session, access, key_row)
        count += 1
    return count
