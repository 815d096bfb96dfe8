# Sourced by setup.sh and lock.sh: `uv_install` prints the path of the pinned uv (requirements/uv.txt),
# installing it once into its own small venv under the cache.
uv_install() {
  local cache=${VIDEORL_CACHE:-$HOME/.cache/videorl}
  local want tools
  want=$(sed -n 's/^uv==\([^ ]*\).*/\1/p' "$root/requirements/uv.txt")
  tools=$cache/uv-$want
  if [ ! -x "$tools/bin/uv" ]; then
    mkdir -p "$cache"
    rm -rf "$tools"
    python3 -m venv "$tools"
    "$tools/bin/python" -m pip install -q --disable-pip-version-check --require-hashes -r "$root/requirements/uv.txt" \
      >"$cache/uv-install.log" 2>&1 || { tail -20 "$cache/uv-install.log" >&2; echo "[setup] installing uv failed" >&2; return 1; }
  fi
  echo "$tools/bin/uv"
}
