"""Work around a CUDA torchvision wheel next to a CPU torch build.

torchvision's CUDA wheel registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms``
at import time; with a CPU torch those operator schemas do not exist and the import fails. We
define the two schemas before torchvision is first imported, and only when they are missing, so
open_clip's transforms import. ``torchvision.ops`` stays unusable; decap does not need it.
This module is imported first by ``decap_core`` so that fresh Beam worker processes get it too.
"""
import torch


def ensure_torchvision_importable() -> None:
    """Define the torchvision operator schemas the CUDA wheel expects, if they are missing."""
    if hasattr(torch.ops, "torchvision") and _has_op("nms"):
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


ensure_torchvision_importable()
