#!/usr/bin/env bash
# The LeRobot plugin's tests against the real LeRobot (0.4.4, Python 3.11): LeRobot's dataset writer,
# lerobot-train --policy.type=xr0, lerobot-eval in LeRobot's Meta-World environment, the processor pipelines and
# XR0's own path for the same observation. The first run builds .venv-tests/lerobot (about 7 GB, 4 minutes: a CUDA
# build of torch 2.14.1 from this machine's disk, needed beside torchvision); later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-tests/lerobot
pip_install() { "$venv/bin/pip" install -q --disable-pip-version-check "$@"; }
if [ ! -x "$venv/bin/lerobot-train" ]; then
  echo "== building $venv (lerobot 0.4.4, torch 2.14.1, transformers 4.57)"
  rm -rf "$venv"
  python3.11 -m venv "$venv"
  pip_install torch==2.14.1 torchvision==0.29.1
  pip_install --no-deps lerobot==0.4.4
  pip_install -r lerobot_plugin/requirements-lerobot-0.4.4.txt torch==2.14.1 torchvision==0.29.1
fi
# This checkout's XR0 and plugin (no deps for the plugin: its `lerobot` requirement would ask for torch < 2.11).
pip_install -e ".[train]" torch==2.14.1 transformers==4.57.*
pip_install --no-deps -e lerobot_plugin
echo "== LeRobot plugin tests on $("$venv/bin/python" -c 'import lerobot, torch, transformers; print("lerobot", lerobot.__version__, "/ torch", torch.__version__, "/ transformers", transformers.__version__)')"
cd lerobot_plugin
HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" "../$venv/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
