"""Checkpoints from inside a trial (stdlib only, imported on first use): ``hpo.checkpoint_path``,
``hpo.report_checkpoint`` and ``hpo.restore_checkpoint``.

A checkpoint is a folder named by a fresh uuid, holding the trial's files and a ``metadata.json``.  The trial
writes it under ``HPO_CHECKPOINT_DIR`` (set by the training service: for local trials, the experiment's
checkpoint storage itself) as ``.<experiment>-<trial>-<uuid>.partial``; only when the ``with`` block ends without an error is it
renamed to ``<uuid>`` and reported to the engine (``{"type": "checkpoint", ...}`` on the report channel, or
``HPO_CHECKPOINT=<json>`` on stdout), so a trial killed mid-write never leaves a checkpoint that looks whole.
Outside an experiment checkpoints go to ``./checkpoints/<uuid>``.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

__all__ = ["checkpoint_path", "report_checkpoint", "restore_checkpoint", "checked_tree", "partial_name"]


def _root() -> Path:
    folder = os.environ.get("HPO_CHECKPOINT_DIR")
    if folder:
        return Path(folder)
    if "HPO_TRIAL_ID" in os.environ:
        raise RuntimeError("this trial's training service does not collect checkpoints yet (HPO_CHECKPOINT_DIR is "
                           "not set; Kubernetes needs a pvc for them)")
    return Path("checkpoints")


def _uuid4() -> str:
    """A random (version 4) UUID as ``uuid.uuid4()`` gives it, without importing ``uuid``: in Python 3.11 that
    imports ``platform``, about 10 ms of a trial's first checkpoint."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _checked_metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ValueError(f"checkpoint metadata: expected a dict, got {type(metadata).__name__}")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint metadata must be JSON (numbers, strings, lists, dicts): {exc}") from None
    steps = metadata.get("steps_completed")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 0):
        raise ValueError(f"checkpoint metadata: steps_completed must be an integer >= 0, got {steps!r}")
    return dict(metadata)


def partial_name(experiment_id: str, trial_id: str, uid: str) -> str:
    """The name a checkpoint has while it is written (the engine removes a killed trial's leftovers by it)."""
    return f".{experiment_id}-{trial_id}-{uid}.partial"


def checked_tree(folder: Path, copy_to: Path | None = None) -> dict[str, int]:
    """``{relative path: size}`` of the files under ``folder`` (copied into ``copy_to`` in the same walk, if given).
    ValueError for a link leading outside ``folder`` (never followed) or a pipe, socket or device."""
    out: dict[str, int] = {}
    base = os.path.realpath(folder)
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(folder, rel)) as entries:
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                dest = os.path.join(copy_to, name) if copy_to is not None else None
                if entry.is_dir(follow_symlinks=False):
                    stack.append(name)
                    if dest:
                        os.mkdir(dest)
                    continue
                if entry.is_symlink():
                    link = os.readlink(entry.path)
                    if os.path.commonpath([base, os.path.realpath(entry.path)]) != base:
                        raise ValueError(f"checkpoint: {name} is a symbolic link to {link}, outside the checkpoint")
                    if dest:
                        os.symlink(link, dest)
                elif not entry.is_file(follow_symlinks=False):
                    raise ValueError(f"checkpoint: {name} is not a file or a folder")
                elif dest:
                    shutil.copyfile(entry.path, dest)
                out[name] = entry.stat(follow_symlinks=False).st_size
    return dict(sorted(out.items()))


@contextlib.contextmanager
def _saving(metadata: Any) -> Iterator[tuple[Path, str, dict[str, int]]]:
    """The folder to write into, the uuid, and a map of the files written (if left empty, the folder is walked)."""
    meta = _checked_metadata(metadata)
    root = _root()
    uid = _uuid4()
    partial = root / partial_name(os.environ.get("HPO_EXPERIMENT_ID", "STANDALONE"),
                                  os.environ.get("HPO_TRIAL_ID", "STANDALONE"), uid)
    report: dict[str, Any] = {"uuid": uid, "metadata": meta}
    written: dict[str, int] = {}
    try:
        root.mkdir(parents=True, exist_ok=True)
        partial.mkdir()
        yield partial, uid, written
        with open(partial / "metadata.json", "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=1)
            size = fh.tell()
        report["resources"] = dict(sorted({**written, "metadata.json": size}.items())) if written \
            else checked_tree(partial)
        os.rename(partial, root / uid)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        report.update(resources={}, error=f"not saved: {exc.strerror} (in {root})")
        print(f"hpo: checkpoint {uid} {report['error']}; the trial goes on", file=sys.stderr, flush=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    from hpo.trial import _send
    _send("checkpoint", report)


@contextlib.contextmanager
def checkpoint_path(metadata: dict[str, Any] | None = None) -> Iterator[Path]:
    """A fresh, empty folder to write a checkpoint into; when the block ends it is saved and reported with
    ``metadata`` (JSON; ``steps_completed`` says which step it holds, by default the number of intermediate
    results reported so far).  An exception in the block discards the folder; so does a full disk, which is not
    raised: the checkpoint is recorded as ERROR and the trial goes on.  A link leading out is refused (ValueError)."""
    with _saving(metadata) as (folder, _, _):
        yield folder


def report_checkpoint(folder: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> str:
    """Save a copy of ``folder`` (written by the trial) as a checkpoint; returns its uuid.  Errors as for
    :func:`checkpoint_path`."""
    source = Path(folder)
    if not source.is_dir():
        raise ValueError(f"report_checkpoint: {source} is not a folder")
    with _saving(metadata) as (target, uid, written):
        written.update(checked_tree(source, copy_to=target))
    return uid


def restore_checkpoint() -> Path | None:
    """The folder of the checkpoint this trial continues from, or None: the latest one of the trial it re-runs (a
    retry or a re-run), or of the trial its tuner says it continues (a configuration Hyperband or BOHB promoted, see
    ``Tuner.continues_from``).  Read it, do not change it: it may be another trial's."""
    folder = os.environ.get("HPO_RESTORE_CHECKPOINT")
    return Path(folder) if folder and os.path.isdir(folder) else None
