"""A small HTTP client for the job API, used by the CLI."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import httpx


class ApiError(Exception):
    pass


class JobsClient:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout, headers=headers)

    def submit(self, spec: dict, idempotency_key: str | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/jobs", json=spec, headers=headers)

    def get(self, job_id: str) -> dict:
        return self._call("GET", f"/jobs/{job_id}")

    def list(self, status: str | None = None, limit: int = 50) -> dict:
        params = {"limit": limit, **({"status": status} if status else {})}
        return self._call("GET", "/jobs", params=params)

    def cancel(self, job_id: str) -> dict:
        return self._call("POST", f"/jobs/{job_id}/cancel")

    def submit_study(self, study: dict, idempotency_key: str | None = None) -> dict:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._call("POST", "/studies", json=study, headers=headers)

    def study(self, study_id: str) -> dict:
        return self._call("GET", f"/studies/{study_id}")

    def cancel_study(self, study_id: str) -> dict:
        return self._call("POST", f"/studies/{study_id}/cancel")

    def upload_dataset(self, path: Path, name: str | None = None,
                       progress: Callable[[int, int], None] | None = None) -> dict:
        """Stream the file (never read whole); `progress(sent, total)` as it goes."""
        size = path.stat().st_size
        with open(path, "rb") as raw:
            file = ProgressReader(raw, size, progress) if progress else raw
            return self._call("POST", "/datasets", files={"file": (path.name, file)},
                              data={"name": name} if name else {}, timeout=None)

    def datasets(self, limit: int = 200) -> dict:
        return self._call("GET", "/datasets", params={"limit": limit})

    def dataset(self, dataset_id: str) -> dict:
        return self._call("GET", f"/datasets/{dataset_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        self._call("DELETE", f"/datasets/{dataset_id}")

    def healthy(self) -> bool:
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def _call(self, method: str, path: str, **kwargs) -> dict:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ApiError(f"cannot reach {self.http.base_url}: {error}") from error
        if response.status_code >= 400:
            raise ApiError(f"{response.status_code}: {describe_error(response)}")
        return response.json() if response.content else {}


def describe_error(response: httpx.Response) -> str:
    """422 details as 'field.path: rule' lines; anything else as the server said it."""
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError):
        return response.text
    if isinstance(detail, list):
        return "; ".join(".".join(str(p) for p in d["loc"][1:]) + f": {d['msg']}" for d in detail)
    return str(detail)


class ProgressReader(io.RawIOBase):
    """A file that tells how much of it has been read: httpx streams an upload by reading
    it in chunks, so this is how far the upload has gone."""

    def __init__(self, raw, size: int, progress: Callable[[int, int], None]):
        self.raw, self.size, self.progress, self.done = raw, size, progress, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self.raw.read(size)
        self.done += len(chunk)
        self.progress(self.done, self.size)
        return chunk
