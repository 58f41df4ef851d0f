"""tools/benchmark.py --quick: every op case runs, its outputs agree with the peer, the table is written.

Times are never asserted (shared CI machines). The output-agreement checks live in the tool
itself (``Bench.compare`` raises before anything is timed), so a clean run is the assertion
that ours and the peers (mmcv, torchvision, mmdet, effdet) agree to the tolerance each row
states. Case 7 (demo trainings as subprocesses) is left out: it takes minutes.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import effdet  # noqa: F401  (installed by tools/setup_env.sh; fail loudly if broken)
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
OP_CASES = [
    "soft_nms",
    "soft_nms_shared",
    "focal_loss",
    "corner_pool",
    "bifpn",
    "efficientdet",
    "cornernet",
]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_tool", REPO / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_tool"] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


def _table_rows(text: str, case: str) -> list[list[str]]:
    body = re.search(rf"<!-- case:{case} -->(.*?)<!-- /case:{case} -->", text, re.S)
    assert body, f"section {case} missing"
    rows = [ln for ln in body.group(1).splitlines() if ln.startswith("| ")]
    assert rows[0].startswith("| config |")
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in rows[1:]]


def test_quick_run_writes_agreeing_rows(bench, tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    torch.set_num_threads(1)  # shared 2-core machine
    args = ["--quick", "--cases", ",".join(OP_CASES + ["efficientdet_gpu"])]
    args += ["--repeats", "1", "--warmup", "0", "--no-memory", "--output", str(out)]
    assert bench.main(args) == 0  # an output disagreement raises AssertionError first
    text = out.read_text()
    assert text.startswith("# Benchmarks")
    assert "python tools/benchmark.py --quick" in text  # the exact command line
    expected_rows = {
        "soft_nms": 4,  # 2 sizes x 2 methods, peer mmcv
        "soft_nms_shared": 2,  # 1 size x 2 methods, mmcv, busy cores
        "focal_loss": 2 + 1,  # torchvision, mmdet (py), mmcv CUDA "not measured"
        "corner_pool": 4,
        "bifpn": 6,
        "efficientdet": 2 + 1,  # + GPU rows "not measured"
        "cornernet": 1,
    }
    for case, count in expected_rows.items():
        rows = _table_rows(text, case)
        assert len(rows) == count, (case, rows)
        for row in rows:
            if row[3] == "not measured":
                assert "tools/benchmark.py --device cuda" in row[-1]
                continue
            ours_ms, peer_ms, ratio = float(row[1]), float(row[3]), float(row[4])
            assert ours_ms >= 0 and peer_ms >= 0 and ratio > 0
            if min(ours_ms, peer_ms) >= 10:  # the table rounds to 0.1 ms and 0.01
                assert ratio == pytest.approx(peer_ms / ours_ms, rel=0.02, abs=0.01)
            assert "tol" in row[7] or "equal" in row[7]  # the agreement and its tolerance
    gpu = text.split("<!-- case:efficientdet_gpu -->")[1]
    if not torch.cuda.is_available():
        assert "not measured" in gpu and "--device cuda --cases efficientdet_gpu" in gpu


def test_rerun_replaces_only_its_section(bench, tmp_path: Path) -> None:
    out = tmp_path / "B.md"
    bench.write_markdown(out, {"a": "<!-- case:a -->\nold a\n<!-- /case:a -->\n"})
    bench.write_markdown(out, {"b": "<!-- case:b -->\nb\n<!-- /case:b -->\n"})
    bench.write_markdown(out, {"a": "<!-- case:a -->\nnew a\n<!-- /case:a -->\n"})
    text = out.read_text()
    assert "new a" in text and "old a" not in text and "\nb\n" in text
    assert text.count("<!-- case:a -->") == 1


def test_peak_memory_counts_an_allocation() -> None:
    """The CPU peak-RSS measure sees a 64 MiB buffer touched inside the call.

    Measured in a fresh interpreter, as the tool does: inside a long-lived process (pytest) pages
    freed by earlier tests stay resident and are reused, so RSS need not grow.
    """
    code = (
        "import importlib.util, sys, torch\n"
        f"spec = importlib.util.spec_from_file_location('bench_tool', {str(REPO / 'tools' / 'benchmark.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['bench_tool'] = m\n"
        "spec.loader.exec_module(m)\n"
        "print(m.peak_rss_of(lambda: torch.ones(16 * 1024 * 1024).sum()))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak = float(res.stdout.strip().splitlines()[-1])
    assert 60.0 < peak < 200.0


def test_memory_child_process(bench) -> None:
    rows = bench.CASES["corner_pool"].rows(True, "cpu")[:1]
    (mib,) = bench.measure_memory("corner_pool", "ours", rows, "cpu")
    # (1, 16, 32, 32) float32 input: the call allocates at least output + grad (128 KiB)
    assert mib is not None and 0.0 <= mib < 200.0


def test_ab_time_alternates(bench) -> None:
    calls: list[str] = []
    impls = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = bench.ab_time(impls, repeats=3, warmup=1, device="cpu")
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
