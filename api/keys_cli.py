"""`crossfold keys ...`: API keys and owners' limits, on the service's database itself (the
API offers no route for them), and the owners' MLflow logins where MLflow runs basic-auth."""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone

# The limits `keys limits` sets (services.owner_limits.LIMITS), with their help; spelled
# out here so that the CLI starts without importing the database layer.
LIMIT_OPTIONS = {
    "max_queued_jobs": "jobs queued at once",
    "max_running_folds": "folds running at once, over all the owner's jobs",
    "submissions_per_minute": "jobs submitted per minute",
    "max_dataset_bytes": "bytes all of the owner's datasets may keep (stored Parquet)",
    "max_job_runtime_s": "a job's running time, in seconds",
}


def add_key_commands(commands) -> None:
    keys = commands.add_parser("keys", help="manage API keys and owners' limits (opens the database)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key for an owner; printed once")
    create.add_argument("--owner", required=True)
    expiry = create.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", type=int, metavar="DAYS",
                        help="the key stops working DAYS days from now")
    expiry.add_argument("--expires", type=iso_date, metavar="YYYY-MM-DD",
                        help="the key stops working on this day (at 00:00 UTC)")
    listing = key_commands.add_parser("list", help="keys, their prefix and state (never the keys themselves)")
    listing.add_argument("--owner")
    revoke = key_commands.add_parser("revoke", help="revoke a key: its next request is refused")
    revoke.add_argument("key_id", type=int, metavar="ID", help="the key's id (keys list)")
    limits = key_commands.add_parser("limits", help="show or set an owner's own limits; without "
                                     "values, shows them")
    limits.add_argument("--owner", required=True)
    for name, meaning in LIMIT_OPTIONS.items():
        limits.add_argument("--" + name.replace("_", "-"), type=int, metavar="N",
                            help=f"at most N: {meaning}")
    limits.add_argument("--reset", action="store_true", help="back to the service's defaults for every limit")


def iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, not {text!r}") from None


@contextmanager
def database_session():
    """A session on the service's database (CROSSFOLD_DATABASE_URL), its schema upgraded:
    the keys commands work on the database itself, the API offers no route for them."""
    from services.database import make_engine, session_factory, upgrade_schema
    from services.settings import get_settings
    engine = make_engine(get_settings().resolved_database_url())
    try:
        upgrade_schema(engine)
        with session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()


def keys_command(args) -> int:
    with database_session() as session:
        try:
            return KEY_COMMANDS[args.keys_command](session, args)
        except ValueError as error:  # what the administrator asked for is not possible
            print(f"error: {error}", file=sys.stderr)
            return 2


def create_key_command(session, args) -> int:
    """Create the key, then print it: on stdout alone, so `KEY=$(crossfold keys create ...)`
    captures the key and nothing else."""
    from services.auth import issue_key
    row, key = issue_key(session=session, owner=args.owner, expires_at=expiry_of(args))
    print(key)
    until = f", valid until {row.expires_at:%Y-%m-%d %H:%M} UTC" if row.expires_at else ""
    print(f"API key {row.id} for owner {args.owner!r}{until}. It is shown only this once: store it now.",
          file=sys.stderr)
    return set_mlflow_password(session, row, key)


def set_mlflow_password(session, row, key: str) -> int:
    """Where MLflow runs its basic-auth app, the owner logs in to it with this key."""
    from api.server import mlflow_access
    from services.mlflow_logins import use_as_mlflow_password
    from services.settings import get_settings
    if (access := mlflow_access(get_settings())) is None:
        return 0
    try:
        use_as_mlflow_password(session, access, row, key)
    except Exception as error:  # the key stands; only the MLflow login is missing
        print(f"error: the key was created, but MLflow did not take it as {row.owner!r}'s password "
              f"({error}); create another key once MLflow answers", file=sys.stderr)
        return 1
    print(f"MLflow: log in as {row.owner!r} with this key as the password.", file=sys.stderr)
    return 0


def expiry_of(args) -> datetime | None:
    if args.expires_in is not None:
        if args.expires_in <= 0:
            raise ValueError(f"--expires-in must be a positive number of days, not {args.expires_in}")
        return datetime.now(timezone.utc) + timedelta(days=args.expires_in)
    if args.expires is not None:
        return datetime.combine(args.expires, datetime.min.time(), tzinfo=timezone.utc)
    return None


def list_keys_command(session, args) -> int:
    from services.auth import list_keys, state_of
    keys = list_keys(session=session, owner=args.owner)
    rows = [[str(key.id), key.owner, f"cf_{key.prefix}…" if key.prefix else "(older key)",
             minute(key.created_at), minute(key.last_used_at, "never"), minute(key.expires_at, "never"),
             state_of(key)] for key in keys]
    print(table(["ID", "OWNER", "PREFIX", "CREATED", "LAST USED", "EXPIRES", "STATE"], rows))
    print(f"{len(keys)} key{'' if len(keys) == 1 else 's'}")
    return 0


def minute(moment: datetime | None, missing: str = "") -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment else missing


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def revoke_key_command(session, args) -> int:
    from services.auth import revoke_key
    key = revoke_key(session=session, key_id=args.key_id)
    if key is None:
        print(f"error: no API key has id {args.key_id} (crossfold keys list)", file=sys.stderr)
        return 2
    print(f"API key {key.id} of {key.owner!r} revoked: it is refused from its next request on")
    return retire_mlflow_password(session, key)


def retire_mlflow_password(session, row) -> int:
    """A revoked key that was its owner's MLflow password stops being it at once."""
    from api.server import mlflow_access
    from services.mlflow_logins import retire
    from services.settings import get_settings
    if not row.mlflow_login or (access := mlflow_access(get_settings())) is None:
        return 0
    try:
        retire(session, access, row)
    except Exception as error:  # the dispatcher retries within a minute (retire_refused_logins)
        print(f"warning: MLflow did not take the new password yet ({error}); the dispatcher "
              "replaces it within a minute of MLflow answering", file=sys.stderr)
        return 1
    print(f"MLflow: this key no longer logs {row.owner!r} in", file=sys.stderr)
    return 0


def limits_command(session, args) -> int:
    from services.owner_limits import limits_of, reset_limits, set_limits
    values = {name: getattr(args, name) for name in LIMIT_OPTIONS if getattr(args, name) is not None}
    if args.reset:
        if values:
            raise ValueError("--reset takes no limit values: it puts every limit back to its default")
        reset = reset_limits(session, args.owner)
        print(f"limits of {args.owner!r}: " + ("back to the service's defaults" if reset
                                             else "had no overrides, nothing to reset"))
        return 0
    if values:
        set_limits(session, args.owner, **values)
    overrides = limits_of(session, args.owner)
    print(f"limits of {args.owner!r} (default: the service's setting)")
    for name in LIMIT_OPTIONS:
        value = getattr(overrides, name) if overrides else None
        print(f"  {name.replace('_', '-'):<24} {'default' if value is None else value}")
    return 0


KEY_COMMANDS = {"create": create_key_command, "list": list_keys_command, "revoke": revoke_key_command,
                "limits": limits_command}
