"""GPU code generation of dropkit's Triton kernels for an H200 (sm_90), checked without a GPU.

The other Triton tests run the kernels in Triton's CPU interpreter, which checks bits but not
what the GPU compiler does with them. Here every kernel that ``dropkit.kernels.triton_cuda``,
``triton_drop_block`` and ``triton_fused_add`` launch is compiled offline (``triton.compile``
for ``GPUTarget("cuda", 90, 32)``, the ``ptxas`` bundled with triton) with the argument types,
constexprs and options its Python launcher really passes: ``tests/triton_codegen_worker.py``
calls the launchers on ``meta`` tensors with the launch recorded instead of run, then binds and
compiles each launch as ``JITFunction.run`` would. The worker runs in a subprocess without
``TRITON_INTERPRET`` (the interpreter's ``@triton.jit`` objects cannot be compiled); compiled
kernels are cached in Triton's cache (``~/.triton/cache``), so later runs are quick.

Checks, per launch: it compiles; its PTX has no ``fma.`` instruction (bit-identity with the CPU
references needs separate multiply and add: ``enable_fp_fusion=False``), while the same kernels
compiled with fusion do contain FMAs (the check can fail); no approximate floating-point
instruction; every integer scalar argument is passed at the width its value needs (the 64-bit
seed as ``.u64``) and every float scalar as ``.f32`` except the Gaussian kernel's ``std``
(``.f64``); no register spills or local memory. Register counts are in the worker's JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton", reason="triton is not installed")

WORKER = Path(__file__).with_name("triton_codegen_worker.py")
_BIG = 2**31 + 8  # a length beyond int32: the launchers' 64-bit paths

_KEEP, _BCAST, _FUSED = "_keep_kernel", "_broadcast_kernel", "_fused_kernel"
_SEED, _DILATE, _APPLY = "_seed_kernel", "_dilate_kernel", "_apply_kernel"
_SPATIAL_CF = {"shape": [4, 8, 5, 6], "noise": [4, 8, 1, 1]}  # channels first: LAST_FULL False
_SPATIAL_CL = {"shape": [4, 5, 6, 8], "noise": [4, 1, 1, 8]}  # channels last: LAST_FULL True


def _case(kind: str, kernels: list[str], **params) -> dict:
    return {"kind": kind, "kernels": kernels, **params}


# Case id -> the launcher to call (worker's LAUNCHERS), its parameters and the kernels it must
# launch, in order. Together the cases launch every kernel with every dtype and constexpr flag.
CASES: dict[str, dict] = {
    **{f"apply-full-{dt}-{v}": _case("apply", [_FUSED], shape=[3, 1000], dtype=dt, variant=v)
       for dt in ("float32", "float16", "bfloat16") for v in ("inverted", "alpha")},
    # the seed's type follows its value: k1 != 0 -> i64 (here) or u64 (default key); k1 == 0 -> i32
    "apply-full-seed-i64": _case("apply", [_FUSED], shape=[1000], dtype="float32",
                                 key=[0x12345678, 0x9]),
    "apply-full-seed-i32": _case("apply", [_FUSED], shape=[1000], dtype="float32",
                                 key=[0x12345678, 0]),
    "apply-full-huge": _case("apply", [_FUSED], shape=[_BIG], dtype="float16"),
    "apply-spatial-cf-f32": _case("apply", [_KEEP, _BCAST], dtype="float32", **_SPATIAL_CF),
    "apply-spatial-cf-f16-alpha": _case("apply", [_KEEP, _BCAST], dtype="float16",
                                        variant="alpha", **_SPATIAL_CF),
    "apply-spatial-cf-bf16-alpha": _case("apply", [_KEEP, _BCAST], dtype="bfloat16",
                                         variant="alpha", **_SPATIAL_CF),
    "apply-spatial-cl-f32-alpha": _case("apply", [_KEEP, _BCAST], dtype="float32",
                                        variant="alpha", **_SPATIAL_CL),
    "apply-spatial-cl-f16": _case("apply", [_KEEP, _BCAST], dtype="float16", **_SPATIAL_CL),
    "apply-spatial-cl-bf16": _case("apply", [_KEEP, _BCAST], dtype="bfloat16", **_SPATIAL_CL),
    "apply-droppath-f32": _case("apply", [_KEEP, _BCAST], shape=[4, 3, 700], noise=[4, 1, 1],
                                dtype="float32"),
    "apply-row64-f16-alpha": _case("apply", [_KEEP, _BCAST], shape=[_BIG, 16], noise=[_BIG, 1],
                                   dtype="float16", variant="alpha"),
    "apply-row64-timestep-bf16": _case("apply", [_KEEP, _BCAST], shape=[2**29, 8, 3],
                                       noise=[2**29, 1, 3], dtype="bfloat16"),
    "keep-field": _case("keep_field", [_KEEP], count=5000),
    **{f"gaussian-{dt}": _case("gaussian", ["_gaussian_kernel"], shape=[5, 333], dtype=dt)
       for dt in ("float32", "float16", "bfloat16", "float64")},
    "normal-field": _case("normal_field", ["_normal_kernel"], count=5000),
    "box-muller-words": _case("box_muller_words", ["_box_muller_kernel"], count=5000),
    "dropblock-2d-batch-f32": _case("drop_block", [_SEED, _DILATE, _DILATE, _APPLY],
                                    shape=[2, 3, 12, 12], dtype="float32", block=[3, 3]),
    "dropblock-2d-batch-bf16-cl": _case("drop_block", [_SEED, _DILATE, _DILATE, _APPLY],
                                        shape=[2, 12, 12, 3], dtype="bfloat16", block=[3, 3],
                                        channels_last=True),
    "dropblock-2d-expected-bf16-shared-cl": _case(
        "drop_block", [_SEED, _DILATE, _DILATE, _APPLY], shape=[2, 12, 12, 3], dtype="bfloat16",
        block=[3, 3], channels_last=True, per_channel=False, scale="expected"),
    "dropblock-2d-none-f16-shared": _case("drop_block", [_SEED, _DILATE, _DILATE, _APPLY],
                                          shape=[2, 3, 12, 12], dtype="float16", block=[3, 3],
                                          per_channel=False, scale="none"),
    "dropblock-3d-expected-f16": _case("drop_block", [_SEED, _DILATE, _DILATE, _DILATE, _APPLY],
                                       shape=[2, 3, 6, 7, 8], dtype="float16", block=[2, 3, 3],
                                       scale="expected"),
    "dropblock-1d-long-f32": _case("drop_block", [_SEED, _DILATE, _APPLY], shape=[2, 4, 300],
                                   dtype="float32", block=[5]),
    "dropblock-block1-f32": _case("drop_block", [_SEED, _DILATE, _APPLY], shape=[2, 3, 8, 8],
                                  dtype="float32", block=[1, 1]),
    # realistic sizes: axis tiles of 64 (the final 2-D pass is the largest kernel, ~200 registers)
    "dropblock-2d-resnet-f16": _case("drop_block", [_SEED, _DILATE, _DILATE, _APPLY],
                                     shape=[32, 64, 56, 56], dtype="float16", block=[7, 7]),
    "dropblock-3d-large-bf16-cl": _case("drop_block",
                                        [_SEED, _DILATE, _DILATE, _DILATE, _APPLY],
                                        shape=[8, 16, 32, 32, 32], dtype="bfloat16",
                                        block=[5, 5, 5], channels_last=True),
    # p = 0.9 with one start per map: threshold > 2**31, an i64 argument
    "dropblock-threshold-i64": _case("drop_block", [_SEED, _DILATE, _DILATE, _APPLY],
                                     shape=[2, 3, 7, 7], dtype="float32", block=[7, 7], p=0.9),
    "bias-dropout-add-f32": _case("bias_dropout_add", ["_bias_dropout_add_kernel"],
                                  shape=[4, 64], dtype="float32", bias=[64]),
    "bias-dropout-add-f16-nobias": _case("bias_dropout_add", ["_bias_dropout_add_kernel"],
                                         shape=[4, 64], dtype="float16"),
    "bias-dropout-add-bf16": _case("bias_dropout_add", ["_bias_dropout_add_kernel"],
                                   shape=[4, 64], dtype="bfloat16", bias=[64]),
    "bias-dropout-add-wide-bf16": _case("bias_dropout_add", ["_bias_dropout_add_kernel"],
                                        shape=[2**24, 129], dtype="bfloat16", bias=[129]),
    **{f"bias-grad-{dt}": _case("bias_dropout_add_backward", ["_bias_grad_kernel"],
                                shape=[64, 128], dtype=dt, bias=[128])
       for dt in ("float32", "float16", "bfloat16")},
    **{f"drop-path-add-{dt}": _case("drop_path_add", [_KEEP, "_drop_path_add_kernel"],
                                    shape=[4, 3, 50], dtype=dt)
       for dt in ("float32", "float16", "bfloat16")},
    "drop-path-add-wide-bf16": _case("drop_path_add", [_KEEP, "_drop_path_add_kernel"],
                                     shape=[2**20, 2049], dtype="bfloat16"),
}
# Controls: the same launches compiled with enable_fp_fusion=True must contain FMAs.
CONTROLS: dict[str, dict] = {
    f"control-fusion-{cid}": dict(CASES[cid], fusion=True)
    for cid in ("apply-full-float32-alpha", "gaussian-float64")
}
# (case id, launch index) -> reason, for launches known not to compile (xfail, strict).
KNOWN_FAILURES: dict[tuple[str, int], str] = {}
# Float scalar arguments declared float64 in the kernel signature.
F64_ARGS = {("_gaussian_kernel", "std")}


def _launch_params(cases: dict[str, dict]) -> list:
    params = []
    for cid, case in cases.items():
        for i, kernel in enumerate(case["kernels"]):
            marks = ()
            if (cid, i) in KNOWN_FAILURES:
                marks = pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[(cid, i)])
            params.append(pytest.param(cid, i, id=f"{cid}/{i}-{kernel}", marks=marks))
    return params


def _require_toolchain() -> None:
    """Skip unless triton has its NVIDIA backend with ``ptxas`` and ``cuobjdump``."""
    from triton import knobs
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("triton's NVIDIA backend is not installed")
    for tool in ("ptxas", "cuobjdump"):
        try:
            getattr(knobs.nvidia, tool).path  # noqa: B018 - resolving the path raises if missing
        except RuntimeError as e:
            pytest.skip(f"triton's NVIDIA {tool} is missing: {e}")


@pytest.fixture(scope="module")
def codegen(tmp_path_factory) -> dict:
    """The worker's results: ``{case id: {"error", "launches"}}`` (cases and controls)."""
    _require_toolchain()
    out = tmp_path_factory.mktemp("codegen") / "result.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(WORKER), str(out)],
                          input=json.dumps({**CASES, **CONTROLS}), env=env, text=True,
                          capture_output=True, timeout=600)
    if proc.returncode:
        pytest.fail(f"codegen worker failed ({proc.returncode}):\n{proc.stderr[-5000:]}")
    return json.loads(out.read_text())["cases"]


def _launch(codegen: dict, cid: str, i: int) -> dict:
    case = codegen[cid]
    assert case["error"] is None, f"launcher failed: {case['error']}"
    return case["launches"][i]


def _compiled(codegen: dict, cid: str, i: int) -> dict:
    launch = _launch(codegen, cid, i)
    if launch["error"] is not None:
        pytest.skip(f"did not compile (see test_compiles): {launch['kernel']}")
    return launch


@pytest.mark.parametrize("cid", list(CASES) + list(CONTROLS))
def test_launchers_launch_the_listed_kernels(codegen, cid):
    """The case table matches what the launchers really launch."""
    case = codegen[cid]
    assert case["error"] is None, f"launcher failed: {case['error']}"
    expected = {**CASES, **CONTROLS}[cid]["kernels"]
    assert [launch["kernel"] for launch in case["launches"]] == expected


@pytest.mark.parametrize(("cid", "i"), _launch_params(CASES))
def test_compiles(codegen, cid, i):
    launch = _launch(codegen, cid, i)
    assert launch["error"] is None, (
        f"{launch['kernel']} {launch.get('signature')} {launch.get('constexprs')}:\n"
        f"{launch['error']}")


@pytest.mark.parametrize(("cid", "i"), _launch_params(CASES))
def test_no_fma_and_no_approximations(codegen, cid, i):
    """No FMA contraction and no approximate instruction in the PTX (every kernel's float
    arithmetic must round as the CPU references do)."""
    launch = _compiled(codegen, cid, i)
    # Every launcher says so explicitly: the PTX check covers today's code, the flag the next
    # edit (an add after a multiply), and triton 3.9 warns about launches that leave it unset.
    assert launch["enable_fp_fusion"] is False, f"{launch['kernel']} launched with fusion"
    assert launch["fma"] == 0, (
        f"{launch['fma']} fma in {launch['kernel']} "
        f"(enable_fp_fusion={launch['enable_fp_fusion']})")
    assert launch["approx"] == 0, f"{launch['approx']} approximate instructions"


@pytest.mark.parametrize(("cid", "i"), _launch_params(CASES))
def test_bfloat16_results_use_the_hardware_round_to_nearest_even(codegen, cid, i):
    """Compiled, bfloat16 results are rounded by ``cvt.rn.bf16.f32`` (the integer rounding of
    ``triton_cuda._round`` is for the interpreter only, which truncates casts)."""
    launch = _compiled(codegen, cid, i)
    if launch["constexprs"].get("IS_BF16") is True:
        assert launch["bf16_cvt"] > 0, f"{launch['kernel']}: no cvt.rn.bf16.f32"


def test_bfloat16_launches_are_covered(codegen):
    kernels = {launch["kernel"] for cid in CASES for launch in codegen[cid]["launches"]
               if launch.get("constexprs", {}).get("IS_BF16") is True}
    assert {"_fused_kernel", "_broadcast_kernel", "_gaussian_kernel", "_apply_kernel",
            "_bias_dropout_add_kernel"} <= kernels, kernels


@pytest.mark.parametrize("cid", list(CONTROLS))
def test_fusion_control_has_fma(codegen, cid):
    """The same launches with enable_fp_fusion=True: the FMA check above can fail."""
    launches = codegen[cid]["launches"]
    assert all(launch["enable_fp_fusion"] for launch in launches)
    assert any(launch["fma"] > 0 for launch in launches)


@pytest.mark.parametrize(("cid", "i"), _launch_params(CASES))
def test_scalar_param_types(codegen, cid, i):
    """Integer scalars are passed as wide as their values need; floats as f32 except the
    float64-declared ones."""
    launch = _compiled(codegen, cid, i)
    for name, value in launch["args"].items():
        if name in launch["constexprs"] or isinstance(value, str | bool):
            continue
        ptx = launch["params"][name]
        if isinstance(value, int):
            width = 32 if -(2**31) <= value < 2**31 else 64
            assert ptx in (f"u{width}", f"s{width}", f"b{width}"), (name, value, ptx)
        else:
            want = "f64" if (launch["kernel"], name) in F64_ARGS else "f32"
            assert ptx == want, (name, value, ptx)


def test_64bit_seed_and_std(codegen):
    """The default key's seed (>= 2**63) reaches every Philox kernel as ``.u64``, a seed below
    2**31 as 32 bits (a separate specialization: Philox widens it to uint64), and the Gaussian
    kernel's ``std`` is ``.f64``."""
    seeded = [launch for cid, case in codegen.items() if "key" not in CASES.get(cid, {})
              for launch in case["launches"] if "seed" in launch["args"]]
    assert len(seeded) > 20
    assert all(launch["params"]["seed"] == "u64" for launch in seeded if launch["error"] is None)
    assert _compiled(codegen, "apply-full-seed-i64", 0)["params"]["seed"] == "u64"
    assert _compiled(codegen, "apply-full-seed-i32", 0)["params"]["seed"] == "u32"
    for dtype in ("float32", "float16", "bfloat16", "float64"):
        assert _compiled(codegen, f"gaussian-{dtype}", 0)["params"]["std"] == "f64"


@pytest.mark.parametrize(("cid", "i"), _launch_params(CASES))
def test_no_spills(codegen, cid, i):
    """No stack frame and no local memory (``cuobjdump --dump-resource-usage``)."""
    launch = _compiled(codegen, cid, i)
    res = launch["resources"]
    assert res["STACK"] == 0 and res["LOCAL"] == 0, (launch["kernel"], res)
