"""Code packing shared by every service that runs trials away from the engine (SSH hosts, Kubernetes pods).

A trial's code folder is shipped as a tar.gz, minus ``DEFAULT_IGNORE`` and the globs listed in its
``.hpoignore`` / ``.nniignore`` (one glob a line: a bare name matches at any depth, ``a/b`` or ``/a``
from the top).  A *version* is a digest of the names, sizes and modification times of the files that
would be shipped: :class:`CodePacker` packs each version once per experiment, so a trial runs the code as
it was when it was launched.  Telling the version does not walk the folder again while nothing in it changed:
a :class:`CodeTree` keeps the status-change time, modification time, size and inode of every folder it walked,
every file it shipped and the ignore files, and a stat of each says whether anything was added, removed,
renamed, rewritten or re-ignored since (a file written in place changes its times, an entry added, removed or
renamed changes its folder's).  A walk that saw anything changed less than :data:`RACY_SECONDS` before it is
not trusted (file times move in coarse ticks: a change in the same tick could leave them equal), so the
next launch walks again.  The stdlib-only trial API (``hpo/trial.py`` behind a small ``hpo``
package) travels with it, so nothing of hpo needs to be installed where trials run.
"""
from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import io
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import hpo.trial

__all__ = ["DEFAULT_IGNORE", "IGNORE_FILES", "CODE_SIZE_WARNING", "RACY_SECONDS", "CodeTree", "code_tree", "pack_code",
           "trial_api_files", "CodePacker", "unpack_once"]

log = logging.getLogger("hpo.code")

DEFAULT_IGNORE = (".git", ".hg", ".svn", "__pycache__", "*.pyc", ".venv*", "venv", ".mypy_cache", ".pytest_cache",
                  ".ipynb_checkpoints", "node_modules", ".DS_Store", ".nniignore", ".hpoignore")
IGNORE_FILES = (".hpoignore", ".nniignore")
CODE_SIZE_WARNING = 64 * 2**20
RACY_SECONDS = 1.0     # a walk that saw a change this recent is done again at the next launch
INLINE_STATS = 64      # a tree this small is checked on the event loop (a few microseconds), a larger one in a thread
_TRIAL_API_INIT = '''"""The hpo trial API, shipped with the trial code by a training service (stdlib only)."""
from hpo.trial import (get_current_parameter, get_experiment_id, get_next_parameter, get_sequence_id,
                       get_trial_id, report_final_result, report_intermediate_result)
from hpo.trial_checkpoint import checkpoint_path, report_checkpoint, restore_checkpoint
from hpo.trial_outputs import log_metrics, log_outputs
'''


def trial_api_files() -> dict[str, bytes]:
    """``{relative path: content}`` of the importable trial API: put the folder holding ``hpo/`` on
    ``PYTHONPATH`` and ``import hpo`` gives the trial functions, with nothing installed; ``import nni`` gives
    NNI's (hpo's stand-in, which defers to a real nni installed there)."""
    here = Path(hpo.trial.__file__).parent
    return {"hpo/__init__.py": _TRIAL_API_INIT.encode(), "hpo/trial.py": (here / "trial.py").read_bytes(),
            "hpo/trial_checkpoint.py": (here / "trial_checkpoint.py").read_bytes(),
            "hpo/nni_channel.py": (here / "nni_channel.py").read_bytes(),
            "nni/__init__.py": (here / "nni_stub" / "nni" / "__init__.py").read_bytes(),
            "hpo/trial_outputs.py": (here / "trial_outputs.py").read_bytes(),
            "hpo/polyaxon/__init__.py": (here / "polyaxon" / "__init__.py").read_bytes(),
            "hpo/polyaxon/context.py": (here / "polyaxon" / "context.py").read_bytes(),
            "hpo/polyaxon/launch.py": (here / "polyaxon" / "launch.py").read_bytes()}


def _ignore_patterns(code_dir: Path) -> list[str]:
    patterns = list(DEFAULT_IGNORE)
    for name in IGNORE_FILES:
        path = code_dir / name
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    patterns.append(line.rstrip("/"))
    return patterns


def _ignored(rel: str, patterns: list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    for pat in patterns:
        if pat.startswith("/"):
            if fnmatch.fnmatch(rel, pat[1:]):
                return True
        elif "/" in pat:
            if fnmatch.fnmatch(rel, pat):
                return True
        elif fnmatch.fnmatch(name, pat):
            return True
    return False


def _code_files(code_dir: Path, folders: list[str] | None = None) -> list[tuple[str, str]]:
    """(relative name, path) of every file to ship, sorted; ignored files and folders left out.  The folders
    walked are appended to ``folders``."""
    patterns = _ignore_patterns(code_dir)
    out = []
    for root, dirs, names in os.walk(code_dir):
        if folders is not None:
            folders.append(root)
        rel_root = os.path.relpath(root, code_dir)
        rel_root = "" if rel_root == "." else rel_root.replace(os.sep, "/") + "/"
        dirs[:] = sorted(d for d in dirs if not _ignored(rel_root + d, patterns))
        out += [(rel_root + n, os.path.join(root, n)) for n in sorted(names) if not _ignored(rel_root + n, patterns)]
    return out


_Stat = tuple[int, int, int, int]


def _stat(path: str) -> _Stat | None:
    """(status-change time, modification time, size, inode) of ``path`` itself, None if it is not there."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_ctime_ns, st.st_mtime_ns, st.st_size, st.st_ino


@dataclass(frozen=True)
class CodeTree:
    """One walk of a code folder: its ``version`` and the stat of everything the walk depended on."""

    version: str
    seen: tuple[tuple[str, _Stat | None], ...]   # folders walked, files shipped, the ignore files
    settled: bool                                 # all of it older than the walk by RACY_SECONDS

    def unchanged(self) -> bool:
        """True when nothing the walk saw has changed since, so a new walk would give the same version."""
        return self.settled and all(_stat(path) == stat for path, stat in self.seen)


def code_tree(code_dir: Path, last: CodeTree | None = None) -> CodeTree:
    """The version of ``code_dir`` (a digest of the names, sizes and modification times of the files
    :func:`pack_code` would ship): ``last`` itself when nothing in the folder changed since that walk."""
    if last is not None and last.unchanged():
        return last
    racy = time.time_ns() - int(RACY_SECONDS * 1e9)
    folders: list[str] = []
    files = _code_files(Path(code_dir), folders)
    seen = [(path, _stat(path)) for path in folders + [str(Path(code_dir) / name) for name in IGNORE_FILES]]
    digest = hashlib.sha256()
    for rel, path in files:
        stat = _stat(path)
        if stat is None:
            continue
        seen.append((path, stat))
        digest.update(f"{rel}\0{stat[2]}\0{stat[1]}\0".encode())
    settled = all(stat is None or max(stat[0], stat[1]) < racy for _, stat in seen)
    return CodeTree(digest.hexdigest()[:16], tuple(seen), settled)


def pack_code(code_dir: Path | None, out: Path | BinaryIO, prefix: str = "", extra: dict[str, bytes] | None = None
              ) -> tuple[int, int]:
    """Write ``code_dir`` (minus ignored files; None: no code) as a tar.gz at ``out`` (a path or a binary file),
    each name under ``prefix``, plus the ``extra`` files (name -> content, not prefixed); returns (files, bytes)."""
    files = size = 0
    target = {"name": out} if isinstance(out, (str, Path)) else {"fileobj": out}
    with tarfile.open(mode="w:gz", compresslevel=6, **target) as tar:
        for rel, path in _code_files(Path(code_dir)) if code_dir is not None else []:
            try:
                info = tar.gettarinfo(path, arcname=prefix + rel)
                if info.isreg():
                    with open(path, "rb") as fh:
                        tar.addfile(info, fh)
                    size += info.size
                elif info.issym():
                    tar.addfile(info)
                else:
                    continue
            except OSError:
                continue
            files += 1
        for name, data in sorted((extra or {}).items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return files, size


def unpack_once(tarball: Path, target: Path) -> None:
    """Unpack ``tarball`` at ``target`` unless there already (atomically: a half-unpacked copy is never used).
    The remote agent (``_remote_agent.py``, shipped alone to SSH hosts) does the same on its side."""
    if target.is_dir():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(tarball) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp, filter="data")
        else:
            tar.extractall(tmp)
    try:
        os.rename(tmp, target)
    except OSError:  # another engine unpacked the same version meanwhile
        shutil.rmtree(tmp, ignore_errors=True)


class CodePacker:
    """Packs each version of a code folder once (in a worker thread) into a private temporary folder.

    Args:
        what: where the code goes, for the size warning ("every remote machine").
        prefix, extra: as in :func:`pack_code`.
    """

    def __init__(self, what: str, prefix: str = "", extra: dict[str, bytes] | None = None) -> None:
        self.what, self.prefix, self.extra = what, prefix, extra
        self._packs: dict[str, asyncio.Future[Path]] = {}
        self._trees: dict[Path, CodeTree] = {}   # the last walk of each code folder
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    async def version(self, code_dir: Path) -> tuple[str, Path]:
        """(version, tar.gz) of ``code_dir`` as it is now."""
        code_dir = Path(code_dir).resolve()
        last = self._trees.get(code_dir)
        if last is not None and len(last.seen) <= INLINE_STATS and last.unchanged():
            tree = last
        else:
            tree = await asyncio.get_running_loop().run_in_executor(None, code_tree, code_dir, last)
        self._trees[code_dir] = tree
        version = tree.version
        fut = self._packs.get(version)
        if fut is None:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="hpo-code-")
            fut = self._packs[version] = asyncio.ensure_future(
                self._pack(code_dir, Path(self._tmp.name) / f"code-{version}.tar.gz"))
        return version, await asyncio.shield(fut)

    async def _pack(self, code_dir: Path, out: Path) -> Path:
        files, size = await asyncio.get_running_loop().run_in_executor(
            None, pack_code, code_dir, out, self.prefix, self.extra)
        packed = out.stat().st_size
        log.info("trial code %s: %d files, %.1f MB (%.1f MB packed)", code_dir, files, size / 2**20, packed / 2**20)
        if size > CODE_SIZE_WARNING:
            message = (f"trial_code_directory {code_dir} holds {size / 2**20:.0f} MB ({files} files) to upload to "
                       f"{self.what}; list data, checkpoints and environments in {code_dir}/.hpoignore "
                       f"(or .nniignore) to leave them out")
            log.warning(message)
            print(f"WARNING: hpo: {message}", file=sys.stderr)
        return out

    def close(self) -> None:
        """Delete the packed files."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._packs.clear()
        self._trees.clear()
