"""The inductor settings ``torch.compile`` gets for inference on a CPU.

Two settings (``benchmarks/bf16_compile_check.py`` checks the outputs they give):

- ``freezing``: inductor folds the weights into the graph as constants and pre-packs the
  convolution weights for oneDNN once, instead of on every call. Right for inference only: the
  weights must not change after the first call.
- **A GCC miscompilation workaround** (``-fno-tree-slp-vectorize``). Where a kernel reads two
  channels_last bf16 tensors and writes an NCHW one (:func:`mixed_layout_case`; NAFNet's
  residual adds do it), inductor transposes both through ATen's 32x32 AVX-512 bf16 transpose.
  GCC 12.2 at ``-O3`` (inductor's level) miscompiles the pair once inlined: every other element
  is read from the wrong row and the outputs are garbage or NaN. ``-O2``, ``-O3 -fno-inline``
  and ``-O3 -fno-tree-slp-vectorize`` compile the same kernel right; so does inductor with
  256-bit vectors, which uses another transpose. Inductor has no option for extra compiler
  flags, so the flag rides on its ``-march`` value. Only GCC is given it (the compiler it was
  found and checked with), only on x86-64, where the AVX-512 kernels are.

``torch.compile(options=...)`` does not carry ``freezing`` (inductor reads it outside the
options' scope: the weights stayed live), so :func:`compiled_for_cpu` sets the options with
``torch._inductor.config.patch`` around every call instead; compiling happens inside a call
(the first one for each new input shape).
"""

from __future__ import annotations

import platform
import shutil
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from denoise.errors import DenoiseError

SLP_WORKAROUND_FLAG = "-fno-tree-slp-vectorize"
X86_64 = platform.machine() in ("x86_64", "AMD64")


def _inductor_compiler() -> str | None:
    """The C++ compiler inductor would run here, or None when it finds none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # inductor raises its own error types when no compiler is found
        return None


def _inductor_uses_gcc() -> bool:
    """Whether inductor's C++ compiler on this machine is GCC (its own test of the binary)."""
    compiler = _inductor_compiler()
    if compiler is None:
        return False
    try:
        from torch._inductor.cpp_builder import _is_gcc
    except ImportError:  # a private helper moved: say so rather than drop the fix silently
        warnings.warn(
            "torch._inductor.cpp_builder._is_gcc is gone: compiled bf16 on AVX-512 CPUs may "
            f"be miscompiled by GCC (denoise could not add {SLP_WORKAROUND_FLAG})",
            stacklevel=2,
        )
        return False
    return bool(_is_gcc(compiler))


def cpu_compile_options(user: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Inductor options for compiled CPU inference here: ``user``'s over the defaults (see the
    module doc), the GCC flag added to any ``-march`` value, a user's too.

    Unknown option names are a :class:`DenoiseError` now, not an error at the first tile.
    """
    import torch._inductor.config as inductor_config

    user = dict(user or {})
    known = inductor_config.get_config_copy()
    unknown = sorted(set(user) - set(known))
    if unknown:
        raise DenoiseError(f"unknown torch.compile (inductor) options: {', '.join(unknown)}")
    options: dict[str, Any] = {"freezing": True, **user}
    march = options.get("cpp.march", inductor_config.cpp.march)
    # "" asks inductor for no -march at all: then there is nothing for the flag to ride on.
    if X86_64 and march != "" and _inductor_uses_gcc():
        options["cpp.march"] = f"{march or 'native'} {SLP_WORKAROUND_FLAG}"
    return options


def compiled_for_cpu(
    fn: nn.Module | Callable[..., torch.Tensor],
    options: Mapping[str, Any],
    mode: str | None = None,
) -> Callable[..., torch.Tensor]:
    """``torch.compile(fn, mode=mode)``, called with the inductor ``options`` in force (see
    above). Without a C++ compiler this is a :class:`DenoiseError` now, not at the first call."""
    import torch._inductor.config as inductor_config

    compiler = _inductor_compiler()
    if compiler is None or shutil.which(compiler) is None:
        raise DenoiseError(
            "torch.compile on a CPU needs a C++ compiler (g++ or clang++) on PATH; none found"
        )
    options = dict(options)
    compiled = torch.compile(fn, mode=mode)

    def run(*args: torch.Tensor) -> torch.Tensor:
        with inductor_config.patch(options):
            return compiled(*args)

    return run


def mixed_layout_case() -> tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]:
    """The smallest case GCC miscompiled: ``a + b + c`` in bf16, 1x64x32x32, with ``b`` and
    ``c`` channels_last (the function and its inputs)."""
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(1, 64, 32, 32, generator=g).bfloat16() for _ in range(3))
    cl = torch.channels_last
    return _add3, (a, b.contiguous(memory_format=cl), c.contiguous(memory_format=cl))


def _add3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return a + b + c
