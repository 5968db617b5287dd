"""API keys: created once, shown once, stored only as a SHA-256 hash."""
from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.models import BUNDLED_OWNER, LOCAL_OWNER, ApiKey

KEY_PREFIX = "cf_"


def hash_key(key: str) -> str:
    # A plain SHA-256 is enough: keys are 256 random bits, not guessable passwords.
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(*, session: Session, owner: str) -> str:
    """A new key for `owner`; the only time the key itself exists outside its user."""
    if not owner or len(owner) > 100:
        raise ValueError("owner must be 1 to 100 characters")
    if owner == LOCAL_OWNER:
        # Jobs submitted while authentication was off belong to this owner.
        raise ValueError(f"{LOCAL_OWNER!r} is reserved for the unauthenticated embedded mode")
    if owner == BUNDLED_OWNER:
        raise ValueError(f"{BUNDLED_OWNER!r} is reserved: it owns the bundled datasets")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(owner=owner, key_hash=hash_key(key)))
    session.commit()
    return key


def owner_of(*, session: Session, key: str) -> str | None:
    """The owner a key belongs to, or None for an unknown or revoked key."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key),
                                              ApiKey.revoked.is_(False)))
    return row.owner if row else None
