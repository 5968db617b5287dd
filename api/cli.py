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
from pathlib import Path

from api.client import ApiError, JobsClient
from api.keys_cli import add_key_commands, keys_command
from api.progress import FINISHED, dataset_lines, fold_table, follow, job_lines, upload_bar
from api.study_view import follow_study, leaderboard_table, progress_lines
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
    study = commands.add_parser("study", help="submit a study (crossfold study FILE), show one "
                                              "(study show ID) or cancel one (study cancel ID)")
    study.add_argument("what", metavar="FILE | show | cancel")
    study.add_argument("study_id", nargs="?", help="with show or cancel")
    study.add_argument("--wait", action="store_true", help="follow each variant, then print the leaderboard")
    study.add_argument("--idempotency-key", help="submitting again with this key returns the same study")
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
    for line in refit_lines(job):
        print(line)
    if job["mlflow_url"]:
        print(f"MLflow: {job['mlflow_url']}")
    return 0


def refit_lines(job_or_study: dict) -> list[str]:
    """What a job or study says of its refit, or a refit of what it refits."""
    lines = []
    if job_or_study.get("refit_of"):
        lines.append(f"refit of job {job_or_study['refit_of']}")
    if refit := job_or_study.get("refit"):
        lines.append(f"refit: job {refit['job_id']} ({refit['status']}, {refit['epochs']} epochs)")
    model = job_or_study.get("registered_model") or (refit or {}).get("registered_model")
    if model:
        lines.append(f"registered model: {model['name']} version {model['version']} ({model['mlflow_url']})")
    return lines


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


def study_command(args) -> int:
    client = client_for(args)
    if args.what in ("show", "cancel"):
        if not args.study_id:
            raise ApiError(f"crossfold study {args.what} needs a study id")
        study = client.study(args.study_id) if args.what == "show" else client.cancel_study(args.study_id)
    else:
        study = client.submit_study(read_spec(Path(args.what)), idempotency_key=args.idempotency_key)
        print(f"submitted study {study['id']} ({study['name']}): {len(study['variants'])} variants")
        if args.wait:
            study = follow_study(lambda: variants_of(client, client.study(study["id"])))
    if args.what == "cancel":
        print(f"study {study['id']}: {study['status']}")
        return 0
    if args.what == "show" or args.wait:
        print("\n".join(progress_lines(study, {})[:1]))
        print(leaderboard_table(study))
        for line in refit_lines(study):
            print(line)
        if study["mlflow_experiment_url"]:
            print(f"MLflow: {study['mlflow_experiment_url']}")
    return 0 if not args.wait or study["status"] == "succeeded" else 1


def variants_of(client: JobsClient, study: dict) -> tuple[dict, dict[str, dict]]:
    return study, {v["job_id"]: client.get(v["job_id"]) for v in study["variants"]}


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
            "study": study_command, "demo": demo_command}

if __name__ == "__main__":
    sys.exit(main())
