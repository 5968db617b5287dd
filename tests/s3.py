"""A real S3 server for the tests: moto's standalone server (the S3 protocol over HTTP) on
loopback, spoken to by pyarrow's own S3 client, as a MinIO or AWS would be.

The tests' S3 credentials: every process that opens an s3:// store reads them from its
environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), the test session's Ray workers
included (tests/conftest.py sets them before Ray starts). moto takes any key.
"""
from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlsplit

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "crossfold-tests",
                  "AWS_SECRET_ACCESS_KEY": "s3-secret-never-in-a-uri"}
REGION = "us-east-1"


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's server on a free loopback port; yields its endpoint URL (http://host:port)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def new_bucket(endpoint: str) -> str:
    """A new, empty bucket, made as an operator would before pointing the stores at it."""
    from pyarrow import fs

    url = urlsplit(endpoint)
    admin = fs.S3FileSystem(endpoint_override=url.netloc, scheme=url.scheme, region=REGION,
                            allow_bucket_creation=True, **keys())
    name = f"crossfold-{uuid.uuid4().hex[:12]}"
    admin.create_dir(name)
    return name


def keys() -> dict[str, str]:
    return {"access_key": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "secret_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}
