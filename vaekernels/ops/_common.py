"""Small helpers the op files share when they call the kernels."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor


def ptr(t: Optional[Tensor]) -> int:
    """The address a kernel reads or writes; 0 (null) for an absent tensor."""
    return 0 if t is None else t.data_ptr()


def contig(t: Optional[Tensor]) -> Optional[Tensor]:
    """Kernels read row-major arrays: the logical order, whatever t's strides are (None stays None)."""
    return None if t is None else t.contiguous()


_PLAIN = (Tensor, torch.nn.Parameter)


def plain_eager(*inputs) -> bool:
    """Plain eager execution: not under torch.compile / export, no torch_function or
    torch_dispatch mode (FakeTensor, make_fx), no functorch transform, no tensor subclass other
    than nn.Parameter.  Then an op may run its kernels through a lean autograd.Function instead of
    the torch.library custom op, whose Python dispatch costs ~30-50 us a call -- more than the
    kernels at batch 128, latent 32.  Everything else goes through the custom ops.  ``inputs``: the
    op's arguments (those that are not tensors are ignored)."""
    return not (torch.compiler.is_compiling() or torch._C._is_torch_function_mode_enabled()
                or torch._C._len_torch_dispatch_stack() or torch._C._are_functorch_transforms_active()
                or any(isinstance(t, Tensor) and type(t) not in _PLAIN for t in inputs))


def eager_twin(name: str, forward: Callable, setup_context: Callable, backward_with: Callable,
               backward_kernels: Callable) -> type:
    """The autograd.Function twin of a custom op, for plain eager calls: the same forward body
    (``forward(*inputs)``), the same saved tensors (``setup_context``) and the same backward
    kernels (``backward_with(backward_kernels, ctx, *grads)``, where the custom op passes its
    backward custom op instead), so both paths give bitwise-identical results (tested per op)."""

    def fwd(ctx, *inputs):
        # ctx-style forward: a separate setup_context staticmethod makes Function.apply bind the
        # arguments through inspect.signature on every call (~40 us).
        output = forward(*inputs)
        setup_context(ctx, inputs, output)
        return output

    def bwd(ctx, *grads):
        return backward_with(backward_kernels, ctx, *grads)

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(fwd), "backward": staticmethod(bwd)})


def dispatcher(custom_op: Callable, twin: type) -> Callable:
    """run(*inputs): the op through ``custom_op`` -- or, in plain eager execution, through its
    eager ``twin`` (the same kernels without the custom-op dispatch)."""

    def run(*inputs):
        return twin.apply(*inputs) if plain_eager(*inputs) else custom_op(*inputs)

    return run
