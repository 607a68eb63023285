"""Where checkpoints are kept: ``CheckpointStorage.for_config`` gives the storage of an experiment's
``checkpoint_storage`` config.

Trials write a checkpoint into :meth:`~CheckpointStorage.staging_folder` (``<uuid>`` once whole); the engine then
calls :meth:`~CheckpointStorage.save`, which returns the checkpoint's ``location`` (what the store records).  Every
method is blocking: the engine calls them in worker threads, never on its event loop.

* ``shared_fs``: the staging folder is the storage itself; a location is the checkpoint's folder.
* ``s3``: trials write into ``<experiment>/checkpoint-staging``; ``save`` uploads every file to
  ``s3://<bucket>/<prefix>/<uuid>/...`` (``metadata.json`` last, so a checkpoint without it is not whole) and
  removes the local copy.  Credentials come from boto3's default chain (environment, ``~/.aws``, instance role)
  and are never written anywhere by hpo.
"""
from __future__ import annotations

import abc
import os
import shutil
import threading
import uuid as _uuid
from pathlib import Path
from typing import Any

from hpo.config import CheckpointStorageConfig
from hpo.trial_checkpoint import checked_tree

__all__ = ["CheckpointStorage", "CheckpointStorageError", "SharedFsStorage", "S3Storage", "remove_matching"]

S3_STAGING = "checkpoint-staging"
_METADATA = "metadata.json"


class CheckpointStorageError(OSError):
    """A checkpoint could not be saved, deleted or downloaded (the message is one line, for the user)."""


class CheckpointStorage(abc.ABC):
    """One experiment's checkpoint storage."""

    @staticmethod
    def for_config(config: CheckpointStorageConfig, experiment_directory: Path) -> CheckpointStorage:
        """The storage ``config`` describes, for the experiment in ``experiment_directory``."""
        if config.type == "s3":
            assert config.bucket is not None, "validate_for_start checks that s3 has a bucket"
            return S3Storage(config.bucket, config.prefix, config.endpoint_url, config.region,
                             Path(experiment_directory) / S3_STAGING)
        return SharedFsStorage(config.folder(experiment_directory), own=config.host_path is None)

    @abc.abstractmethod
    def staging_folder(self) -> Path:
        """The local folder trials write checkpoints into (``HPO_CHECKPOINT_DIR``)."""

    @abc.abstractmethod
    def location(self, uuid: str) -> str:
        """Where checkpoint ``uuid`` is (or would be) kept."""

    @abc.abstractmethod
    def save(self, uuid: str, folder: Path) -> str:
        """Store the whole checkpoint in ``folder`` (``staging_folder() / uuid``); returns its location.
        CheckpointStorageError when it cannot, leaving nothing that looks whole.  ``folder`` stays until
        :meth:`recorded` (an engine that dies before it records the checkpoint leaves it for :meth:`remove_leftovers`)."""

    def recorded(self, uuid: str) -> None:
        """The checkpoint's row is written: drop what only saving it needed."""

    @abc.abstractmethod
    def delete(self, location: str) -> None:
        """Remove a checkpoint (nothing there is not an error)."""

    @abc.abstractmethod
    def download(self, location: str, dest: Path) -> None:
        """Copy a checkpoint's files into the folder ``dest``."""

    @abc.abstractmethod
    def exists(self, location: str) -> bool:
        """Whether a whole checkpoint is at ``location``."""

    @abc.abstractmethod
    def remove_leftovers(self, partial_pattern: str, recorded: set[str]) -> None:
        """After an engine crash: remove what it left in the staging folder unsaved (half-written checkpoints,
        matched by the glob ``partial_pattern``, and whole ones whose uuid is not among the ``recorded`` ones; for
        s3 also their uploads, finished or not)."""

    def local_folder(self, location: str, dest: Path) -> Path:
        """A local folder holding the checkpoint at ``location``: downloaded into ``dest`` unless it is local."""
        if not (dest / _METADATA).exists():
            shutil.rmtree(dest, ignore_errors=True)
            self.download(location, dest)
        return dest


class SharedFsStorage(CheckpointStorage):
    """Checkpoints in a folder on a file system the trials see (a location is the checkpoint's folder)."""

    def __init__(self, folder: Path, own: bool = True) -> None:
        self.folder = Path(folder)
        self.own = own  # the folder is this experiment's alone (not a host_path other experiments share)

    def staging_folder(self) -> Path:
        return self.folder

    def location(self, uuid: str) -> str:
        return str(self.folder / uuid)

    def save(self, uuid: str, folder: Path) -> str:
        _check_staged(folder)
        return str(folder)

    def delete(self, location: str) -> None:
        shutil.rmtree(location, ignore_errors=True)

    def download(self, location: str, dest: Path) -> None:
        shutil.copytree(location, dest, symlinks=True, dirs_exist_ok=True)

    def exists(self, location: str) -> bool:
        return os.path.isdir(location)

    def remove_leftovers(self, partial_pattern: str, recorded: set[str]) -> None:
        remove_matching(self.folder, partial_pattern)
        if self.own and self.folder.is_dir():  # saved by a trial, never recorded (in a shared folder: unknowable)
            for path in self.folder.iterdir():
                if _is_uuid(path.name) and path.name not in recorded:
                    shutil.rmtree(path, ignore_errors=True)

    def local_folder(self, location: str, dest: Path) -> Path:
        return Path(location)


class S3Storage(CheckpointStorage):
    """Checkpoints as objects ``<prefix>/<uuid>/<file>`` in an S3 (or S3-compatible) bucket."""

    def __init__(self, bucket: str, prefix: str | None, endpoint_url: str | None, region: str | None,
                 staging: Path) -> None:
        self.bucket, self.endpoint_url, self.region = bucket, endpoint_url, region
        self.prefix = (prefix or "").strip("/")
        self.staging = Path(staging)
        self._client_obj: Any = None
        self._lock = threading.Lock()

    @property
    def _client(self) -> Any:
        with self._lock:  # boto3 clients are thread-safe; creating one is not
            if self._client_obj is None:
                import boto3
                self._client_obj = boto3.session.Session().client(
                    "s3", endpoint_url=self.endpoint_url, region_name=self.region)
            return self._client_obj

    def staging_folder(self) -> Path:
        return self.staging

    def location(self, uuid: str) -> str:
        return f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}{uuid}"

    def save(self, uuid: str, folder: Path) -> str:
        from boto3.exceptions import Boto3Error
        from boto3.s3.transfer import TransferConfig, create_transfer_manager
        from botocore.exceptions import BotoCoreError, ClientError

        location = self.location(uuid)
        bucket, key = _split(location)
        names = sorted(_check_staged(folder), key=lambda n: (n == _METADATA, n))
        try:  # boto3's managed transfer: files in parallel, multipart above 8 MB; metadata.json once the rest is in
            with create_transfer_manager(self._client, TransferConfig()) as manager:
                for future in [manager.upload(str(folder / n), bucket, f"{key}/{n}") for n in names[:-1]]:
                    future.result()
            self._client.upload_file(str(folder / names[-1]), bucket, f"{key}/{names[-1]}")
        except (Boto3Error, BotoCoreError, ClientError, OSError) as exc:
            try:
                self.delete(location)
            except CheckpointStorageError:
                pass  # nothing without metadata.json looks whole; resume removes the rest
            shutil.rmtree(folder, ignore_errors=True)
            raise CheckpointStorageError(f"upload to {location} failed: {_one_line(exc)}") from None
        return location

    def recorded(self, uuid: str) -> None:
        shutil.rmtree(self.staging / uuid, ignore_errors=True)

    def delete(self, location: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = _split(location)
        try:
            uploads = self._client.list_multipart_uploads(Bucket=bucket, Prefix=f"{key}/").get("Uploads", [])
            for up in uploads:  # unfinished uploads (an engine killed mid-upload) cost storage too
                self._client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
            keys = [o["Key"] for o in self._objects(bucket, key)]
            for i in range(0, len(keys), 1000):
                self._client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]],
                                                                   "Quiet": True})
        except (BotoCoreError, ClientError) as exc:
            raise CheckpointStorageError(f"cannot delete {location}: {_one_line(exc)}") from None

    def download(self, location: str, dest: Path) -> None:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = _split(location)
        try:
            objects = sorted(self._objects(bucket, key), key=lambda o: o["Key"].endswith(f"/{_METADATA}"))
            if not objects:
                raise CheckpointStorageError(f"nothing at {location}")
            for obj in objects:
                name = obj["Key"][len(key) + 1:]
                target = (dest / name).resolve()
                if Path(os.path.commonpath([target, dest.resolve()])) != dest.resolve():
                    raise CheckpointStorageError(f"{location}: object {obj['Key']!r} would escape {dest}")
                target.parent.mkdir(parents=True, exist_ok=True)
                self._client.download_file(bucket, obj["Key"], str(target))
        except (Boto3Error, BotoCoreError, ClientError) as exc:
            raise CheckpointStorageError(f"cannot download {location}: {_one_line(exc)}") from None

    def exists(self, location: str) -> bool:
        from botocore.exceptions import ClientError

        bucket, key = _split(location)
        try:
            self._client.head_object(Bucket=bucket, Key=f"{key}/{_METADATA}")
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise CheckpointStorageError(f"cannot read {location}: {_one_line(exc)}") from None

    def remove_leftovers(self, partial_pattern: str, recorded: set[str]) -> None:
        if not self.staging.is_dir():
            return
        for path in self.staging.iterdir():  # the staging folder is this experiment's alone
            if not path.name.startswith(".") and path.name not in recorded:  # uploaded (or not) but never recorded
                self.delete(self.location(path.name))
            shutil.rmtree(path, ignore_errors=True)

    def _objects(self, bucket: str, key: str) -> list[dict[str, Any]]:
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{key}/")
        return [obj for page in pages for obj in page.get("Contents", [])]


def _check_staged(folder: Path) -> dict[str, int]:
    """The files of a checkpoint a trial reported (``{path: size}``).  CheckpointStorageError, and the folder
    removed, when it is not whole or holds what the trial API refuses (a link leading outside it, a pipe): the
    engine reads nothing a trial could not have saved through ``hpo.checkpoint_path``."""
    if not (folder / _METADATA).is_file():
        raise CheckpointStorageError(f"its files are not in the checkpoint storage ({folder})")
    try:
        return checked_tree(folder)
    except ValueError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise CheckpointStorageError(f"refused: {exc}") from None
    except OSError as exc:
        raise CheckpointStorageError(f"cannot read {folder}: {exc.strerror or exc}") from None


def remove_matching(folder: Path, pattern: str) -> None:
    """Remove every folder in ``folder`` whose name matches ``pattern`` (checkpoints left half-written)."""
    for path in folder.glob(pattern):
        shutil.rmtree(path, ignore_errors=True)


def _is_uuid(name: str) -> bool:
    try:
        return str(_uuid.UUID(name)) == name
    except ValueError:
        return False


def _split(location: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    if not location.startswith("s3://") or "/" not in location[5:]:
        raise CheckpointStorageError(f"not an s3 location: {location!r}")
    bucket, _, key = location[5:].partition("/")
    return bucket, key.rstrip("/")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
