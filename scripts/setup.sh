#!/usr/bin/env bash
# Installs everything videorl needs on a fresh machine. Idempotent, cached and locked:
# - system packages (redis-server, prometheus) only when missing;
# - one virtualenv shared by every clone, under $VIDEORL_CACHE (default ~/.cache/videorl), holding exactly the
#   versions of requirements/cpu.lock (VIDEORL_LOCK=gpu: requirements/gpu.lock), installed by the pinned uv;
#   rebuilt only when the lock, the venv hooks or DEPS_REV change; ./.venv links to it;
# - DeepSpeed's CPU communication op, compiled once into the venv (TORCH_EXTENSIONS_DIR, see scripts/venv_paths.py).
# To change a version: edit pyproject.toml, then `bash scripts/lock.sh`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${VIDEORL_CACHE:-$HOME/.cache/videorl}
export VIDEORL_CACHE=$cache
flavour=${VIDEORL_LOCK:-cpu}
lock=$root/requirements/$flavour.lock
venv=$cache/venv
[ "$flavour" = cpu ] || venv=$cache/venv-$flavour
# Bump DEPS_REV when the install steps below change; editing anything else here reinstalls nothing.
DEPS_REV=2
hooks=("$root/scripts/venv_paths.py" "$root/scripts/torchvision_cpu_fix.py")
stamp_want=$( (echo "$DEPS_REV"; cat "$lock" "${hooks[@]}") | sha256sum | cut -c1-16)

log() { printf '[setup] %s\n' "$*" >&2; }
[ -f "$lock" ] || { log "no lock file $lock (VIDEORL_LOCK is cpu or gpu)"; exit 2; }
# uv's downloads are cached beside the venv, so an empty VIDEORL_CACHE is a truly fresh install.
export UV_CACHE_DIR=${UV_CACHE_DIR:-$cache/uv-cache} UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1
# Quiet: output goes to a log that is shown only when a step fails.
quiet() {
  "$@" >>"$cache/setup.log" 2>&1 || { tail -40 "$cache/setup.log" >&2; log "failed: $*; full log: $cache/setup.log"; exit 1; }
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

mkdir -p "$cache"; : >"$cache/setup.log"
source "$root/scripts/uv_bootstrap.sh"
uv=$(uv_install)
if [ "$(cat "$venv/.videorl-stamp" 2>/dev/null)" != "$stamp_want" ]; then
  log "creating $venv from ${lock#"$root"/} ($(grep -c '^[A-Za-z0-9]' "$lock") packages; ~2-4 min, once)"
  rm -rf "$venv"
  python=$(python3.11 -c 'import sys; print(sys.executable)' 2>/dev/null || python3 -c 'import sys; print(sys.executable)')
  quiet "$uv" venv -q --python "$python" "$venv"
  # sync: exactly the lock, every file checked against its hash. /opt/wheels holds the torch+cpu wheel the CPU
  # lock names (this kind of machine ships it; PyPI has only CUDA builds of torch for Linux).
  quiet "$uv" pip sync -q --python "$venv/bin/python" --require-hashes --find-links /opt/wheels "$lock"
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  cp "$root/scripts/venv_paths.py" "$site/videorl_venv_paths.py"
  echo "import videorl_venv_paths" >"$site/00_videorl_venv_paths.pth"
  if [ "$flavour" = cpu ]; then
    cp "$root/scripts/torchvision_cpu_fix.py" "$site/videorl_torchvision_fix.py"
    echo "import videorl_torchvision_fix" >"$site/videorl_torchvision_fix.pth"
    log "compiling DeepSpeed's CPU communication op into the venv (~1 min, once)"
    quiet "$venv/bin/python" "$root/scripts/build_ops.py"
  fi
  echo "$stamp_want" >"$venv/.videorl-stamp"
fi
# Cheap, and points the shared venv at this clone (no build isolation: the locked setuptools builds it).
quiet "$uv" pip install -q --python "$venv/bin/python" --no-deps --no-build-isolation -e "$root"
ln -sfn "$venv" "$root/.venv"
log "ready: $venv"
