# Sourced by the set-up scripts: create ./.venv once (Python >= 3.11) and set VENV_PY.
PY="${PYTHON:-python3}"
"$PY" - <<'PYEOF' || { echo "callpipe needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PYEOF
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
fi
VENV_PY="$PWD/.venv/bin/python"
export PATH="$PWD/.venv/bin:$PATH"
