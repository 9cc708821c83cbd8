#!/usr/bin/env bash
# Runs the test suite on both supported transformers lines, the newest 5.x and 4.57.x, each in its own
# virtual environment with the CPU build of torch. Offline: nothing is downloaded at test time.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
for line in "5:transformers>=5,<6" "4.57:transformers==4.57.*"; do
  name=${line%%:*}
  spec=${line#*:}
  venv=".venv-tests/transformers-$name"
  [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check torch==2.13.0
  "$venv/bin/pip" install -q --disable-pip-version-check -r requirements.txt "$spec" pytest
  echo "== tests on $("$venv/bin/python" -c 'import transformers, torch; print("transformers", transformers.__version__, "/ torch", torch.__version__)')"
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$venv/bin/python" -m pytest tests -q -p no:cacheprovider "$@"
done
