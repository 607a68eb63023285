"""NNI 3.0 itself, in its own venv, for the tests that prove NNI's code works against hpo (nothing imitated).

The venv is built once (``python -m venv`` + ``pip install "nni==3.0" "setuptools<70"``) under a stable path,
``$HPO_TEST_NNI_VENV`` or ``~/.cache/hpo-tests/nni-3.0-pyX.Y``, so later sessions and CI runs reuse it; a
``.complete`` marker is written last, and a folder without it is rebuilt.  A lock file keeps two sessions from
building it at once.  When the wheel cannot be installed the tests are skipped with pip's last line.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["nni_venv", "nni_python", "nni_site_packages"]

_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
VENV = Path(os.environ.get("HPO_TEST_NNI_VENV") or Path.home() / ".cache" / "hpo-tests" / f"nni-3.0-py{_VERSION}")


def nni_venv() -> Path | str:
    """The venv's folder, or a one-line reason it cannot be built."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / f"{VENV.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (VENV / ".complete").exists():
            return VENV
        shutil.rmtree(VENV, ignore_errors=True)
        steps = ([sys.executable, "-m", "venv", str(VENV)],
                 [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "nni==3.0", "setuptools<70"],
                 [str(VENV / "bin" / "python"), "-c", "import nni, nni.experiment, nni.tools.nnictl.nnictl"])
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                shutil.rmtree(VENV, ignore_errors=True)
                lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
                return f"NNI 3.0 cannot be installed here: {lines[-1][:200]}"
        (VENV / ".complete").write_text("nni==3.0\n")
        return VENV


def nni_python(venv: Path) -> str:
    return str(venv / "bin" / "python")


def nni_site_packages(venv: Path) -> str:
    """The venv's site-packages, for a process of the test venv that appends it to ``sys.path`` (NNI loaded in
    hpo's engine, as where a user has both installed)."""
    return str(next((venv / "lib").glob("python*/site-packages")))
