"""What the inference-time caches (folded conv weights, anchors per grid) key on: the storage and
the version counter of each tensor they were made from.

An in-place change of a tensor (a checkpoint load's `copy_`, an optimizer step, a BN bank entry
or a calibration written into the running statistics) bumps its version; a new tensor (a move to
another device or dtype, a replaced parameter) has another storage. Two changes are not seen:
writes through `tensor.data` (they bypass the version counter; drop the caches after them with
`fold_norms(model)`), and tensors made under `torch.inference_mode()`, which have no version
counter at all: with one of those among the sources nothing is cached.
"""
from typing import Iterable, Optional

import torch


def tensors_key(tensors: Iterable[torch.Tensor]) -> Optional[tuple]:
    """((storage address, version) of each tensor), or None when one of them is an inference
    tensor (no version counter: what is made from it must not be cached)."""
    try:
        return tuple((t.data_ptr(), t._version) for t in tensors)
    except RuntimeError:  # "Inference tensors do not track version counter"
        return None
