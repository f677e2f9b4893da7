"""One object-store interface over local folders and S3.

Every component that reads or writes datasets, checkpoints, models or reports goes
through :func:`open_store`, so the same code runs against a laptop folder, the local
S3 endpoint of the embedded services, or a real bucket.

S3 clients are built with boto3's standard configuration chain (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ...), or handed in by the caller (an Airflow ``S3Hook`` client
inside DAG tasks). Credentials are never part of a URI, a log line or a manifest.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Protocol

MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024


class StorageError(RuntimeError):
    """An object store operation failed; the message says what and where."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def join_key(*parts: str) -> str:
    """Join key fragments with single slashes (no leading slash)."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def local_path_for_key(dest: str | Path, key: str) -> Path:
    """The path under ``dest`` for the object ``key``, refusing anything that would land
    outside it: absolute keys, empty segments (``a//b``), ``.``/``..`` segments, NUL bytes.

    Every download of a listed tree goes through this helper, so a hostile or odd key in a
    bucket can never write outside the destination folder.
    """
    parts = key.split("/")
    if not key or "\x00" in key or "\\" in key or any(part in ("", ".", "..") for part in parts):
        raise StorageError(
            f"refusing object key {key!r}: it is absolute or has empty, '.' or '..' segments, "
            "so it cannot be placed under the destination folder"
        )
    root = Path(dest).resolve()
    path = (root / PurePosixPath(*parts)).resolve()
    if root not in path.parents:
        raise StorageError(f"refusing object key {key!r}: it resolves to {path}, outside {root}")
    return path


def download_tree(store: "ObjectStore", dest: str | Path, prefix: str = "") -> list[Path]:
    """Download every object under the folder ``prefix`` of ``store`` into ``dest``, keeping
    the keys' relative layout (keys are relative to ``prefix``). Returns the local paths.

    Keys are checked with :func:`local_path_for_key` before anything is written.
    """
    base = prefix.strip("/")
    pairs: list[tuple[str, Path]] = []
    for info in store.list(base):
        relative = info.key[len(base) + 1 :] if base else info.key
        pairs.append((info.key, local_path_for_key(dest, relative)))
    for key, path in pairs:
        store.download_file(key, path)
    return [path for _, path in pairs]


class ObjectStore(Protocol):
    """What every store offers. Keys are relative, ``/``-separated."""

    uri: str

    def url(self, key: str) -> str: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int | None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def upload_file(self, key: str, path: str | Path, *, sha256: str | None = None) -> None: ...
    def checksum(self, key: str) -> str | None: ...
    def download_file(self, key: str, path: str | Path) -> None: ...
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...


class LocalStore:
    """A folder used as an object store. Writes are atomic (temporary name, then rename)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise StorageError(f"key {key!r} escapes the store root {self.root}")
        return path

    def url(self, key: str) -> str:
        return str(self._path(key))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise StorageError(f"no object at {path}")
        return path.read_bytes()

    def _atomic_write(self, key: str, writer: Any) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    writer(handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda handle: handle.write(data))

    def upload_file(self, key: str, path: str | Path, *, sha256: str | None = None) -> None:
        def copy(handle: Any) -> None:
            with open(path, "rb") as source:
                shutil.copyfileobj(source, handle, MULTIPART_CHUNK)

        self._atomic_write(key, copy)

    def checksum(self, key: str) -> str | None:
        """The object's sha256 (computed: local files are cheap to read), or None if absent."""
        path = self._path(key)
        return sha256_file(path) if path.is_file() else None

    def download_file(self, key: str, path: str | Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise StorageError(f"no object at {source}")
        destination = Path(path)
        destination.parent.mkdir(parents=True, exist_ok=True)
        tmp = destination.with_name(f".{destination.name}.part")
        shutil.copyfile(source, tmp)
        os.replace(tmp, destination)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """The files under the folder ``prefix`` (the whole store for ``""``), keys relative
        to the store; the same folder semantics as :meth:`S3Store.list`."""
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.endswith(".part"):
                yield ObjectInfo(path.relative_to(self.root).as_posix(), path.stat().st_size)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Store:
    """A bucket prefix used as an object store, through a boto3 S3 client."""

    def __init__(self, bucket: str, prefix: str = "", client: Any | None = None) -> None:
        if not bucket:
            raise StorageError("an s3:// URI needs a bucket name, e.g. s3://my-bucket/datasets")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client if client is not None else s3_client_from_env()
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        if ".." in PurePosixPath(key).parts:
            raise StorageError(f"key {key!r} escapes the prefix {self.uri}")
        return join_key(self.prefix, key)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _call(self, what: str, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except (S3UploadFailedError, S3TransferFailedError) as exc:  # upload_file/download_file wrap ClientError
            raise StorageError(f"S3 {what} of {self.url(key)} failed: {exc}") from exc
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise StorageError(f"S3 {what} of {self.url(key)} failed: {code}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 {what} of {self.url(key)} failed: {exc}") from exc

    def _head(self, key: str) -> dict[str, Any] | None:
        """The object's HEAD response, or None when there is no such object."""
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StorageError(f"S3 head of {self.url(key)} failed: {exc}") from exc
        except Exception as exc:  # endpoint down, DNS, ...
            raise StorageError(f"S3 head of {self.url(key)} failed: {exc}") from exc

    def size(self, key: str) -> int | None:
        head = self._head(key)
        return None if head is None else int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def get_bytes(self, key: str) -> bytes:
        response = self._call("read", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return response["Body"].read()

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("write", key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK)

    def upload_file(self, key: str, path: str | Path, *, sha256: str | None = None) -> None:
        """Upload (multipart above 64 MiB); ``sha256`` is kept as object metadata for :meth:`checksum`."""
        extra = {"Metadata": {"sha256": sha256}} if sha256 else None
        self._call(
            "upload",
            key,
            self.client.upload_file,
            str(path),
            self.bucket,
            self._key(key),
            ExtraArgs=extra,
            Config=self._transfer_config(),
        )

    def checksum(self, key: str) -> str | None:
        """The sha256 recorded at upload (object metadata), or None if absent or not recorded."""
        head = self._head(key)
        if head is None:
            return None
        return (head.get("Metadata") or {}).get("sha256")

    def download_file(self, key: str, path: str | Path) -> None:
        destination = Path(path)
        destination.parent.mkdir(parents=True, exist_ok=True)
        tmp = destination.with_name(f".{destination.name}.part")
        self._call(
            "download",
            key,
            self.client.download_file,
            self.bucket,
            self._key(key),
            str(tmp),
            Config=self._transfer_config(),
        )
        os.replace(tmp, destination)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """The objects under the folder ``prefix`` (the whole store for ``""``), keys relative
        to the store. Only keys inside the folder are returned: ``global_step_10`` never
        lists ``global_step_100``'s objects."""
        folder = self._key(prefix)
        query = folder + "/" if folder else ""
        base = self.prefix + "/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=query):
                for item in page.get("Contents", []):
                    key = item["Key"]
                    if not key.startswith(query) or not key.startswith(base):
                        continue  # an endpoint that ignores Prefix must not leak other folders
                    yield ObjectInfo(key[len(base) :], int(item["Size"]))
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(f"S3 list of s3://{self.bucket}/{query} failed: {exc}") from exc

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=self._key(key))


def s3_client_from_env(**overrides: Any) -> Any:
    """A boto3 S3 client from the standard AWS configuration chain.

    ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) points it at a non-AWS endpoint
    such as the embedded local S3 service.
    """
    import boto3
    from botocore.config import Config

    # 32 connections: as many as the threads that fetch images in parallel (botocore keeps 10,
    # and opens and drops a connection per request beyond that)
    config = Config(
        retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60, max_pool_connections=32
    )
    kwargs: dict[str, Any] = {"config": config}
    kwargs.update(overrides)
    return boto3.client("s3", **kwargs)


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise StorageError(f"not an s3:// URI: {uri!r}")
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    return bucket, prefix.strip("/")


def open_store(uri: str | Path, *, s3_client: Any | None = None) -> ObjectStore:
    """Open ``uri`` (a local folder, ``file://`` URI or ``s3://bucket/prefix``) as a store."""
    text = str(uri)
    if text.startswith("s3://"):
        bucket, prefix = split_s3_uri(text)
        return S3Store(bucket, prefix, client=s3_client)
    if "://" in text and not text.startswith("file://"):
        raise StorageError(f"unsupported storage URI {text!r}: use a local folder or s3://bucket/prefix")
    return LocalStore(text.removeprefix("file://"))


def join_uri(uri: str, *parts: str) -> str:
    """Append path parts to a local or s3:// URI."""
    tail = join_key(*parts)
    if not tail:
        return str(uri)
    return f"{str(uri).rstrip('/')}/{tail}"
