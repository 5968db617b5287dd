"""Files by pyarrow.fs URI: the dataset store and the checkpoint store, seen from any node.

A store is a URI every node of a cluster can reach: a local folder (`file:///...`) by
default, `s3://bucket/prefix` in production. Options pyarrow reads from the URI's query
travel with it (`s3://bucket/prefix?endpoint_override=host:9000&scheme=http&region=...`),
so a fold task on any node opens the same store from the URI alone; credentials never do
(they would be logged with the URI): every node reads them from the standard AWS
variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), as pyarrow's S3 filesystem does.

pyarrow is imported inside the functions: the GPU machine's worker tests run without it.
"""
from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def filesystem_of(uri: str):
    """The filesystem of a URI and the path in it (pyarrow.fs.FileSystem.from_uri)."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(uri)


def child_uri(uri: str, name: str) -> str:
    """The URI of `name` under the folder `uri`, keeping the folder's query (its options)."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{name}"))


def with_options(uri: str, options: dict[str, str]) -> str:
    """`uri` with `options` added to its query; an option the URI sets itself is kept."""
    parts = urlsplit(uri)
    query = {**options, **dict(parse_qsl(parts.query))}
    return urlunsplit(parts._replace(query=urlencode(query, safe=":/")))


def has_credentials(uri: str) -> bool:
    """Whether a URI names a user or password (s3://KEY:SECRET@bucket, which pyarrow reads)."""
    return "@" in urlsplit(uri).netloc
