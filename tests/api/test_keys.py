"""API key lifecycle and owners' limits, on SQLite and PostgreSQL: expiry, revocation
(refused on the very next request), last use, the keys commands, and how the CLI is
given a key."""
import argparse
import re
from datetime import date, datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.cli import api_key_of
from api.keys_cli import LIMIT_OPTIONS
from api.cli import main as cli
from api.main import create_app
from services.auth import issue_key, revoke_key
from services.models import ApiKey
from services.owner_limits import LIMITS, limits_of, reset_limits, set_limits
from services.settings import get_settings
from tests.helpers import served


@pytest.fixture
def secured(settings, sessions):
    """The app with authentication on."""
    with TestClient(create_app(settings.model_copy(update={"auth_required": True}), sessions)) as client:
        yield client


def run_cli(capsys, *argv):
    """`crossfold ...` in this process: (exit code, stdout, stderr)."""
    code = cli(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def on_test_database(settings, monkeypatch):
    """The CLI's settings point at the test's database."""
    monkeypatch.setenv("CROSSFOLD_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def as_owner(key):
    return {"Authorization": f"Bearer {key}"}


def stored_key(sessions, key_id) -> ApiKey:
    with sessions() as session:
        return session.get(ApiKey, key_id)


def set_columns(sessions, key_id, **values) -> None:
    """Change a key's row behind the service's back, as time passing would."""
    with sessions() as session:
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(**values))
        session.commit()


def test_a_revoked_key_is_refused_on_its_next_request(secured, sessions):
    with sessions() as session:
        row, key = issue_key(session=session, owner="alice")
    assert secured.get("/jobs", headers=as_owner(key)).status_code == 200
    with sessions() as session:
        assert revoke_key(session=session, key_id=row.id).revoked
    response = secured.get("/jobs", headers=as_owner(key))
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


def test_keys_revoke_refuses_the_key_at_once(secured, on_test_database, capsys):
    code, key, err = run_cli(capsys, "keys", "create", "--owner", "alice")
    key_id = re.search(r"API key (\d+) for owner 'alice'", err).group(1)
    assert code == 0 and secured.get("/jobs", headers=as_owner(key.strip())).status_code == 200
    code, out, _ = run_cli(capsys, "keys", "revoke", key_id)
    assert code == 0 and "revoked" in out
    assert secured.get("/jobs", headers=as_owner(key.strip())).status_code == 401


def test_keys_revoke_of_an_unknown_id_exits_2(on_test_database, capsys):
    code, out, err = run_cli(capsys, "keys", "revoke", "4242")
    assert code == 2 and "no API key has id 4242" in err and out == ""


def test_an_expired_key_is_refused(secured, sessions):
    now = datetime.now(timezone.utc)
    with sessions() as session:
        expiring, expiring_key = issue_key(session=session, owner="alice", expires_at=now + timedelta(days=1))
        _, lasting_key = issue_key(session=session, owner="alice")
    assert secured.get("/jobs", headers=as_owner(expiring_key)).status_code == 200
    set_columns(sessions, expiring.id, expires_at=now - timedelta(seconds=1))
    assert secured.get("/jobs", headers=as_owner(expiring_key)).status_code == 401
    assert secured.get("/jobs", headers=as_owner(lasting_key)).status_code == 200


def test_a_key_cannot_be_created_already_expired(sessions):
    a_minute_ago = datetime.now(timezone.utc) - timedelta(minutes=1)
    with sessions() as session, pytest.raises(ValueError, match="not in the future"):
        issue_key(session=session, owner="alice", expires_at=a_minute_ago)


def test_last_use_is_written_on_first_use_then_at_most_once_a_minute(secured, sessions):
    with sessions() as session:
        row, key = issue_key(session=session, owner="alice")
    assert stored_key(sessions, row.id).last_used_at is None
    before = datetime.now(timezone.utc)
    assert secured.get("/jobs", headers=as_owner(key)).status_code == 200
    first_use = stored_key(sessions, row.id).last_used_at
    assert first_use is not None and before <= first_use <= datetime.now(timezone.utc)

    assert secured.get("/jobs", headers=as_owner(key)).status_code == 200
    assert stored_key(sessions, row.id).last_used_at == first_use  # within the minute: not rewritten

    half_a_minute_ago = datetime.now(timezone.utc) - timedelta(seconds=30)
    set_columns(sessions, row.id, last_used_at=half_a_minute_ago)
    assert secured.get("/jobs", headers=as_owner(key)).status_code == 200
    assert stored_key(sessions, row.id).last_used_at == half_a_minute_ago

    two_minutes_ago = datetime.now(timezone.utc) - timedelta(minutes=2)
    set_columns(sessions, row.id, last_used_at=two_minutes_ago)
    before = datetime.now(timezone.utc)
    assert secured.get("/jobs", headers=as_owner(key)).status_code == 200
    assert stored_key(sessions, row.id).last_used_at >= before


def test_a_refused_key_is_not_marked_used(secured, sessions):
    with sessions() as session:
        row, key = issue_key(session=session, owner="alice")
        revoke_key(session=session, key_id=row.id)
    assert secured.get("/jobs", headers=as_owner(key)).status_code == 401
    assert stored_key(sessions, row.id).last_used_at is None


def test_keys_list_shows_prefix_and_state_never_the_secret(sessions, on_test_database, capsys):
    now = datetime.now(timezone.utc)
    with sessions() as session:
        active, active_key = issue_key(session=session, owner="alice", expires_at=now + timedelta(days=7))
        revoked, revoked_key = issue_key(session=session, owner="alice")
        revoke_key(session=session, key_id=revoked.id)
        expired, expired_key = issue_key(session=session, owner="bob", expires_at=now + timedelta(days=1))
    set_columns(sessions, expired.id, expires_at=now - timedelta(days=1))
    code, out, _ = run_cli(capsys, "keys", "list")
    assert code == 0
    header, *rows, count = out.splitlines()
    assert header.split() == ["ID", "OWNER", "PREFIX", "CREATED", "LAST", "USED", "EXPIRES", "STATE"]
    assert count == "3 keys"
    lines = {line.split()[0]: line for line in rows}
    for row, key, owner, state in [(active, active_key, "alice", "active"),
                                   (revoked, revoked_key, "alice", "revoked"),
                                   (expired, expired_key, "bob", "expired")]:
        assert row.prefix == key[3:11]
        line = lines[str(row.id)]
        assert f"cf_{row.prefix}" in line and owner in line and line.endswith(state)
        assert key not in out and key[3:] not in out and row.key_hash not in out
    assert f"{active.expires_at:%Y-%m-%d %H:%M}" in lines[str(active.id)]

    code, out, _ = run_cli(capsys, "keys", "list", "--owner", "bob")
    assert code == 0 and f"cf_{expired.prefix}" in out and f"cf_{active.prefix}" not in out and "1 key" in out


def test_keys_create_takes_an_expiry(sessions, on_test_database, capsys):
    code, key, err = run_cli(capsys, "keys", "create", "--owner", "alice", "--expires-in", "30")
    assert code == 0 and key.startswith("cf_") and "shown only this once" in err
    row = stored_key(sessions, int(re.search(r"API key (\d+)", err).group(1)))
    assert row.prefix == key.strip()[3:11]
    assert abs(row.expires_at - (datetime.now(timezone.utc) + timedelta(days=30))) < timedelta(minutes=1)

    code, _, err = run_cli(capsys, "keys", "create", "--owner", "alice", "--expires", "2099-01-01")
    row = stored_key(sessions, int(re.search(r"API key (\d+)", err).group(1)))
    assert code == 0 and row.expires_at == datetime(2099, 1, 1, tzinfo=timezone.utc)
    assert "valid until 2099-01-01 00:00 UTC" in err


@pytest.mark.parametrize("expiry", [["--expires-in", "0"], ["--expires-in", "-3"],
                                    ["--expires", (date.today() - timedelta(days=1)).isoformat()]])
def test_keys_create_refuses_an_expiry_not_in_the_future(sessions, on_test_database, capsys, expiry):
    code, out, err = run_cli(capsys, "keys", "create", "--owner", "alice", *expiry)
    assert code == 2 and out == "" and "error:" in err
    with sessions() as session:
        assert session.query(ApiKey).count() == 0


def test_the_api_key_file_is_read_and_api_key_warns(settings, sessions, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CROSSFOLD_API_KEY", raising=False)
    monkeypatch.delenv("CROSSFOLD_API_KEY_FILE", raising=False)
    with sessions() as session:
        _, key = issue_key(session=session, owner="alice")
    key_file, wrong_file = tmp_path / "key", tmp_path / "wrong"
    key_file.write_text(f"  {key}\nthe rest is not read\n")
    wrong_file.write_text("cf_not-a-key\n")
    with served(create_app(settings.model_copy(update={"auth_required": True}), sessions)) as base:
        code, out, err = run_cli(capsys, "--url", base, "--api-key-file", str(key_file), "list")
        assert code == 0 and "0 of 0 jobs" in out and "warning" not in err
        code, _, err = run_cli(capsys, "--url", base, "--api-key-file", str(wrong_file), "list")
        assert code == 1 and "401" in err
        monkeypatch.setenv("CROSSFOLD_API_KEY_FILE", str(key_file))
        assert run_cli(capsys, "--url", base, "list")[0] == 0
        code, _, err = run_cli(capsys, "--url", base, "--api-key", key, "list")
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "--api-key" in warnings[0] and "CROSSFOLD_API_KEY" in warnings[0]


def test_a_missing_or_empty_key_file_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").write_text("\n")
    for path in (tmp_path / "absent", tmp_path / "empty"):
        code, out, err = run_cli(capsys, "--url", "http://127.0.0.1:9", "--api-key-file", str(path), "list")
        assert code == 1 and str(path) in err and out == ""


def test_the_api_key_comes_from_the_first_source_given(tmp_path):
    def given(api_key=None, api_key_file=None, **environ):
        return api_key_of(argparse.Namespace(api_key=api_key, api_key_file=api_key_file), environ)

    for name in ("flag", "env"):
        (tmp_path / name).write_text(f"cf_from_{name}_file\n")
    every_source = dict(api_key="cf_flag", api_key_file=tmp_path / "flag", CROSSFOLD_API_KEY="cf_env",
                        CROSSFOLD_API_KEY_FILE=str(tmp_path / "env"))
    assert given(**every_source) == "cf_flag"
    assert given(**{**every_source, "api_key": None}) == "cf_from_flag_file"
    assert given(CROSSFOLD_API_KEY="cf_env", CROSSFOLD_API_KEY_FILE=str(tmp_path / "env")) == "cf_env"
    assert given(CROSSFOLD_API_KEY_FILE=str(tmp_path / "env")) == "cf_from_env_file"
    assert given() is None


def test_keys_limits_sets_shows_and_resets_overrides(sessions, on_test_database, capsys):
    code, out, _ = run_cli(capsys, "keys", "limits", "--owner", "alice", "--max-queued-jobs", "5",
                           "--max-dataset-bytes", "10000000000")
    assert code == 0
    with sessions() as session:
        stored = limits_of(session, "alice")
        assert stored.max_queued_jobs == 5 and stored.max_dataset_bytes == 10**10
        assert stored.max_running_folds is None
    assert run_cli(capsys, "keys", "limits", "--owner", "alice", "--max-running-folds", "8")[0] == 0

    code, out, _ = run_cli(capsys, "keys", "limits", "--owner", "alice")
    shown = dict(line.split() for line in out.splitlines()[1:])
    assert code == 0 and shown == {"max-queued-jobs": "5", "max-running-folds": "8",
                                   "submissions-per-minute": "default", "max-dataset-bytes": "10000000000",
                                   "max-job-runtime-s": "default"}

    code, out, _ = run_cli(capsys, "keys", "limits", "--owner", "alice", "--reset")
    assert code == 0 and "defaults" in out
    with sessions() as session:
        assert limits_of(session, "alice") is None
    code, out, _ = run_cli(capsys, "keys", "limits", "--owner", "alice")
    assert code == 0 and set(dict(line.split() for line in out.splitlines()[1:]).values()) == {"default"}


@pytest.mark.parametrize("value", ["0", "-1", str(2**31)])
def test_keys_limits_refuses_a_value_that_is_not_a_positive_integer(sessions, on_test_database, capsys,
                                                                    value):
    assert run_cli(capsys, "keys", "limits", "--owner", "alice", "--submissions-per-minute", "10")[0] == 0
    code, _, err = run_cli(capsys, "keys", "limits", "--owner", "alice", "--submissions-per-minute", "20",
                           "--max-queued-jobs", value)
    assert code == 2 and "max_queued_jobs must be a positive integer" in err
    with sessions() as session:
        stored = limits_of(session, "alice")
        assert (stored.submissions_per_minute, stored.max_queued_jobs) == (10, None)  # nothing of it stored


def test_keys_limits_refuses_reset_with_values_and_non_numbers(on_test_database, capsys):
    code, _, err = run_cli(capsys, "keys", "limits", "--owner", "alice", "--reset", "--max-queued-jobs", "3")
    assert code == 2 and "--reset takes no limit values" in err
    with pytest.raises(SystemExit) as exited:
        cli(["keys", "limits", "--owner", "alice", "--max-queued-jobs", "many"])
    assert exited.value.code == 2


def test_set_limits_checks_what_it_stores(sessions):
    with sessions() as session:
        for values in ({"max_queued_jobs": True}, {"max_queued_jobs": 2.5}, {"max_jobs": 3},
                       {"max_dataset_bytes": 2**63}):
            with pytest.raises(ValueError):
                set_limits(session, "alice", **values)
        assert limits_of(session, "alice") is None
        set_limits(session, "alice", max_queued_jobs=4, max_job_runtime_s=3600)
        set_limits(session, "alice", max_queued_jobs=None)  # back to the default, the rest kept
        stored = limits_of(session, "alice")
        assert (stored.max_queued_jobs, stored.max_job_runtime_s) == (None, 3600)
        assert reset_limits(session, "alice") and not reset_limits(session, "alice")


def test_the_cli_offers_every_limit():
    assert tuple(LIMIT_OPTIONS) == LIMITS
