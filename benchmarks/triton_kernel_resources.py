"""What the fused NAFNet's Triton kernels compile to for an H100, on a machine without one.

    python benchmarks/triton_kernel_resources.py [--json OUT]

Triton compiles a kernel for a GPU it is not running on (``triton.compile`` with a target),
and its wheel brings NVIDIA's ``ptxas`` and ``cuobjdump``. For both forms of the kernel in
:mod:`denoise.fused.dwconv_gate_triton`, at each block sizes ``dwconv_gate_speed.py`` times,
compiled for sm_90 as the launcher would (16-byte aligned pointers, sizes that are multiples
of 16, as at every NAFNet-w32 level), this records:

- registers per thread, spill (stack) bytes and shared memory;
- the loop that handles one input row per iteration (the whole kernel where a program has
  one row): its SASS instructions per warp and its memory instructions by kind and width;
- instructions per output: the loop's instructions times its iterations (the rolling form
  reads two rows more than it writes), over the outputs of a warp.

For both per-pixel kernels (:mod:`denoise.fused.pixelwise_triton`), at each width of
NAFNet-w32 and each candidate the autotuner would time there (and the default blocks at the
two widths the network leaves to cuBLAS): registers, spills, shared memory, and their
tensor-core instructions (``HGMMA``: Hopper's warp-group products; ``HMMA``: the older
per-warp ones, which Triton falls back to for tiles of fewer than 64 pixels).

A configuration that spills, or needs more instructions per output, is unlikely to be the
faster; how fast any of them is only a GPU can say (``dwconv_gate_speed.py``).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dwconv_gate_speed import ROLLING_VARIANTS, VARIANTS

from denoise.fileio import write_json
from denoise.fused.dwconv_gate_triton import Blocks, _dwconv_gate_kernel, block_sizes
from denoise.fused.pixelwise import KERNEL_WIDTHS
from denoise.fused.pixelwise_triton import (
    _KERNELS,
    TUNING_CANDIDATES,
    PixelBlocks,
    default_blocks,
    tuning_candidates,
)

H100 = GPUTarget("cuda", 90, 32)
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
SIGNATURE = {
    "x_ptr": "*bf16",
    "w_ptr": "*bf16",
    "b_ptr": "*bf16",
    "out_ptr": "*bf16",
    "sum_ptr": "*fp32",
    "H": "i32",
    "W": "i32",
    "C": "i32",
}
PIXELWISE_TENSORS = {
    "head": ["inp", "out", "w1", "b1"],
    "tail": ["x", "att", "inp", "out", "w3", "b3", "w4", "b4", "w5", "b5"],
}
PIXELWISE_SCALARS = {"head": {"P": "i32", "eps": "fp32"}}
PIXELWISE_SCALARS["tail"] = {"P": "i32", "HW": "i32", "eps": "fp32"}
# Global, local (spill) and shared memory; LDGSTS copies global to shared, LDSM loads matrices.
MEMORY_OPS = {"LDG", "STG", "LDL", "STL", "LDS", "STS", "LDGSTS", "LDSM"}


def compile_for_h100(
    kernel: object, signature: dict[str, str], constexprs: dict[str, object], warps: int
) -> tuple[bytes, int]:
    """The cubin of ``kernel`` at ``constexprs``, as Triton would launch it on an H100 (every
    pointer and integer a multiple of 16, as at every NAFNet-w32 level), and the shared
    memory it asks for at launch."""
    full = signature | dict.fromkeys(constexprs, "constexpr")
    kinds = enumerate(signature.values())
    aligned = {(i,): [["tt.divisibility", 16]] for i, kind in kinds if kind != "fp32"}
    source = ASTSource(fn=kernel, signature=full, constexprs=constexprs, attrs=aligned)
    compiled = triton.compile(source, target=H100, options={"num_warps": warps})
    return compiled.asm["cubin"], compiled.metadata.shared


def registers_and_spills(cubin: bytes) -> tuple[int, int]:
    """Registers per thread and stack (spill) bytes, as ``cuobjdump -res-usage`` reports."""
    usage = re.search(r"REG:(\d+) STACK:(\d+)", cuobjdump(cubin, "-res-usage"))
    registers, stack = map(int, usage.groups())
    return registers, stack


def cuobjdump(cubin: bytes, flag: str) -> str:
    """What ``cuobjdump FLAG`` prints about ``cubin``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        run = subprocess.run([str(TOOLS / "cuobjdump"), flag, f.name], capture_output=True)
    run.check_returncode()
    return run.stdout.decode()


def row_code(sass: str) -> list[str]:
    """The opcodes (predicates dropped) of the largest loop, a backward branch's span: one
    input row per iteration. A kernel without a loop (one row per program) is counted whole."""
    code = re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]+);", sass)
    ops = [(int(addr, 16), text.split()) for addr, text in code]
    opcodes = [(addr, w[1] if w[0].startswith("@") else w[0]) for addr, w in ops]
    loops = []
    for addr, words in ops:
        target = re.fullmatch(r"0x([0-9a-f]+)", words[-1])
        branch = any(w.startswith("BRA") for w in words[:2])  # after a predicate, if any
        if branch and target and int(target.group(1), 16) < addr:
            start = int(target.group(1), 16)
            loops.append([op for a, op in opcodes if start <= a <= addr])
    return max(loops, key=len) if loops else [op for _, op in opcodes]


def resources(blocks: Blocks) -> dict[str, object]:
    """Registers, spills, shared memory and the row's instructions of one configuration."""
    cubin, shared = compile_for_h100(
        _dwconv_gate_kernel, SIGNATURE, blocks.constexprs(), blocks.warps
    )
    registers, stack = registers_and_spills(cubin)
    row = row_code(cuobjdump(cubin, "-sass"))
    # A program's loop runs once per row it outputs, and the rolling form twice more (the rows
    # above and below its own, which feed its first and last rows).
    iterations = blocks.rows + 2 if blocks.rolling else blocks.rows
    outputs_per_warp = blocks.rows * blocks.pixels * blocks.channels // blocks.warps
    memory_ops = Counter(op for op in row if op.split(".")[0] in MEMORY_OPS)
    return {
        "kernel": "rolling" if blocks.rolling else "rows",
        "blocks": str(blocks),
        "registers": registers,
        "spill_bytes": stack,
        "shared_bytes": shared,
        "row_instructions": len(row),
        "row_memory_ops": dict(sorted(memory_ops.items())),
        "instructions_per_output": round(len(row) * iterations / outputs_per_warp, 2),
    }


def pixelwise_resources(which: str, channels: int, blocks: PixelBlocks) -> dict[str, object]:
    """Registers, spills, shared memory and tensor-core instructions of per-pixel kernel
    ``which`` (``"head"`` or ``"tail"``) at one width and blocks, in bf16."""
    pointers = {f"{t}_ptr": "*bf16" for t in PIXELWISE_TENSORS[which]}
    signature = pointers | PIXELWISE_SCALARS[which]
    constexprs = {"C": channels, **blocks.constexprs(), "PRECISION": "tf32"}
    cubin, shared = compile_for_h100(_KERNELS[which], signature, constexprs, blocks.warps)
    registers, stack = registers_and_spills(cubin)
    sass = cuobjdump(cubin, "-sass")
    opcodes = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", sass)
    counts = Counter(opcodes)
    return {
        "kernel": which,
        "channels": channels,
        "blocks": str(blocks),
        "fits": blocks.fits(channels),
        "registers": registers,
        "spill_bytes": stack,
        "shared_bytes": shared,
        "hgmma": counts["HGMMA"],
        "hmma": counts["HMMA"],
        "instructions": len(opcodes),
    }


def pixelwise_configs() -> list[tuple[int, PixelBlocks]]:
    """Every candidate at the network's widths of NAFNet-w32; the listed blocks that do not
    fit those widths (``fits`` false: what the bound keeps out); the defaults beyond."""
    widths = [32 << k for k in range(5)]
    network = [c for c in widths if c in KERNEL_WIDTHS]
    configs = [(c, b) for c in network for b in tuning_candidates(c)]
    unfit = [(c, b) for c in network for b in TUNING_CANDIDATES if not b.fits(c)]
    configs += [(c, b) for c, b in unfit if b.step <= c]
    return configs + [(c, default_blocks(c)) for c in widths if c not in KERNEL_WIDTHS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="benchmarks/results/triton_kernel_resources.json")
    args = ap.parse_args()
    levels = [(512 >> k, 32 << k) for k in range(5)]  # (pixels, channels) of NAFNet-w32
    rows = []
    for rolling, variants in ((False, VARIANTS), (True, ROLLING_VARIANTS)):
        defaults = [block_sizes(size, size, c, rolling) for size, c in levels]
        for blocks in dict.fromkeys([*defaults, *variants]):
            rows.append(resources(blocks))
            print(rows[-1], flush=True)
    pixelwise = []
    for which in ("head", "tail"):
        for channels, blocks in pixelwise_configs():
            pixelwise.append(pixelwise_resources(which, channels, blocks))
            print(pixelwise[-1], flush=True)
    write_json(
        args.json,
        {
            "target": "sm_90 (H100)",
            "triton": triton.__version__,
            "configs": rows,
            "pixelwise_configs": pixelwise,
        },
    )


if __name__ == "__main__":
    main()
