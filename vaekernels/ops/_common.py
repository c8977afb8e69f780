"""Small helpers the op files share when they call the kernels."""
from __future__ import annotations

from typing import Optional

from torch import Tensor


def ptr(t: Optional[Tensor]) -> int:
    """The address a kernel reads or writes; 0 (null) for an absent tensor."""
    return 0 if t is None else t.data_ptr()


def contig(t: Optional[Tensor]) -> Optional[Tensor]:
    """Kernels read row-major arrays: the logical order, whatever t's strides are (None stays None)."""
    return None if t is None else t.contiguous()
