"""API keys: created once, shown once, stored only as a SHA-256 hash; revoked or expired
at once (every request looks its key up: nothing is cached)."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy import or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from services.models import BUNDLED_OWNER, LOCAL_OWNER, ApiKey

log = logging.getLogger(__name__)

KEY_PREFIX = "cf_"
# Stored in clear to tell keys apart in `crossfold keys list`: 8 of the key's 43 random
# characters (48 of its 256 bits), far too few to use or guess the rest from.
SHOWN_CHARACTERS = 8
# A key's last use is kept to the minute: writing it on every request would cost a write
# per request, where a lookup is otherwise a read.
LAST_USE_RESOLUTION = timedelta(seconds=60)

ACTIVE, REVOKED, EXPIRED = "active", "revoked", "expired"
OWNER_NAME = r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}"
# Owners are MLflow users of the same name: none may take the admin's (docker-compose.yml's
# `crossfold`, or whatever MLFLOW_TRACKING_USERNAME names), or their key would become its password.
RESERVED_MLFLOW_USERS = {"crossfold", "admin", os.environ.get("MLFLOW_TRACKING_USERNAME", "crossfold").lower()}


def hash_key(key: str) -> str:
    # A plain SHA-256 is enough: keys are 256 random bits, not guessable passwords.
    return hashlib.sha256(key.encode()).hexdigest()


def shown_prefix(key: str) -> str:
    """The part of a key stored in clear: its first characters after `cf_`."""
    return key.removeprefix(KEY_PREFIX)[:SHOWN_CHARACTERS]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def issue_key(*, session: Session, owner: str, expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """A new key for `owner`, as its stored row and the key itself: the only time the key
    exists outside its user."""
    check_owner(owner)
    if expires_at is not None and expires_at <= utcnow():
        raise ValueError(f"the expiry {expires_at:%Y-%m-%d %H:%M} UTC is not in the future")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(owner=owner, key_hash=hash_key(key), prefix=shown_prefix(key), expires_at=expires_at)
    session.add(row)
    session.commit()
    return row, key


def create_key(*, session: Session, owner: str, expires_at: datetime | None = None) -> str:
    """A new key for `owner` (issue_key, the key alone)."""
    return issue_key(session=session, owner=owner, expires_at=expires_at)[1]


def check_owner(owner: str) -> None:
    # A name that is also an MLflow user name, a basic-auth login (no ':') and the first
    # part of the owner's experiment names (no '/').
    if not re.fullmatch(OWNER_NAME, owner):
        raise ValueError("owner must be 1 to 100 letters, digits, '_', '.', '@' or '-', starting "
                         "with a letter or digit")
    if owner.lower() in RESERVED_MLFLOW_USERS:
        raise ValueError(f"{owner!r} is reserved: it is the MLflow admin the dispatcher logs in as")
    if owner == LOCAL_OWNER:
        # Jobs submitted while authentication was off belong to this owner.
        raise ValueError(f"{LOCAL_OWNER!r} is reserved for the unauthenticated embedded mode")
    if owner == BUNDLED_OWNER:
        raise ValueError(f"{BUNDLED_OWNER!r} is reserved: it owns the bundled datasets")


def state_of(row: ApiKey, now: datetime | None = None) -> str:
    """active, revoked or expired; a revoked key says so even once past its expiry."""
    if row.revoked:
        return REVOKED
    if row.expires_at is not None and row.expires_at <= (now or utcnow()):
        return EXPIRED
    return ACTIVE


def owner_of(*, session: Session, key: str, now: datetime | None = None) -> str | None:
    """The owner a key belongs to, or None for an unknown, revoked or expired key. Notes
    the key's use, at most once a minute (see note_use)."""
    now = now or utcnow()
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or state_of(row, now) != ACTIVE:
        return None
    if row.last_used_at is None or row.last_used_at < now - LAST_USE_RESOLUTION:
        note_use(session, row.id, now)
    return row.owner


def note_use(session: Session, key_id: int, now: datetime) -> None:
    """Set a key's last use to `now` unless another request did within the minute.

    Only called once the row read says the last use is stale, so a key in steady use
    costs one write a minute, not one a request. The condition is repeated in the
    UPDATE so that concurrent requests seeing the same stale value write once between
    them. The write is bookkeeping: if the database refuses it for a passing reason
    (SQLite's write lock held past its timeout, a dropped connection), the request
    that presented a valid key still goes through."""
    stale = or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USE_RESOLUTION)
    try:
        session.execute(update(ApiKey).where(ApiKey.id == key_id, stale).values(last_used_at=now))
        session.commit()
    except OperationalError as error:
        session.rollback()
        log.warning("could not record the use of API key %s: %s", key_id, error.orig)


def list_keys(*, session: Session, owner: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.id)
    if owner is not None:
        query = query.where(ApiKey.owner == owner)
    return list(session.scalars(query))


def revoke_key(*, session: Session, key_id: int) -> ApiKey | None:
    """Revoke a key, from its next request on; None if there is no such key. Revoking a
    revoked key changes nothing."""
    row = session.get(ApiKey, key_id)
    if row is None:
        return None
    row.revoked = True
    session.commit()
    return row
