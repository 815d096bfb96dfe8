#!/usr/bin/env bash
# The one script to run the day a GPU machine is lent, from a clone of the repository:
#   bash scripts/device_check.sh
# 1. installs the GPU environment: scripts/setup.sh with VIDEORL_LOCK=gpu (vLLM, DeepSpeed, Ray from
#    requirements/gpu.lock, redis-server); it needs the package index, or a $VIDEORL_CACHE that holds the venv already;
# 2. runs the GPU smoke benchmark, bench/gpu_smoke.py --write, under SMOKE_TIMEOUT_S (default 900 s);
# 3. runs the GPU-marked tests, pytest -m gpu, under GPU_TESTS_TIMEOUT_S (default 1200 s); none selected is a pass.
# Files go to $OUT when set (a lent device machine sends that folder back), else ./device-check/: summary.txt,
# nvidia-smi.txt, setup.log, gpu_smoke.log, gpu_smoke.md, pytest_gpu.log. Exit status 0 when every step passed.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${OUT:-$root/device-check}
mkdir -p "$out"
: >"$out/summary.txt"
export PYTHONUNBUFFERED=1
note() { echo "[device-check] $*" | tee -a "$out/summary.txt" >&2; }

if ! nvidia-smi >"$out/nvidia-smi.txt" 2>&1; then
  note "nvidia-smi failed: no NVIDIA GPU or driver on this machine (nvidia-smi.txt)"
  exit 2
fi
note "GPUs: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | paste -sd ';')"
note "setup: VIDEORL_LOCK=gpu bash scripts/setup.sh"
if ! VIDEORL_LOCK=gpu bash scripts/setup.sh >"$out/setup.log" 2>&1; then
  note "setup failed (setup.log); without the package index it needs a warm \$VIDEORL_CACHE"
  exit 3
fi
# The venv's real path first on PATH: DeepSpeed's compiled ops are keyed to the python and ninja that built them.
venv=$(readlink -f .venv)
export PATH=$venv/bin:$PATH
python=$venv/bin/python

# SIGINT, not SIGTERM: run_local's cleanup (Ray, vLLM, Redis) runs on KeyboardInterrupt, so a smoke that ran out of
# time leaves no process holding the GPU for the tests.
note "smoke: bench/gpu_smoke.py --write (timeout ${SMOKE_TIMEOUT_S:-900} s)"
timeout -s INT -k 60 "${SMOKE_TIMEOUT_S:-900}" "$python" bench/gpu_smoke.py --write 2>&1 | tee "$out/gpu_smoke.log"
smoke=${PIPESTATUS[0]}
cp bench/results/gpu_smoke.md "$out/" 2>/dev/null || true

note "tests: pytest -m gpu (timeout ${GPU_TESTS_TIMEOUT_S:-1200} s)"
timeout -s INT -k 60 "${GPU_TESTS_TIMEOUT_S:-1200}" "$python" -m pytest -m gpu -q 2>&1 | tee "$out/pytest_gpu.log"
tests=${PIPESTATUS[0]}
[ "$tests" = 5 ] && tests=0   # pytest's "no tests selected"

note "gpu_smoke exit $smoke (124: timed out); pytest -m gpu exit $tests"
[ "$smoke" = 0 ] && [ "$tests" = 0 ]
