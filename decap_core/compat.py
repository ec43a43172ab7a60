"""Work around a CUDA torchvision wheel next to a CPU torch build.

torchvision's CUDA wheel registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms``
at import time; with a CPU torch its compiled extension cannot load, those operator schemas do not
exist and the import fails. We define the two schemas before torchvision is first imported, and
only when its extension cannot load, so open_clip's transforms import. Where the extension loads
(a matching torchvision, on CPU or GPU) nothing is changed. ``torchvision.ops`` stays unusable in
the shimmed case; decap does not need it. This module is imported first by ``decap_core`` so that
fresh Beam worker processes get it too.
"""
import importlib.util
import pathlib

import torch


def ensure_torchvision_importable() -> None:
    """Define the torchvision operator schemas the CUDA wheel expects, if its extension cannot load."""
    if _has_op("nms") or _extension_loads():
        return
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    # Keep the library object alive for the process lifetime, or the definitions go away.
    globals()["_TORCHVISION_SHIM"] = library


def _has_op(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def _extension_loads() -> bool:
    """Load torchvision's compiled operators the way torchvision does; False where they cannot load."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        return True  # no torchvision: nothing to work around
    for folder in spec.submodule_search_locations or ():
        for library in sorted(pathlib.Path(folder).glob("_C*.so")) + sorted(pathlib.Path(folder).glob("_C*.pyd")):
            try:
                torch.ops.load_library(str(library))
                return True
            except OSError:
                return False
    return False


ensure_torchvision_importable()
