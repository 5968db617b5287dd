"""Where datasets live: one Parquet file per dataset, under a root addressed with pyarrow.fs.

The root is a URI (`CROSSFOLD_DATASET_STORE`): a local folder by default, or any
filesystem pyarrow.fs knows (s3://bucket/prefix?endpoint_override=... on a cluster, see
workers.storage), so callers never touch paths themselves. A dataset is written under a
staging name and moved into place only once complete: a failed upload leaves the store
as it was.

An S3 bucket is not created here (pyarrow refuses unless the URI says
`allow_bucket_creation=true`): a bucket is set up once, with its owner's policies, and a
misspelt bucket name should stop the service at start-up rather than create a new one.
"""
from __future__ import annotations

import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pyarrow import fs

from workers.storage import child_uri, filesystem_of


class DatasetStore:
    def __init__(self, uri: str):
        if "://" not in uri:  # a plain folder
            Path(uri).mkdir(parents=True, exist_ok=True)
            uri = Path(uri).resolve().as_uri()
        self.uri = uri
        self.fs, root = filesystem_of(uri)
        self.root = root.rstrip("/")
        self.fs.create_dir(f"{self.root}/staging", recursive=True)

    def path_of(self, dataset_id: str) -> str:
        return f"{self.root}/{dataset_id}.parquet"

    def uri_of(self, dataset_id: str) -> str:
        """What a fold task opens, on any node (workers.storage.filesystem_of)."""
        return child_uri(self.uri, f"{dataset_id}.parquet")

    @contextmanager
    def writing(self, dataset_id: str) -> Iterator[str]:
        """A staging path to write the dataset's Parquet file to; moved into place when
        the block succeeds, removed when it fails."""
        staging = f"{self.root}/staging/{dataset_id}-{uuid.uuid4().hex[:8]}.parquet"
        try:
            yield staging
            self.fs.move(staging, self.path_of(dataset_id))
        finally:
            self.remove(staging)

    def exists(self, dataset_id: str) -> bool:
        return self.fs.get_file_info(self.path_of(dataset_id)).type == fs.FileType.File

    def remove(self, path: str) -> None:
        if self.fs.get_file_info(path).type != fs.FileType.NotFound:
            self.fs.delete_file(path)

    def delete(self, dataset_id: str) -> None:
        self.remove(self.path_of(dataset_id))

    def files(self) -> list[str]:
        """Every file under the root, staging included (tests check that nothing is left)."""
        selector = fs.FileSelector(self.root, recursive=True)
        return sorted(info.path for info in self.fs.get_file_info(selector) if info.type == fs.FileType.File)
