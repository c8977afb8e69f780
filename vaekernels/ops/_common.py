"""Small helpers the op files share when they call the kernels."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def ptr(t: Optional[Tensor]) -> int:
    """The address a kernel reads or writes; 0 (null) for an absent tensor."""
    return 0 if t is None else t.data_ptr()


def contig(t: Optional[Tensor]) -> Optional[Tensor]:
    """Kernels read row-major arrays: the logical order, whatever t's strides are (None stays None)."""
    return None if t is None else t.contiguous()


_PLAIN = (Tensor, torch.nn.Parameter)


def plain_eager(*tensors: Optional[Tensor]) -> bool:
    """Plain eager execution: not under torch.compile / export, no torch_function or
    torch_dispatch mode (FakeTensor, make_fx), no functorch transform, no tensor subclass other
    than nn.Parameter.  Then an op may run its kernels through a lean autograd.Function instead of
    the torch.library custom op, whose Python dispatch costs ~30-50 us a call -- more than the
    kernels at batch 128, latent 32.  Everything else goes through the custom ops."""
    return not (torch.compiler.is_compiling() or torch._C._is_torch_function_mode_enabled()
                or torch._C._len_torch_dispatch_stack() or torch._C._are_functorch_transforms_active()
                or any(t is not None and type(t) not in _PLAIN for t in tensors))
