"""`crossfold`: run the service, or talk to it over HTTP.

    crossfold serve                 API + dispatcher + local Ray + MLflow UI (embedded)
    crossfold api | dispatcher      one process each (production, docker-compose.yml)
    crossfold submit FILE [--wait]  submit a job spec (JSON); --wait follows its folds
    crossfold status ID | list | cancel ID
    crossfold datasets upload FILE [--name NAME] | list | show ID | delete ID
    crossfold keys create --owner NAME [--expires-in DAYS | --expires YYYY-MM-DD]
                                    a new API key, printed once (the keys commands
                                    open the database: CROSSFOLD_DATABASE_URL)
    crossfold keys list [--owner NAME] | revoke ID
    crossfold keys limits --owner NAME [--max-queued-jobs N ...] [--reset]
                                    an owner's own limits, over the service's defaults
    crossfold demo FILE             serve, submit FILE, follow it, print the fold table

Client commands send the API key of --api-key, --api-key-file, CROSSFOLD_API_KEY or
CROSSFOLD_API_KEY_FILE, the first one given. Prefer the environment or a file: a command
line is visible to every user of the machine (ps).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from api.client import ApiError, JobsClient
from api.progress import FINISHED, dataset_lines, fold_table, follow, job_lines, upload_bar
from services.states import JobStatus

DEFAULT_URL = os.environ.get("CROSSFOLD_URL", "http://127.0.0.1:8000")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossfold", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL, help="the API's address (client commands)")
    parser.add_argument("--api-key", help="API key for client commands; visible to other users in "
                        "the process list (ps): prefer CROSSFOLD_API_KEY or --api-key-file")
    parser.add_argument("--api-key-file", type=Path, metavar="PATH",
                        help="read the API key from the first line of PATH (or CROSSFOLD_API_KEY_FILE)")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the embedded service")
    serve.add_argument("--no-ui", action="store_true", help="do not start the MLflow UI")
    commands.add_parser("api", help="run the HTTP API only")
    commands.add_parser("dispatcher", help="run the dispatcher only")
    submit = commands.add_parser("submit", help="submit a job spec")
    submit.add_argument("file", type=Path)
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends")
    submit.add_argument("--idempotency-key", help="submitting again with this key returns the same job")
    status = commands.add_parser("status", help="show a job")
    status.add_argument("job_id")
    listing = commands.add_parser("list", help="list jobs, newest first")
    listing.add_argument("--status", choices=[status.value for status in JobStatus])
    listing.add_argument("--limit", type=int, default=20)
    cancel = commands.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id")
    add_dataset_commands(commands)
    add_key_commands(commands)
    demo = commands.add_parser("demo", help="serve, submit a job and follow it, then keep serving")
    demo.add_argument("file", type=Path)
    return parser


def add_dataset_commands(commands) -> None:
    datasets = commands.add_parser("datasets", help="upload and manage datasets (CSV or Parquet)")
    dataset_commands = datasets.add_subparsers(dest="datasets_command", required=True)
    upload = dataset_commands.add_parser("upload", help="upload a CSV or Parquet file")
    upload.add_argument("file", type=Path)
    upload.add_argument("--name", help="the dataset's name (default: the file's, without extension)")
    dataset_commands.add_parser("list", help="your datasets and the bundled ones")
    show = dataset_commands.add_parser("show", help="a dataset and its columns")
    show.add_argument("dataset_id")
    delete = dataset_commands.add_parser("delete", help="delete a dataset and its stored file")
    delete.add_argument("dataset_id")


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.api_key:
        print("warning: --api-key is visible to other users in the process list (ps); prefer "
              "CROSSFOLD_API_KEY, CROSSFOLD_API_KEY_FILE or --api-key-file", file=sys.stderr)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        return COMMANDS[args.command](args)
    except ApiError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def serve_command(args) -> int:
    from api.server import PortInUse, serve
    from services.settings import get_settings
    settings = get_settings()
    print(f"crossfold API on http://{settings.api_host}:{settings.api_port} "
          f"(data in {settings.data_dir.resolve()}); Ctrl-C stops it", flush=True)
    try:
        serve(settings, with_ui=not args.no_ui)
    except PortInUse as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def api_command(args) -> int:
    from api.server import run_api
    from services.settings import get_settings
    settings = get_settings()
    run_api(settings, workers=settings.api_workers)
    return 0


def dispatcher_command(args) -> int:
    from api.server import run_dispatcher
    from services.settings import get_settings
    run_dispatcher(get_settings())
    return 0


def read_spec(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ApiError(f"cannot read {path}: {error}") from error


def client_for(args) -> JobsClient:
    return JobsClient(args.url, api_key=api_key_of(args))


def api_key_of(args, environ=os.environ) -> str | None:
    """The first given of --api-key, --api-key-file, CROSSFOLD_API_KEY, CROSSFOLD_API_KEY_FILE."""
    if args.api_key:
        return args.api_key
    if args.api_key_file:
        return read_key_file(args.api_key_file)
    if environ.get("CROSSFOLD_API_KEY"):
        return environ["CROSSFOLD_API_KEY"]
    if environ.get("CROSSFOLD_API_KEY_FILE"):
        return read_key_file(Path(environ["CROSSFOLD_API_KEY_FILE"]))
    return None


def read_key_file(path: Path) -> str:
    """The key on the file's first line, without its newline or surrounding blanks."""
    try:
        with open(path, encoding="utf-8") as file:
            key = file.readline().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ApiError(f"cannot read the API key file {path}: {error}") from error
    if not key:
        raise ApiError(f"the API key file {path} has no key on its first line")
    return key


def submit_command(args) -> int:
    client = client_for(args)
    job = client.submit(read_spec(args.file), idempotency_key=args.idempotency_key)
    print(f"submitted job {job['id']} ({job['name']})")
    if not args.wait:
        return 0
    job = follow(lambda: client.get(job["id"]))
    print(fold_table(job))
    return 0 if job["status"] == "succeeded" else 1


def status_command(args) -> int:
    job = client_for(args).get(args.job_id)
    print("\n".join(job_lines(job)))
    if job["status"] in FINISHED:
        print(fold_table(job))
    if job["error"]:
        print(f"error: {job['error']}")
    if job["mlflow_url"]:
        print(f"MLflow: {job['mlflow_url']}")
    return 0


def list_command(args) -> int:
    page = client_for(args).list(status=args.status, limit=args.limit)
    for job in page["items"]:
        accuracy = (job["summary"] or {}).get("test_accuracy_mean")
        score = f"accuracy {accuracy:.4f}" if accuracy is not None else ""
        print(f"{job['id']}  {job['created_at'][:19]}  {job['status']:<10} {job['name']:<24} {score}")
    print(f"{len(page['items'])} of {page['total']} jobs")
    return 0


def cancel_command(args) -> int:
    job = client_for(args).cancel(args.job_id)
    state = "cancelled" if job["status"] == "cancelled" else "cancellation requested"
    print(f"job {job['id']}: {state}")
    return 0


def datasets_command(args) -> int:
    client = client_for(args)
    if args.datasets_command == "upload":
        if not args.file.is_file():
            raise ApiError(f"no such file: {args.file}")
        dataset = client.upload_dataset(args.file, args.name, progress=upload_bar())
        print("\n".join(dataset_lines(dataset)))
    elif args.datasets_command == "list":
        page = client.datasets()
        for dataset in page["items"]:
            kind = "bundled" if dataset["bundled"] else dataset["format"]
            print(f"{dataset['id']:<36}  {dataset['name']:<24} {dataset['rows']:>10,} rows  "
                  f"{len(dataset['columns']):>4} columns  {kind}")
        print(f"{len(page['items'])} of {page['total']} datasets")
    elif args.datasets_command == "show":
        print("\n".join(dataset_lines(client.dataset(args.dataset_id))))
    else:
        client.delete_dataset(args.dataset_id)
        print(f"dataset {args.dataset_id} deleted")
    return 0


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


def demo_command(args) -> int:
    """Start `crossfold serve`, run one job through it, then keep serving until Ctrl-C."""
    spec = read_spec(args.file)
    # A plain `kill` must stop the service too, not only Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve"])
    client = client_for(args)
    try:
        wait_until_healthy(client, server)
        job = client.submit(spec)
        print(f"submitted job {job['id']} ({job['name']})", flush=True)
        job = follow(lambda: client.get(job["id"]))
        print(fold_table(job))
        print(f"\nMLflow: {job['mlflow_url']}\n        {job['mlflow_experiment_url']} (every run of "
              f"{job['name']})\nService still running; Ctrl-C stops it.", flush=True)
        server.wait()
    finally:
        server.terminate()
        server.wait(timeout=60)
    return 0


def wait_until_healthy(client: JobsClient, server: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not client.healthy():
        if server.poll() is not None:
            raise ApiError("the service exited while starting")
        if time.monotonic() > deadline:
            raise ApiError(f"the service did not answer within {timeout:.0f} s")
        time.sleep(0.5)


COMMANDS = {"serve": serve_command, "api": api_command, "dispatcher": dispatcher_command,
            "submit": submit_command, "status": status_command, "list": list_command,
            "cancel": cancel_command, "datasets": datasets_command, "keys": keys_command,
            "demo": demo_command}

if __name__ == "__main__":
    sys.exit(main())
