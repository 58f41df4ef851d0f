"""The Triton soft-NMS kernel (``plugins.core.soft_nms_triton``) without a GPU.

1. Triton's interpreter (``TRITON_INTERPRET=1``) runs the kernel on CPU tensors; it has to be
   set before triton is imported, so the cases run in a child process
   (``tests/core/_triton_interpret_cases.py``) and are compared there with the CPU engine:
   kept boxes and their order identical, scores within 1e-6 (the interpreter's ``exp`` is
   numpy's, the CPU engine's the C library's).
2. The real compiler: the kernel is compiled ahead of time for an sm_90 GPU (Triton ships
   ``ptxas``), which type-checks the loops, and the PTX is checked for what the exactness
   argument relies on: no fused multiply-add outside libdevice's ``exp``, IEEE division.

On a CUDA machine, tests/core/test_soft_nms.py runs the kernel itself (``gpu`` marker).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("_triton_interpret_cases.py")
CASES = [
    "random-gaussian-block16",
    "tied-linear-block8",
    "tied-gaussian",
    "detector-like-linear",
    "detector-like-gaussian-one-class-block8",
]


@pytest.fixture(scope="module")
def interpreted() -> dict[str, dict]:
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(CHILD)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["case"]: r for r in rows}


@pytest.mark.parametrize("case", CASES)
def test_interpreted_kernel_equals_cpu_engine(interpreted, case):
    row = interpreted[case]
    assert row["kept"] > 0
    assert row["same"], f"kept boxes differ: {row}"
    assert row["kept"] == row["ref_kept"]
    assert row["max_diff"] <= 1e-6, row
    assert row["padding_ok"]


def _ptx(linear: bool) -> str:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from plugins.core.soft_nms_triton import _soft_nms_kernel

    ptrs = ["x1", "y1", "x2", "y2", "area", "sc", "ind", "start", "count", "hole", "out_s"]
    types = ["*fp32"] * 6 + ["*i32", "*i64", "*i64", "*i32", "*fp32"]
    sig = {f"{p}_ptr": t for p, t in zip(ptrs, types)}
    sig.update(out_i_ptr="*i32", param_ptr="*fp32")
    sig.update(LINEAR="constexpr", ACCURATE_EXP="constexpr", BLOCK="constexpr")
    src = ASTSource(
        fn=_soft_nms_kernel,
        signature=sig,
        constexprs={"LINEAR": linear, "ACCURATE_EXP": True, "BLOCK": 256},
    )
    kernel = triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False}
    )
    return kernel.asm["ptx"]


def test_kernel_compiles_for_sm90_without_fused_multiply_add():
    linear = _ptx(linear=True)
    assert "fma." not in linear  # IoU and decay: separately rounded, as mmcv's C++
    assert "div.rn.f32" in linear  # IEEE division, not div.full (approximate)
    gaussian = _ptx(linear=False)
    assert "div.rn.f32" in gaussian
    assert gaussian.count("fma.") <= linear.count("fma.") + 8  # only libdevice's expf
