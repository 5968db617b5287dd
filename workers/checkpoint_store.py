"""Epoch checkpoints for resuming a fold, kept in a store every node reaches.

A fold task saves its latest epoch checkpoint here (workers.task, every
checkpoint_interval_s); when its worker or its whole node dies, Ray runs the task again,
maybe on another node, which loads the checkpoint and goes on after that epoch. The
store is a pyarrow.fs URI (workers.storage): a local folder on one machine, s3://... on
a cluster. Nothing of a checkpoint passes through an actor or the dispatcher: a 100 MB
model × 100 running folds would not fit in one process.

Layout: <root>/<job id>/<key>.ckpt, key the fold's index (or -1 for a packed task) for
the epoch checkpoints a retry resumes from, `best-<fold>` for a fold's best checkpoint
on its way to MLflow (services.cluster).
A checkpoint appears whole or not at all: written under a temporary name and moved into
place on a local filesystem, where a reader could otherwise see half a file; an S3 object
is only visible once its upload completes.
"""
from __future__ import annotations

import uuid

from pyarrow import fs

from workers.storage import filesystem_of


class CheckpointStore:
    def __init__(self, uri: str):
        self.uri = uri
        self.fs, self.root = filesystem_of(uri)
        self.atomic_rename = isinstance(self.fs, fs.LocalFileSystem)

    def folder_of(self, job_id: str) -> str:
        return f"{self.root.rstrip('/')}/{job_id}"

    def path_of(self, job_id: str, key: int | str) -> str:
        return f"{self.folder_of(job_id)}/{key}.ckpt"

    def save(self, job_id: str, key: int | str, data: bytes) -> None:
        path = self.path_of(job_id, key)
        self.fs.create_dir(self.folder_of(job_id), recursive=True)
        target = f"{path}.{uuid.uuid4().hex[:8]}.partial" if self.atomic_rename else path
        with self.fs.open_output_stream(target) as out:
            out.write(data)
        if target != path:
            self.fs.move(target, path)

    def load(self, job_id: str, key: int | str) -> bytes | None:
        """The latest checkpoint saved under this key, or None."""
        try:
            with self.fs.open_input_stream(self.path_of(job_id, key)) as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    def delete_job(self, job_id: str) -> None:
        """A finished job's resume checkpoints: its best ones are in MLflow."""
        if self.fs.get_file_info(self.folder_of(job_id)).type != fs.FileType.NotFound:
            self.fs.delete_dir(self.folder_of(job_id))

    def jobs(self) -> list[str]:
        """The jobs with checkpoints here (tests, and sweeping leftovers)."""
        selector = fs.FileSelector(self.root, allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector)
                      if info.type == fs.FileType.Directory)
