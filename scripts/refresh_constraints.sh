#!/usr/bin/env bash
# Refresh constraints.txt: resolve the newest versions that pyproject.toml's ranges allow in a
# fresh virtual environment, run the whole test suite on them, and only then write their exact
# versions to constraints.txt (review the diff and commit it with the test run's result).
#
#   scripts/refresh_constraints.sh            # CPU torch, the version pinned below
#   TORCH=torch==2.14.0 scripts/refresh_constraints.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH="${TORCH:-torch==2.13.0}"
VENV="$(mktemp -d)/venv"
python3 -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "$TORCH"          # before the rest: the CPU build, not the CUDA wheels
python -m pip install --quiet -e ".[test]"       # no constraints: the newest the ranges allow
python -m pytest -q
{
    echo "# Exact versions the test suite passed with (Python $(python -c 'import sys; print("%d.%d" % sys.version_info[:2])'), $(uname -sm))."
    echo "# Used by the README's install command and .ci/run: pip install -c constraints.txt ..."
    echo "# Refresh: scripts/refresh_constraints.sh (resolves, tests, then rewrites this file)."
    # A local build label (2.13.0+cpu) is dropped, so the pin fits the CPU and the CUDA builds alike.
    python -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt refreshed from $VENV; review: git diff constraints.txt"
