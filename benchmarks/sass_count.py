"""Static instruction counts of the Triton dropout kernels for an H200 (sm_90), without a GPU.

Compiles the launches that ``triton_cuda.apply`` really makes (recorded on ``meta`` tensors by
``tests/triton_codegen_worker.py``) and counts the SASS instructions of each kernel. The kernels
are straight-line code (no loops), so every thread executes each instruction once: the count
divided by the elements a thread handles is the instruction cost per element, to set against
the GPU's issue rate at the bandwidth the kernel should reach (docs/benchmarks.md). A static
count, not a timing. Run from the repository root, outside Triton's interpreter:

    env -u TRITON_INTERPRET python benchmarks/sass_count.py
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import triton
from triton.compiler import ASTSource, make_backend

import triton_codegen_worker as worker

CASES = {
    "full float32": {"kind": "apply", "shape": (1 << 20,), "dtype": "float32"},
    "full bfloat16": {"kind": "apply", "shape": (1 << 20,), "dtype": "bfloat16"},
    "spatial float32": {"kind": "apply", "shape": (64, 256, 3136), "dtype": "float32",
                        "noise": (64, 256, 1)},
    "spatial bfloat16": {"kind": "apply", "shape": (64, 256, 3136), "dtype": "bfloat16",
                         "noise": (64, 256, 1)},
    "bias_dropout_add bfloat16": {"kind": "bias_dropout_add", "shape": (16384, 8192),
                                  "dtype": "bfloat16", "bias": (8192,)},
    "drop_path_add bfloat16": {"kind": "drop_path_add", "shape": (64, 197, 768),
                               "dtype": "bfloat16"},
}
_OP = re.compile(r"^\S+\t(?:@!?U?P\w+ )?(\S+)", re.M)  # cuobjdump's "ctrl\tOPCODE ..." lines


def count(case: dict) -> list[tuple[str, int, float, Counter]]:
    """``(kernel, instructions, per element, opcode counts)`` of each launch of ``case``."""
    rows = []
    for fn, args, kwargs in worker.record(case):
        bound, options, sig, constexprs, attrs = worker._bind(fn, args, kwargs,
                                                              make_backend(worker.TARGET))
        compiled = triton.compile(ASTSource(fn, sig, constexprs, attrs), target=worker.TARGET,
                                  options=options.__dict__)
        ops = [m.group(1).split(".")[0] for m in _OP.finditer(compiled.asm["sass"])]
        ops = [op for op in ops if op != "NOP"]
        if "BLOCK_R" in bound:
            elements = bound["BLOCK_R"] * bound["BLOCK_C"]
        else:
            elements = 8 * bound["BLOCK_N"] if "BLOCK_N" in bound else bound["BLOCK"]
        per_thread = elements / (options.num_warps * 32)
        rows.append((fn.__name__, len(ops), len(ops) / per_thread, Counter(ops)))
    return rows


if __name__ == "__main__":
    for label, case in CASES.items():
        for kernel, total, per_element, ops in count(case):
            print(f"{label:26s} {kernel:24s} {total:4d} instructions, {per_element:5.1f} per "
                  f"element (IMAD {ops['IMAD']}, LDG {ops['LDG']}, STG {ops['STG']})")
