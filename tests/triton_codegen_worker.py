"""Compile dropkit's Triton kernels for an H200 (sm_90) without a GPU; report codegen facts.

Run by ``tests/test_triton_codegen.py`` in a subprocess whose environment has no
``TRITON_INTERPRET`` (under the interpreter ``@triton.jit`` makes interpreter objects that
cannot be compiled). Usage::

    python tests/triton_codegen_worker.py RESULT.json [--sass] < CASES.json

``CASES.json`` maps a case id to ``{"kind": ..., **params}`` (see :data:`LAUNCHERS`; optional
``"fusion": true`` recompiles the case's launches with ``enable_fp_fusion=True``). Each case
calls the real Python launcher of :mod:`dropkit.kernels.triton_cuda`, ``triton_drop_block``
or ``triton_fused_add`` on ``meta`` tensors (no memory, so shapes beyond ``2**31`` elements
select the launchers' 64-bit paths) with ``JITFunction.run`` replaced by a recorder. Every
recorded launch is bound and specialized by Triton's own launch-time binder (argument types
from the values passed, constexprs, divisibility attributes, options such as
``enable_fp_fusion`` and ``num_warps``) and compiled with ``triton.compile`` for
``GPUTarget("cuda", 90, 32)`` through the bundled ``ptxas``.

``RESULT.json``: ``{"cases": {id: {"error": str | None, "launches": [launch, ...]}},
"seconds": float}``; a launch is ``{"kernel", "signature", "constexprs", "args",
"enable_fp_fusion", "fp_fusion_requested", "num_warps", "seconds", "error"}`` plus, once
compiled, ``"params"`` (PTX type of each non-constexpr argument, by name), ``"fma"`` (count of
PTX ``fma.`` instructions), ``"approx"`` (count of ``.approx`` and ``div.full`` instructions),
``"bf16_cvt"`` (count of ``cvt.rn.bf16.f32`` round-to-nearest-even conversions),
``"sass_fma"`` (with ``--sass``, ~0.4 s a kernel: SASS ``FFMA``/``DFMA``/``HFMA2`` counts;
``HFMA2.MMA r, -RZ, RZ, 0, 0`` is ptxas's idiom for zeroing a register), ``"resources"``
(``cuobjdump --dump-resource-usage``: ``REG``, ``STACK``, ``SHARED``, ``LOCAL``) and ``"shared"``
(bytes, Triton's metadata).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from contextlib import redirect_stdout
from multiprocessing import get_context

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.cache import triton_key
from triton.runtime.jit import JITFunction, create_function_from_signature

from dropkit import _drop_block_numpy as spec
from dropkit import rng
from dropkit.kernels import triton_cuda, triton_drop_block, triton_fused_add

TARGET = GPUTarget("cuda", 90, 32)
KEY = (0x9E3779B9, 0xBB67AE85)  # seed = k0 | k1 << 32 >= 2**63: a u64 kernel argument
_ERROR_CHARS = 3000
_MAX_WORKERS = 8  # compile processes (at most the CPU count)
_SASS_FMA = ("FFMA", "DFMA", "HFMA2")


# ---------------------------------------------------------------------------------------------
# Launchers, called on meta tensors


def _meta(shape, dtype: str = "float32") -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=getattr(torch, dtype), device="meta")


def _key(case: dict) -> tuple[int, int]:
    return tuple(case.get("key", KEY))


def _apply(case: dict) -> None:
    t, scale, shift, fill = rng.affine_params(case.get("variant", "inverted"), case.get("p", 0.1))
    noise = tuple(case.get("noise", case["shape"]))
    triton_cuda.apply(_meta(case["shape"], case["dtype"]), _key(case), t, noise, scale, shift,
                      fill)


def _keep_field(case: dict) -> None:
    triton_cuda.keep_field(_key(case), rng.threshold(case.get("p", 0.1)), case["count"], "meta")


def _gaussian(case: dict) -> None:
    triton_cuda.gaussian(_meta(case["shape"], case["dtype"]), _key(case), case.get("std", 0.5))


def _normal_field(case: dict) -> None:
    triton_cuda.normal_field(_key(case), case["count"], "meta")


def _box_muller(case: dict) -> None:
    words = _meta((case["count"],), "int64")
    triton_cuda.box_muller_words(words, words)


def _drop_block(case: dict) -> None:
    block, last = tuple(case["block"]), case.get("channels_last", False)
    n, c, spatial = spec.layout(tuple(case["shape"]), len(block), last)
    cal = spec.calibrate(spatial, block, case.get("p", 0.1))
    triton_drop_block.apply(_meta(case["shape"], case["dtype"]), _key(case), cal, n, c, spatial,
                            case.get("per_channel", True), case.get("scale", "batch"), last)


def _dropout_params(case: dict) -> tuple[int, float]:
    t, scale, _, _ = rng.affine_params("inverted", case.get("p", 0.1))
    return t, scale


def _bias_dropout_add(case: dict) -> None:
    x, bias = _meta(case["shape"], case["dtype"]), case.get("bias")
    bias = None if bias is None else _meta(bias, case["dtype"])
    triton_fused_add.bias_dropout_add(x, bias, torch.empty_like(x), _key(case),
                                      *_dropout_params(case))


def _bias_dropout_add_backward(case: dict) -> None:
    triton_fused_add.bias_dropout_add_backward(
        _meta(case["shape"], case["dtype"]), _key(case), *_dropout_params(case),
        tuple(case["bias"]))


def _drop_path_add(case: dict) -> None:
    x = _meta(case["shape"], case["dtype"])
    noise = (case["shape"][0],) + (1,) * (len(case["shape"]) - 1)
    triton_fused_add.drop_path_add(x, torch.empty_like(x), _key(case), *_dropout_params(case),
                                   noise)


LAUNCHERS: dict[str, Callable[[dict], None]] = {
    "apply": _apply,
    "keep_field": _keep_field,
    "gaussian": _gaussian,
    "normal_field": _normal_field,
    "box_muller_words": _box_muller,
    "drop_block": _drop_block,
    "bias_dropout_add": _bias_dropout_add,
    "bias_dropout_add_backward": _bias_dropout_add_backward,
    "drop_path_add": _drop_path_add,
}


# ---------------------------------------------------------------------------------------------
# Recording and compiling


def record(case: dict) -> list[tuple[JITFunction, tuple, dict]]:
    """The kernel launches ``(kernel, args, kwargs)`` the case's launcher makes, in order."""
    launches = []
    original = JITFunction.run

    def _run(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs))

    JITFunction.run = _run
    try:
        LAUNCHERS[case["kind"]](case)
    finally:
        JITFunction.run = original
    return launches


def _describe(value) -> object:
    """A JSON-able description of a launch argument."""
    if isinstance(value, torch.Tensor):
        return f"tensor({value.dtype}, numel={value.numel()})"
    return value if isinstance(value, bool | int | float | str | None) else repr(value)


def _error(e: Exception) -> str:
    """The exception's type and message (its last ``_ERROR_CHARS`` characters)."""
    return "".join(traceback.format_exception_only(e)).strip()[-_ERROR_CHARS:]


def _ptx_params(ptx: str, name: str, arg_names: list[str]) -> dict[str, str]:
    """PTX type (``u64``, ``f64``, ``u64 .ptr``...) of the kernel parameters, by argument name
    (the ``.param`` list holds the non-constexpr arguments in order, then Triton's scratch
    pointers)."""
    params = re.findall(rf"\.param\s+\.(\w+)((?:\s+\.ptr)?)[^\n]*?{re.escape(name)}_param_(\d+)",
                        ptx)
    types = {int(i): kind + (" .ptr" if ptr.strip() else "") for kind, ptr, i in params}
    return {arg: types.get(i, "?") for i, arg in enumerate(arg_names)}


def _resources(cubin: bytes) -> dict[str, int]:
    """``cuobjdump --dump-resource-usage`` of a cubin: REG, STACK, SHARED, LOCAL..."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name],
                             capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in re.findall(r"\b([A-Z]+):(\d+)\b", out)}


def _bind(fn: JITFunction, args: tuple, kwargs: dict, backend) -> tuple:
    """``JITFunction.run``'s binding: ``(bound args, options, signature, constexprs, attrs)``."""
    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, _ = binder(*args, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # triton 3.9's warning when enable_fp_fusion is unset
        return bound, *fn._pack_args(backend, kwargs, bound, specialization, None)


def compile_launch(fn: JITFunction, args: tuple, kwargs: dict, fusion: bool,
                   sass: bool = False) -> dict:
    """Bind, specialize and compile one recorded launch as ``JITFunction.run`` would
    (``fusion``: with ``enable_fp_fusion=True``; ``sass``: also count SASS FMAs)."""
    result = {"kernel": fn.__name__, "error": None,
              "fp_fusion_requested": kwargs.get("enable_fp_fusion")}  # None: Triton's default
    start = time.perf_counter()
    try:
        bound, options, signature, constexprs, attrs = _bind(
            fn, args, dict(kwargs, enable_fp_fusion=True) if fusion else kwargs,
            make_backend(TARGET))
        names = list(bound)
        result.update(
            signature=signature,
            constexprs={names[path[0]]: _describe(v) for path, v in constexprs.items()},
            args={k: _describe(v) for k, v in bound.items()},
            enable_fp_fusion=options.enable_fp_fusion,
            num_warps=options.num_warps,
        )
        with redirect_stdout(sys.stderr):  # ptxas failures are printed: keep them with stderr
            compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=TARGET,
                                      options=options.__dict__)
        ptx = compiled.asm["ptx"]
        runtime_args = [k for k, v in signature.items() if v != "constexpr"]
        result.update(
            params=_ptx_params(ptx, compiled.name, runtime_args),
            fma=len(re.findall(r"^\s*(?:@!?%p\d+\s+)?fma\.", ptx, re.M)),
            approx=len(re.findall(r"\.approx\b|\bdiv\.full\b", ptx)),
            bf16_cvt=len(re.findall(r"\bcvt\.rn\.bf16(?:x2)?\.f32\b", ptx)),
            resources=_resources(compiled.asm["cubin"]),
            shared=compiled.metadata.shared,
        )
        if sass:
            text = compiled.asm["sass"]  # cuobjdump -sass
            result["sass_fma"] = {op: len(re.findall(rf"\b{op}\b", text)) for op in _SASS_FMA}
    except Exception as e:  # reported to the test
        result["error"] = _error(e)
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


_JOBS: list[tuple[JITFunction, tuple, dict, bool, bool]] = []  # shared with forked pool workers


def _compile_job(i: int) -> dict:
    return compile_launch(*_JOBS[i])


def main() -> None:
    """Read cases from stdin, write the results to ``sys.argv[1]`` (``--sass``: SASS counts)."""
    if os.environ.get("TRITON_INTERPRET"):
        raise SystemExit("unset TRITON_INTERPRET: the interpreter cannot compile kernels")
    start = time.perf_counter()
    cases = json.load(sys.stdin)
    results: dict[str, dict] = {}
    slots: list[tuple[str, int]] = []
    for cid, case in cases.items():
        try:
            launches = record(case)
        except Exception as e:  # reported to the test
            results[cid] = {"error": _error(e), "launches": []}
            continue
        results[cid] = {"error": None, "launches": [None] * len(launches)}
        for j, (fn, args, kwargs) in enumerate(launches):
            slots.append((cid, j))
            _JOBS.append((fn, args, kwargs, bool(case.get("fusion")), "--sass" in sys.argv))
    triton_key()  # hashes libtriton (~0.3 s): once, before the pool forks
    workers = max(1, min(len(_JOBS), os.cpu_count() or 1, _MAX_WORKERS))
    with get_context("fork").Pool(workers) as pool:
        for (cid, j), res in zip(slots, pool.map(_compile_job, range(len(_JOBS)), chunksize=1),
                                 strict=True):
            results[cid]["launches"][j] = res
    out = {"cases": results, "seconds": round(time.perf_counter() - start, 3),
           "triton": triton.__version__, "workers": workers}
    with open(sys.argv[1], "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
