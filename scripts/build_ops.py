"""Compiles DeepSpeed's CPU communication op once, into the venv (setup.sh runs this after installing the lock).

The learner would otherwise compile it on its first start (about 50 s on 2 cores), in every fresh venv and again
whenever the venv was reached by another path. TORCH_EXTENSIONS_DIR points inside the venv (scripts/venv_paths.py).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common.torch_ext import clear_stale_build_locks  # noqa: E402


def main() -> None:
    root = Path(os.environ["TORCH_EXTENSIONS_DIR"])
    for lock in clear_stale_build_locks(root):
        print(f"removed a stale build lock: {lock}")
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not builder.is_compatible():
        print("no CPU communication op to build on this accelerator")
        return
    builder.load()
    print(f"built {builder.name} under {root}")


if __name__ == "__main__":
    main()
