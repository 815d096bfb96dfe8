"""Makes every interpreter of the videorl venv find compiled extensions by one path (a .pth hook; setup.sh installs it).

torch keys JIT-compiled extensions (DeepSpeed's shm op) on their include paths and builds them with the first `ninja`
on PATH, so a venv reached through a link (each clone's ./.venv) or with the system's ninja first compiled the op
again, about a minute on 2 cores. At start-up this hook puts the venv's site-packages on sys.path by their real paths,
the venv's bin first on PATH, and defaults TORCH_EXTENSIONS_DIR to a folder inside the venv, where setup.sh builds
the op once. It imports nothing heavy.
"""

import os
import sys


def _pin_paths() -> None:
    prefix = sys.prefix
    real = os.path.realpath(prefix)
    if real != prefix:
        sys.path[:] = [os.path.realpath(p) if p.startswith(prefix + os.sep) else p for p in sys.path]
    path = os.environ.get("PATH", "")
    bin_dir = os.path.join(real, "bin")
    first = path.split(os.pathsep, 1)[0]
    if not first or os.path.realpath(first) != bin_dir:
        os.environ["PATH"] = bin_dir + os.pathsep + path if path else bin_dir
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(real, "torch-extensions"))


_pin_paths()
