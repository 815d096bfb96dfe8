"""Lets PyPI's CUDA-linked torchvision import beside torch+cpu (installed as a .pth hook by setup.sh).

torchvision's native library fails to load next to the CPU build of torch, and its pure-Python part
then dies registering fake kernels for ops that were never defined ("operator torchvision::nms does
not exist"). vLLM's Qwen2-VL only needs the pure-Python transforms, so on the first `import
torchvision` we define the two op schemas it registers fakes for, when and only when `_C` cannot load.
The hook is lazy: interpreters that never import torchvision never import torch because of it.
"""

import importlib.abc
import importlib.util
import sys

_LIBS = []  # keep the torch.library handles alive for the life of the process


class _TorchvisionFix(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torchvision")
        if spec is None or not spec.submodule_search_locations:
            return None
        import glob
        import os

        import torch

        so = glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so"))
        try:
            if so:
                torch.ops.load_library(so[0])
                return None
        except OSError:
            pass
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for name in ("nms", "qnms"):
            try:
                lib.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            except RuntimeError:
                pass  # already defined by someone else
        _LIBS.append(lib)
        return None


if not any(isinstance(f, _TorchvisionFix) for f in sys.meta_path):
    sys.meta_path.insert(0, _TorchvisionFix())
