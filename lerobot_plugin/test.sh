#!/usr/bin/env bash
# The LeRobot plugin's tests against the real LeRobot, on each supported line: LeRobot's dataset writer (image and
# video cameras), lerobot-train --policy.type=xr0 with a save, a resume and a fine-tuning from --policy.path,
# lerobot-eval's reload and a Meta-World episode, the processor pipelines, real-time chunking as LeRobot calls it,
# and XR0's own path for the same observation.
#
#   bash lerobot_plugin/test.sh                 # both lines
#   bash lerobot_plugin/test.sh 0.6.1 -k rtc    # one line; further arguments go to pytest
#
# Each line's venv, .venv-tests/lerobot-<line>, is built by the first run with the install commands of
# lerobot_plugin/README.md and reused by later runs, which reinstall this checkout's XR0 and plugin:
#   0.4.4  Python 3.11, lerobot --no-deps beside torch 2.14.1 (on this machine's disk): about 7 GB, 5 minutes.
#   0.6.1  Python 3.12, LeRobot's own pins (a CUDA build of torch 2.11 downloaded): about 6 GB, 3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
lines=(0.4.4 0.6.1)
if [ $# -gt 0 ] && [[ " ${lines[*]} " == *" $1 "* ]]; then
  lines=("$1")
  shift
fi

pip_in() { "$1/bin/pip" install -q --disable-pip-version-check "${@:2}"; }

for line in "${lines[@]}"; do
  venv=.venv-tests/lerobot-$line
  requirements=lerobot_plugin/requirements-lerobot-$line.txt
  start=$SECONDS
  if [ ! -x "$venv/bin/lerobot-train" ]; then
    echo "== building $venv"
    rm -rf "$venv"
    case $line in
      0.4.4)
        python3.11 -m venv "$venv"
        pip_in "$venv" --no-deps lerobot==0.4.4
        ;;
      0.6.1) PYENV_VERSION=3.12.1 python -m venv "$venv" ;;
    esac
  fi
  pip_in "$venv" -r "$requirements" -e ".[train]" pytest
  pip_in "$venv" --no-deps -e lerobot_plugin
  echo "== $venv ready in $((SECONDS - start)) s ($(du -sh "$venv" | cut -f1))"
  echo "== LeRobot plugin tests on $("$venv/bin/python" -c 'import lerobot, torch, transformers; print("lerobot", lerobot.__version__, "/ torch", torch.__version__, "/ transformers", transformers.__version__)')"
  (cd lerobot_plugin && HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" \
    "../$venv/bin/python" -m pytest -q -p no:cacheprovider tests "$@")
done
