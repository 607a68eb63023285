#!/usr/bin/env bash
# Idempotently create benchmarks/.venv-nni with NNI 3.0 installed.
# Usage: bash benchmarks/setup_nni.sh   (from anywhere)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
VENV="$HERE/.venv-nni"
PY="${PYTHON:-python3}"

# Keep the venv out of git.
GITIGNORE="$REPO/.gitignore"
touch "$GITIGNORE"
if ! grep -qxF 'benchmarks/.venv-nni/' "$GITIGNORE"; then
    # make sure we start on a fresh line
    if [ -s "$GITIGNORE" ] && [ -n "$(tail -c1 "$GITIGNORE")" ]; then
        echo >> "$GITIGNORE"
    fi
    echo 'benchmarks/.venv-nni/' >> "$GITIGNORE"
fi

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import nni, psutil' >/dev/null 2>&1; then
    echo "setup_nni: $VENV already has nni $("$VENV/bin/python" -c 'import nni; print(nni.__version__)')" >&2
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "nni==3.0" "setuptools<70" psutil
"$VENV/bin/python" -c 'import nni, psutil; print("setup_nni: installed nni", nni.__version__)' >&2
