"""tools/gpu_check.py's CPU dry run (``--device cpu --quick``): every part's code runs at tiny
sizes, the CUDA-only rows are reported as skipped with the reason, the reports are written.

Times are never asserted. The outputs of ours and the peers are compared inside the tool
(``Bench.compare`` raises before timing, which the tool records as a failed row), so a row
"measured" means the outputs agreed.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(), reason="the CPU dry run; on a GPU run tools/gpu_check.py itself"
)


@pytest.fixture(scope="module")
def tool():
    if str(REPO / "tools") not in sys.path:
        sys.path.insert(0, str(REPO / "tools"))  # (gpu_check puts it there too: benchmark.py)
    return importlib.import_module("gpu_check")


@pytest.fixture(scope="module")
def dry_run(tool, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    code = tool.main(["--device", "cpu", "--quick", "--out", str(out)])
    result = json.loads((out / "gpu_check.json").read_text())
    return code, out, result


def _timings(part: dict) -> list[dict]:
    return [r for r in part["rows"] if r["kind"] == "timing"]


def _results(part: dict) -> dict[str, str]:
    return {r["item"]: r["value"] for r in part["rows"] if r["kind"] == "result"}


def test_every_part_runs_and_reports(tool, dry_run):
    code, out, result = dry_run
    parts = result["parts"]
    assert list(parts) == tool.PART_NAMES
    failed = {n: p.get("error", "")[-500:] for n, p in parts.items() if p["status"] != "done"}
    assert not failed
    assert code == 0
    for name, part in parts.items():
        rows = [r for r in _timings(part) if r["status"].startswith("failed")]
        assert not rows, (name, rows)
    text = (out / "gpu_check.md").read_text()
    assert text.startswith("# GPU check") and "--device cpu --quick" in text
    for name in tool.PART_NAMES:
        assert f"(`{name}`)" in text


def test_cuda_only_rows_are_skipped_with_the_reason(tool, dry_run):
    parts = dry_run[2]["parts"]
    compiled = _timings(parts["effdet_compile"])
    assert compiled and all(r["status"] == f"skipped: {tool.NO_CUDA}" for r in compiled)
    cuda_peer = [r for r in _timings(parts["soft_nms"]) if r["peer"] == "ours on CUDA vs CPU path"]
    assert len(cuda_peer) == 2 and all(tool.NO_CUDA in r["status"] for r in cuda_peer)
    corner = [r for r in _timings(parts["cornernet"]) if "compiled" in r["config"]]
    assert len(corner) == 2 and all(r["status"].startswith("skipped: ") for r in corner)
    assert _results(parts["env"])["GPU"] == tool.NO_CUDA


def test_measured_rows_are_consistent(dry_run):
    parts = dry_run[2]["parts"]
    measured = {
        name: [r for r in _timings(part) if r["status"] == "measured"]
        for name, part in parts.items()
    }
    # soft-NMS vs mmcv, focal vs torchvision (+ mmdet), corner pooling x 4, EfficientDet
    # inference (2 rows, peer effdet), the AMP training step (peer effdet), CornerNet eager
    assert {r["peer"] for r in measured["soft_nms"]} == {"mmcv"}
    assert "torchvision" in {r["peer"] for r in measured["ops"]}
    assert sum(r["config"].startswith("corner pool") for r in measured["ops"]) == 4
    assert [r["peer"] for r in measured["effdet_infer"]] == ["effdet", "effdet"]
    assert [r["peer"] for r in measured["effdet_train"]] == ["effdet"]
    assert len(measured["cornernet"]) == 2
    for row in sum(measured.values(), []):
        assert row["ours_ms"] > 0 and row["agreement"]
        if row["peer"]:
            assert row["ratio"] == pytest.approx(row["peer_ms"] / row["ours_ms"])


def test_gpu_tests_selected_and_skipped_without_cuda(dry_run):
    code, out, result = dry_run
    rows = _results(result["parts"]["pytest_gpu"])
    assert "test_soft_nms.py" in rows["test files with the gpu marker"]
    cases = {k: v for k, v in rows.items() if "::" in k}
    assert cases and all(v.startswith("skipped") for v in cases.values())
    assert "failed" not in rows["summary"].lower() and "exit status 0" in rows["summary"]
    assert (out / "pytest_gpu.xml").is_file()


def test_detectron2_training_ran_and_evaluated(dry_run):
    code, out, result = dry_run
    rows = _results(result["parts"]["d2_train"])
    assert rows["exit status"] == "0"
    assert "train_net.py --config-file configs/demo/efficientdet_shapes.yaml" in rows["command"]
    assert "COCO AP / AP50 / AP75 on shapes_val (%)" in rows  # the evaluation's AP line
    assert "Evaluation results for shapes_val" in (out / "d2_train.log").read_text()


def test_time_shares(tool):
    names = ["soft_nms", "d2_train"]
    share = tool._SHARE["soft_nms"] / (tool._SHARE["soft_nms"] + tool._SHARE["d2_train"])
    assert tool.part_deadline(100.0, 200.0, names) == pytest.approx(100.0 + 100.0 * share)
    assert tool.part_deadline(300.0, 200.0, names) == 300.0  # out of time: no time left


def test_run_logged_stops_the_process_group_at_its_timeout(tool, tmp_path):
    log = tmp_path / "sleep.log"
    child = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    t0 = time.monotonic()
    code = tool.run_logged([sys.executable, "-c", child], log, timeout=2.0)
    assert code is None and time.monotonic() - t0 < 30
    grandchild = Path(f"/proc/{int(log.read_text().split()[0])}/status")
    for _ in range(50):  # killed with its parent's group (a zombie until init reaps it)
        if not grandchild.exists() or "State:\tZ" in grandchild.read_text():
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the grandchild process is still running")


def test_bad_arguments_fail_clearly(tool, tmp_path, capsys):
    out = tmp_path / "out"
    assert tool.main(["--device", "cpu", "--parts", "nope", "--out", str(out)]) == 2
    assert "--parts: unknown ['nope']" in capsys.readouterr().out
    assert tool.main(["--device", "cuda", "--out", str(out)]) == 2  # this machine has no GPU
    assert "--device cuda: no CUDA device" in capsys.readouterr().out
    assert not out.exists()  # nothing written
