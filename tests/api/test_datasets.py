"""/datasets on SQLite and PostgreSQL: upload (CSV or Parquet, streamed to disk), the
description, owners, deletion, and every bad file refused with nothing stored."""
from __future__ import annotations

import io
import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.main import create_app
from services.auth import create_key
from services.models import Dataset

CSV = (b"age,city,score,member,label\n"
       b"31,Paris,2.5,true,cat\n"
       b"45,Lyon,,false,dog\n"
       b"27,Paris,4.0,true,cat\n"
       b"52,,1.5,false,bird\n")


def upload(client, data: bytes, filename="pets.csv", name=None, headers=None):
    form = {"name": name} if name is not None else {}
    return client.post("/datasets", files={"file": (filename, data)}, data=form, headers=headers or {})


def test_an_uploaded_csv_is_stored_as_parquet_and_described(client):
    response = upload(client, CSV)
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert response.headers["location"] == f"/datasets/{dataset['id']}"
    assert (dataset["name"], dataset["format"], dataset["rows"], dataset["bundled"]) == ("pets", "csv", 4, False)
    columns = {c["name"]: c for c in dataset["columns"]}
    assert list(columns) == ["age", "city", "score", "member", "label"]
    expected = pd.read_csv(io.BytesIO(CSV))
    assert columns["age"]["type"] == "int64" and columns["age"]["missing"] == 0
    assert columns["age"]["summary"]["mean"] == pytest.approx(expected["age"].mean())
    assert columns["age"]["summary"]["std"] == pytest.approx(expected["age"].std())
    assert (columns["age"]["summary"]["min"], columns["age"]["summary"]["max"]) == (27, 52)
    assert columns["score"]["missing"] == 1 and columns["score"]["summary"]["std"] == pytest.approx(
        expected["score"].std())
    assert columns["city"]["missing"] == 1 and columns["city"]["summary"]["distinct"] == 2
    assert columns["city"]["summary"]["top"][0] == ["Paris", 2]
    assert columns["member"]["kind"] == "boolean" and columns["member"]["summary"]["distinct"] == 2
    stored = client.app.state.store
    table = pq.read_table(stored.fs.open_input_file(stored.path_of(dataset["id"])))
    assert table.num_rows == 4 and table.column_names == list(columns)
    assert client.get(f"/datasets/{dataset['id']}").json() == dataset


def test_a_parquet_upload_is_recognised_by_its_content(client):
    buffer = io.BytesIO()
    pq.write_table(pa.table({"x": [1.0, 2.0, 3.0], "y": ["a", "b", "a"]}), buffer)
    response = upload(client, buffer.getvalue(), filename="named-like-a.csv", name="from-parquet")
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "parquet" and response.json()["rows"] == 3


def test_the_bundled_datasets_are_listed_for_everyone_and_cannot_be_deleted(client):
    listed = client.get("/datasets", params={"limit": 200}).json()
    bundled = {d["name"]: d for d in listed["items"] if d["bundled"]}
    assert set(bundled) == {"digits", "iris", "wine", "breast_cancer", "diabetes"}
    assert bundled["digits"]["rows"] == 1797 and len(bundled["digits"]["columns"]) == 65
    assert bundled["digits"]["owner"] == "bundled"
    assert client.delete(f"/datasets/{bundled['iris']['id']}").status_code == 403


def test_a_dataset_is_deleted_with_its_file_and_a_name_is_taken_once(client):
    dataset = upload(client, CSV).json()
    again = upload(client, CSV)
    assert again.status_code == 409 and "pets" in again.json()["detail"]
    store = client.app.state.store
    assert store.path_of(dataset["id"]) in store.files()
    assert client.delete(f"/datasets/{dataset['id']}").status_code == 204
    assert store.path_of(dataset["id"]) not in store.files()
    assert client.get(f"/datasets/{dataset['id']}").status_code == 404
    assert upload(client, CSV).status_code == 201  # the name is free again


def test_another_owners_dataset_is_404_everywhere(settings, sessions):
    settings = settings.model_copy(update={"auth_required": True})
    with sessions() as session:
        keys = {owner: {"Authorization": f"Bearer {create_key(session=session, owner=owner)}"}
                for owner in ("alice", "bob")}
    with TestClient(create_app(settings, sessions)) as client:
        mine = upload(client, CSV, headers=keys["alice"]).json()
        assert client.get(f"/datasets/{mine['id']}", headers=keys["bob"]).status_code == 404
        assert client.delete(f"/datasets/{mine['id']}", headers=keys["bob"]).status_code == 404
        names = {d["name"] for d in client.get("/datasets", headers=keys["bob"]).json()["items"]}
        assert "pets" not in names and "iris" in names
        assert upload(client, CSV, headers=keys["bob"]).status_code == 201  # bob's own "pets"
        assert client.post("/datasets", files={"file": ("x.csv", CSV)}).status_code == 401


BAD_FILES = [
    (b"", "empty.csv", 422, "the file is empty"),
    (b"a,b,c\n", "header.csv", 422, "header but no rows"),
    (b"a,b,c\n1,2,3\n4,5\n6,7,8\n", "ragged.csv", 422, "line 3 has 2 fields; the header has 3"),
    ("a,b\n1,x\n2,caf\xe9\n".encode("latin-1"), "latin.csv", 422, "line 3 is not UTF-8"),
    (b"a,b,a\n1,2,3\n", "dup.csv", 422, "duplicate column names: a"),
    (b"PAR1 this is not really parquet", "broken.parquet", 422, "not a readable Parquet file"),
    (b"PK\x03\x04 a zip archive", "book.xlsx", 415, "zip archive"),
    (b"\x00\x01\x02binary", "blob.csv", 415, "binary data"),
    (b"\r0\r\n", "blank-line-first.csv", 422, "header but no rows"),
]


@pytest.mark.parametrize("data, filename, code, message", BAD_FILES, ids=[b[1] for b in BAD_FILES])
def test_a_bad_file_is_refused_and_nothing_is_stored(client, sessions, data, filename, code, message):
    store, uploads = client.app.state.store, client.app.state.settings.uploads_dir()
    before = store.files()
    response = upload(client, data, filename=filename)
    assert response.status_code == code and message in response.json()["detail"], response.text
    assert store.files() == before
    assert not list(uploads.glob("*"))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Dataset).where(Dataset.owner != "bundled")) == 0


def test_a_csv_with_old_mac_line_ends_is_read_as_pyarrow_reads_it(client):
    response = upload(client, b"a,b\r1,x\r2,y\r")
    assert response.status_code == 201, response.text
    assert response.json()["rows"] == 2 and [c["name"] for c in response.json()["columns"]] == ["a", "b"]


def test_a_form_without_a_file_or_with_a_bad_name_is_422(client):
    assert client.post("/datasets", data={"name": "x"}, files={"other": ("a.csv", CSV)}).status_code == 422
    bad_name = upload(client, CSV, name="../etc")
    assert bad_name.status_code == 422 and "name" in bad_name.json()["detail"]
    assert upload(client, CSV, name="").status_code == 422  # given but empty: not "use the file's"
    assert client.post("/datasets", json={"file": "a,b"}).status_code == 415


def test_an_upload_over_the_limit_is_refused_while_it_streams(settings, sessions):
    """A chunked upload (no Content-Length) of 40 MiB against a 1 MiB limit: the 413
    arrives while the client is still sending, and nothing is kept."""
    import socket

    from tests.helpers import served
    settings = settings.model_copy(update={"max_upload_bytes": 1 << 20})
    app = create_app(settings, sessions)
    with served(app) as base:
        host, port = base.removeprefix("http://").split(":")
        sent, answer = upload_slowly(host, int(port), total=40 << 20)
    assert answer.startswith(b"HTTP/1.1 413") and b"CROSSFOLD_MAX_UPLOAD_BYTES" in answer, answer[:200]
    assert sent < 8 << 20  # answered long before the end
    assert not list(settings.uploads_dir().glob("*"))
    assert TestClient(app).post("/datasets", files={"file": ("x.csv", b"a\n" * 600_000)}).status_code == 413


def upload_slowly(host: str, port: int, total: int) -> tuple[int, bytes]:
    """Send a chunked multipart upload 256 KiB at a time, reading any answer in between."""
    import socket
    head = (b"POST /datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=edge\r\n\r\n")
    part = b'--edge\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n\r\n'
    chunk = b"1,2,3,4\n" * 32768
    sent, answer = 0, b""
    with socket.create_connection((host, port), timeout=10) as connection:
        connection.sendall(head + b"%x\r\n%s\r\n" % (len(part), part))
        connection.settimeout(0.02)
        while sent < total and not answer:
            try:
                connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                answer = connection.recv(65536)
            except (socket.timeout, BlockingIOError):
                continue
            except OSError:  # the server closed the connection after answering
                break
        connection.settimeout(10)
        while not answer.endswith(b"}"):
            more = connection.recv(65536)
            if not more:
                break
            answer += more
    return sent, answer


def test_the_cli_uploads_lists_shows_and_deletes(settings, sessions, tmp_path, capsys):
    from api.cli import main as cli
    from tests.helpers import served
    path = tmp_path / "pets.csv"
    path.write_bytes(CSV)
    with served(create_app(settings, sessions)) as base:
        assert cli(["--url", base, "datasets", "upload", str(path), "--name", "my-pets"]) == 0
        shown = capsys.readouterr().out
        dataset_id = shown.split()[1]
        assert "(my-pets): 4 rows, 5 columns, csv" in shown
        assert "age" in shown and "min 27 max 52 mean 38.75" in shown and "Paris (2)" in shown
        assert cli(["--url", base, "datasets", "list"]) == 0
        listed = capsys.readouterr().out
        assert dataset_id in listed and "iris" in listed and "6 of 6 datasets" in listed
        assert cli(["--url", base, "datasets", "show", dataset_id]) == 0
        assert "my-pets" in capsys.readouterr().out
        assert cli(["--url", base, "datasets", "delete", dataset_id]) == 0
        assert cli(["--url", base, "datasets", "show", dataset_id]) == 1
        assert "404" in capsys.readouterr().err
        assert cli(["--url", base, "datasets", "upload", str(tmp_path / "nope.csv")]) == 1


def test_the_upload_bar_is_drawn_on_a_terminal_for_large_files():
    from api.progress import upload_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    out = Terminal()
    draw = upload_bar(out, min_bytes=100)
    for sent in (0, 50, 100):
        draw(sent, 100)
    assert out.getvalue().endswith("100% of 0 MiB\n") and " 50% " in out.getvalue()
    quiet = Terminal()
    upload_bar(quiet, min_bytes=1000)(10, 100)  # a small file: no bar
    assert quiet.getvalue() == ""
