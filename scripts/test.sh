#!/usr/bin/env bash
# Runs the test suite on both supported transformers lines, the newest 5.x and 4.57.x, each in its own
# virtual environment with the CPU build of torch, then checks that a directory saved on either line loads
# on the other and acts the same. Offline: nothing is downloaded at test time.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LINES=("5:transformers>=5,<6" "4.57:transformers==4.57.*")
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

venv_of() { echo ".venv-tests/transformers-$1"; }

for line in "${LINES[@]}"; do
  name=${line%%:*}
  venv=$(venv_of "$name")
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check torch==2.13.0
  "$venv/bin/pip" install -q --disable-pip-version-check -e ".[train,dev]" "${line#*:}"
  # openpi-client pins numpy<2 but works with numpy 2: install it without its pins, for the protocol test.
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps openpi-client==0.1.2
  echo "== tests on $("$venv/bin/python" -c 'import transformers, torch; print("transformers", transformers.__version__, "/ torch", torch.__version__)')"
  "$venv/bin/python" -m pytest tests -q -p no:cacheprovider "$@"
done

echo "== lint and format (ruff, configured in pyproject.toml)"
"$(venv_of 5)/bin/ruff" check .
"$(venv_of 5)/bin/ruff" format --check .

echo "== a directory saved on one transformers line, loaded on the other"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$(venv_of 5)/bin/python" tests/cross_line.py save "$scratch/from-5"
"$(venv_of 4.57)/bin/python" tests/cross_line.py check "$scratch/from-5"
"$(venv_of 4.57)/bin/python" tests/cross_line.py save "$scratch/from-4.57"
"$(venv_of 5)/bin/python" tests/cross_line.py check "$scratch/from-4.57"
