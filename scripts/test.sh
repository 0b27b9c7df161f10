#!/usr/bin/env bash
# Install callpipe with its test tools into ./.venv and run the whole test suite
# (the suite includes ruff and mypy), with the system packages it needs (PostgreSQL,
# Chromium). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
. scripts/_venv.sh
"$VENV_PY" -m pip install -q -e ".[dev,local,openai]"
exec "$VENV_PY" -m pytest "$@"
