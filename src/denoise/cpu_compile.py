"""The inductor settings ``torch.compile`` gets for inference on a CPU.

Two settings (``benchmarks/bf16_compile_check.py`` checks the outputs they give):

- ``freezing``: inductor folds the weights into the graph as constants and pre-packs the
  convolution weights for oneDNN once, instead of on every call. Right for inference only: the
  weights must not change after the first call.
- **A GCC miscompilation workaround** (``-fno-tree-slp-vectorize``). Where a kernel reads two
  channels_last bf16 tensors and writes an NCHW one (``a + b + c`` with ``b``, ``c``
  channels_last is enough; NAFNet's residual adds do it), inductor transposes both through
  ATen's 32x32 AVX-512 bf16 transpose. GCC 12.2 at ``-O3`` (inductor's level) miscompiles the
  pair once inlined: every other element is read from the wrong row and the outputs are
  garbage or NaN. ``-O2``, ``-O3 -fno-inline`` and ``-O3 -fno-tree-slp-vectorize`` compile the
  same kernel right; so does inductor with 256-bit vectors, which uses another transpose.
  Inductor has no option for extra compiler flags, so the flag rides on its ``-march`` value.
  Only GCC is given it (the compiler it was found and checked with), only on x86-64, where the
  AVX-512 kernels are.

``torch.compile(options=...)`` does not carry ``freezing`` (inductor reads it outside the
options' scope: the weights stayed live), so :func:`compiled_for_cpu` sets the options with
``torch._inductor.config.patch`` around every call instead; compiling happens inside a call
(the first one for each new input shape).
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

SLP_WORKAROUND_FLAG = "-fno-tree-slp-vectorize"


def _inductor_uses_gcc() -> bool:
    """Whether inductor's C++ compiler on this machine is GCC (its own test of the binary)."""
    try:
        from torch._inductor.cpp_builder import _is_gcc, get_cpp_compiler

        return bool(_is_gcc(get_cpp_compiler()))
    except Exception:  # no compiler found, or inductor's private helpers moved
        return False


def cpu_compile_options() -> dict[str, Any]:
    """Inductor options for compiled CPU inference on this machine (see the module doc)."""
    options: dict[str, Any] = {"freezing": True}
    if platform.machine() in ("x86_64", "AMD64") and _inductor_uses_gcc():
        import torch._inductor.config as inductor_config

        march = inductor_config.cpp.march
        if march != "":  # "" asks inductor for no -march at all: then there is nothing to ride on
            options["cpp.march"] = f"{march or 'native'} {SLP_WORKAROUND_FLAG}"
    return options


def compiled_for_cpu(
    fn: nn.Module | Callable[..., torch.Tensor], options: dict[str, Any]
) -> Callable[..., torch.Tensor]:
    """``torch.compile(fn)``, called with the inductor ``options`` in force (see above)."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(fn)

    def run(*args: torch.Tensor) -> torch.Tensor:
        with inductor_config.patch(options):
            return compiled(*args)

    return run
