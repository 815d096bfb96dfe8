#!/usr/bin/env bash
# Regenerates services/common/pb from proto/. The only way generated code is made.
# --check: regenerate into a temp dir and fail if it differs from what is committed.
# Both need the grpcio-tools version of requirements/cpu.lock (a different one gives a clear error, not a diff).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
out=$root/services/common/pb
if [ "${1:-}" = "--check" ]; then out=$(mktemp -d); fi
# Generated code records the grpcio-tools that made it; only the locked version may write or judge it.
want=$(sed -n 's/^grpcio-tools==\([^ ]*\).*/\1/p' "$root/requirements/cpu.lock")
have=$("$py" -c 'from importlib.metadata import version; print(version("grpcio-tools"))' 2>/dev/null || echo none)
if [ "$have" != "$want" ]; then
  echo "proto: $py has grpcio-tools $have, but requirements/cpu.lock pins $want; generated code is compared only" \
    "as the locked tool writes it. Use the project's venv (bin/dev test, or PYTHON=.venv/bin/python $0 $*)." >&2
  exit 1
fi
mkdir -p "$out"
"$py" -m grpc_tools.protoc -I "$root/proto" --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$root"/proto/videorl/v1/*.proto
# protoc emits absolute imports (`from videorl.v1 import ...`); make them package-relative.
find "$out" -name '*_pb2*.py' -exec sed -i -E 's/^from videorl\.v1 import/from . import/' {} +
touch "$out/__init__.py" "$out/videorl/__init__.py" "$out/videorl/v1/__init__.py"
if [ "${1:-}" = "--check" ]; then
  if ! diff -r -x __pycache__ "$out" "$root/services/common/pb" >/dev/null; then
    echo "generated proto code is stale: run scripts/gen_proto.sh and commit" >&2
    diff -r -x __pycache__ "$out" "$root/services/common/pb" | head -20 >&2
    exit 1
  fi
  echo "proto: generated code is up to date"
fi
