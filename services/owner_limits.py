"""The administrator's per-owner overrides of the service's limits (`crossfold keys
limits`). A None column, or no row, means the service's default setting; enforcing
them is services.quotas' work, not this module's."""
from __future__ import annotations

from sqlalchemy.orm import Session

from services.models import OwnerLimits

# Each limit and the largest value its column holds (PostgreSQL's integer is 32 bits): a
# larger one would be refused by the database instead of here, with a worse message.
LARGEST = {"max_queued_jobs": 2**31 - 1, "max_running_folds": 2**31 - 1,
           "submissions_per_minute": 2**31 - 1, "max_dataset_bytes": 2**63 - 1,
           "max_job_runtime_s": 2**31 - 1}
LIMITS = tuple(LARGEST)


def limits_of(session: Session, owner: str) -> OwnerLimits | None:
    """The owner's overrides, or None when every limit is the service's default."""
    return session.get(OwnerLimits, owner)


def set_limits(session: Session, owner: str, **values: int | None) -> OwnerLimits:
    """Set the given limits of `owner`; None puts one back to the default. Limits not
    given keep their stored value."""
    if not owner or len(owner) > 100:
        raise ValueError("owner must be 1 to 100 characters")
    check_limits(values)
    row = limits_of(session, owner) or OwnerLimits(owner=owner)
    for name, value in values.items():
        setattr(row, name, value)
    session.add(row)
    session.commit()
    return row


def reset_limits(session: Session, owner: str) -> bool:
    """Back to the service's defaults for every limit; False if there was nothing to reset."""
    row = limits_of(session, owner)
    if row is None:
        return False
    session.delete(row)
    session.commit()
    return True


def check_limits(values: dict) -> None:
    for name, value in values.items():
        if name not in LARGEST:
            raise ValueError(f"unknown limit {name!r}; the limits are {', '.join(LIMITS)}")
        if value is None:
            continue
        # bool is an int to Python, but `True` queued jobs is a mistake, not a limit.
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= LARGEST[name]:
            raise ValueError(f"{name} must be a positive integer (at most {LARGEST[name]}), not {value!r}")
