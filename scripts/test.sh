#!/usr/bin/env bash
# Runs the test suite on both supported transformers lines, the newest 5.x and 4.57.x, side by side, each in its
# own virtual environment with the CPU build of torch, then checks that a directory saved on either line loads
# on the other and acts the same. Offline: nothing is downloaded at test time.
# Arguments go to pytest on both lines: `bash scripts/test.sh -m "not slow"` skips the tests marked slow (the
# rest of this script runs as always).
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
  "$venv/bin/pip" install -q --disable-pip-version-check -e ".[train,dev,metaworld]" "${line#*:}"
  # openpi-client pins numpy<2 but works with numpy 2: install it without its pins, for the protocol test.
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps openpi-client==0.1.2
done

# The two lines run side by side: the suite is mostly single-threaded Python (tiny models, subprocesses), so two
# suites on two cores take little longer than one (on 2 cores: 7.2 min for both, against ~13 min one after the
# other). Each suite gets half the cores for torch's intra-op threads, so that they do not oversubscribe the
# machine (with torch's default of every core each, 8.6 min). Each line's output is printed whole when it ends.
threads=$(($(nproc) / 2))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((threads > 0 ? threads : 1))}
logs=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$logs"; exit 130' INT TERM  # Ctrl-C or a kill: stop both suites
for line in "${LINES[@]}"; do
  name=${line%%:*}
  venv=$(venv_of "$name")
  "$venv/bin/python" -m pytest tests -q -p no:cacheprovider "$@" >"$logs/$name.log" 2>&1 &
  pids+=($!)
done
echo "== tests on ${#LINES[@]} transformers lines side by side (OMP_NUM_THREADS=$OMP_NUM_THREADS each)"
failed=()
for i in "${!LINES[@]}"; do
  name=${LINES[$i]%%:*}
  status=0
  wait "${pids[$i]}" || status=$?
  echo "== tests on $("$(venv_of "$name")/bin/python" -c 'import transformers, torch; print("transformers", transformers.__version__, "/ torch", torch.__version__)')"
  cat "$logs/$name.log"
  [ "$status" -eq 0 ] || failed+=("$name (exit $status)")
done
trap - INT TERM
rm -rf "$logs"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "== tests failed on transformers ${failed[*]}"
  exit 1
fi

echo "== the client's tests in a venv without torch (what \`pip install ./client\` gives a robot)"
client_venv=.venv-tests/client
[ -x "$client_venv/bin/python" ] || "$PYTHON" -m venv "$client_venv"
"$client_venv/bin/pip" install -q --disable-pip-version-check ./client pytest
"$client_venv/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall ./client  # this checkout's
"$client_venv/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is not None)'
"$client_venv/bin/python" -m pytest client/tests -q -p no:cacheprovider

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
