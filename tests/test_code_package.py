"""The code version of a trial folder is told by stat alone while nothing in it changed, and never misses a change."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from training_services import code_package
from training_services.code_package import CodePacker, code_tree

TICK = 0.05  # longer than a file-time tick (at most 10 ms), so the next change gets new times


@pytest.fixture
def code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "code"
    (root / "pkg").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "train.py").write_text("a = 1\n")
    (root / "pkg" / "model.py").write_text("b = 2\n")
    (root / "data" / "big.bin").write_text("data\n")
    (root / ".hpoignore").write_text("data\n")
    monkeypatch.setattr(code_package, "RACY_SECONDS", TICK / 2)
    time.sleep(TICK)
    return root


CHANGES = {
    "file added in a subfolder": lambda root: (root / "pkg" / "new.py").write_text("c = 3\n"),
    "file rewritten in place, same size": lambda root: (root / "train.py").write_text("a = 4\n"),
    "file renamed": lambda root: os.rename(root / "pkg" / "model.py", root / "pkg" / "other.py"),
    "file removed": lambda root: (root / "pkg" / "model.py").unlink(),
    "folder added": lambda root: (root / "sub").mkdir() or (root / "sub" / "x.py").write_text("d = 5\n"),
    "ignore file changed": lambda root: (root / ".hpoignore").write_text("pkg\n"),
    "ignore file added": lambda root: (root / ".nniignore").write_text("train.py\n"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_gives_a_new_walk_and_version(code: Path, change: str) -> None:
    tree = code_tree(code)
    assert tree.settled and code_tree(code, tree) is tree  # nothing changed: no walk
    CHANGES[change](code)
    again = code_tree(code, tree)
    assert again is not tree and again.version != tree.version


def test_ignored_files_and_fresh_trees(code: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = code_tree(code)
    (code / "data" / "more.bin").write_text("ignored folders are not watched")
    assert code_tree(code, tree) is tree
    monkeypatch.setattr(code_package, "RACY_SECONDS", 1.0)
    (code / "train.py").write_text("a = 6\n")
    fresh = code_tree(code)
    assert not fresh.settled and code_tree(code, fresh) is not fresh  # changed within the last second: walked again


def test_packer_walks_only_after_a_change(code: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    walks: list[Path] = []
    walk = code_package._code_files
    monkeypatch.setattr(code_package, "_code_files", lambda root, *a: walks.append(root) or walk(root, *a))

    async def versions() -> list[str]:
        packer = CodePacker("a test")
        try:
            out = [(await packer.version(code))[0] for _ in range(3)]
            (code / "pkg" / "model.py").write_text("b = 7\n")
            out.append((await packer.version(code))[0])
            return out
        finally:
            packer.close()

    first, second, third, changed = asyncio.run(versions())
    assert first == second == third != changed
    assert len(walks) == 4  # a walk and a pack for each of the two versions
