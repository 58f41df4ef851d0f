#!/usr/bin/env python
"""One device run that proves the CUDA paths: GPU tests, speed against the peers, a short training.

On a machine with CUDA, within a wall-time budget (``--budget``, default 480 s), it runs these
parts in turn and records what each measured:

``env``
    versions, GPU, driver, where ``plugins`` is imported from;
``pytest_gpu``
    every test marked ``gpu`` (``pytest -m gpu`` over the test files that use the marker:
    soft-NMS under ``torch.cuda.set_sync_debug_mode("error")``, the Triton kernel's tests, ...);
``soft_nms``
    batched soft-NMS, 1k / 5k / 20k candidates x 80 classes, on CUDA vs our CPU path (and
    mmcv when importable), with the host synchronisations of one call counted;
``ops``
    sigmoid focal loss forward + backward vs torchvision; corner pooling forward + backward
    (checked against our CPU path);
``d2_train``
    the EfficientDet demo config trained 300 iterations by Detectron2's trainer with AMP on
    CUDA, then its COCO evaluation (``tools/train_net.py`` in a subprocess);
``effdet_infer`` / ``effdet_compile``
    EfficientDet D0-D3 inference images/s at batch 1 and 64, bf16 and fp32, channels-last,
    eager / ``torch.compile``, vs effdet's ``tf_efficientdet_dN`` with the same weights;
``effdet_train``
    one AMP-bf16 training step at the largest batch that fits (doubling), vs effdet;
``cornernet``
    CornerNet Hourglass-104 forward at 511 px, batch 8, eager and compiled.

Every part gets a share of the time that is left (``Part.share``) and checks it between rows:
rows that do not fit are recorded as skipped with the reason. The parts run in one child
process; when a part overruns its cap or the child dies (a CUDA fault, a crash) the parent
stops that child (its own process group), records the part and starts a new child for the
rest. A failing row or part is recorded and the next one runs. Timing reuses
``tools/benchmark.py`` (A/B alternating medians after an output comparison, ``Bench``).

Results under ``--out`` (default ``$OUT`` when set, else ``output/gpu_check``):
``gpu_check.md`` (markdown tables), ``gpu_check.json``, ``pytest_gpu.xml``, ``d2_train.log``.

Usage::

    python tools/gpu_check.py                                   # on the GPU machine
    python tools/gpu_check.py --parts soft_nms,d2_train --budget 200   # rerun some parts
    python tools/gpu_check.py --device cpu --quick --out /tmp/gc   # CPU dry run (CI), tiny sizes

The device command that installs the carried wheels first is in ``docs/gpu_check.md``
(``tools/device_bundle.sh`` builds the wheels and prints it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _p in (str(REPO), str(REPO / "tools")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

NO_CUDA = "no CUDA device here (CUDA-only)"
_RESPAWN = 3  # child exit status: the CUDA context is broken, start a new child for the rest
_GRACE_S = 20.0  # a part may overrun its cap by this much before the parent stops it


@dataclass(frozen=True)
class Part:
    """One part of the run.

    Attributes:
        name: key in the JSON and ``--parts``.
        title: markdown section title.
        share: weight of the remaining time budget the part may use.
    """

    name: str
    title: str
    share: float


PARTS: tuple[Part, ...] = (
    Part("env", "Environment", 1),
    Part("pytest_gpu", "CUDA tests (`pytest -m gpu`)", 12),
    Part("soft_nms", "Soft-NMS, 80 classes: CUDA vs CPU path (and mmcv)", 7),
    Part("ops", "Focal loss and corner pooling, forward + backward", 4),
    Part("d2_train", "Detectron2 training of the EfficientDet demo (AMP) + evaluation", 22),
    Part("effdet_infer", "EfficientDet D0-D3 inference, eager, channels-last", 11),
    Part("effdet_compile", "EfficientDet D0-D3 inference, torch.compile, channels-last", 16),
    Part("effdet_train", "EfficientDet AMP-bf16 training step, largest batch", 10),
    Part("cornernet", "CornerNet Hourglass-104 forward", 12),
)
PART_NAMES = [p.name for p in PARTS]
# The CPU dry run runs these parts (in this order) beside the others: about half the work each.
_DRY_RUN_SECOND_LANE = ("cornernet", "d2_train")
_SHARE = {p.name: p.share for p in PARTS}


def part_deadline(now: float, end: float, names: list[str]) -> float:
    """Deadline of ``names[0]``: its share of the time left among ``names`` (still to run)."""
    total = sum(_SHARE[n] for n in names)
    return now + max(0.0, end - now) * _SHARE[names[0]] / total


# ------------------------------------------------------------------------------------------
# Recording (child side)
# ------------------------------------------------------------------------------------------


class Recorder:
    """Rows of one part, flushed to a JSON file after every change (a killed child keeps them).

    Row kinds: ``timing`` (ours vs a peer) and ``result`` (an item and its value).
    """

    def __init__(self, path: Path, deadline: float) -> None:
        self.path = path
        self.data = dict(status="running", started=time.time(), deadline=deadline, rows=[])
        self.flush()

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, default=str))
        os.replace(tmp, self.path)

    def add(self, **row) -> None:
        self.data["rows"].append(row)
        self.flush()

    def result(self, item: str, value: object) -> None:
        self.add(kind="result", item=item, value=str(value))

    def skip(self, config: str, reason: str, peer: str | None = None) -> None:
        self.add(kind="timing", config=config, peer=peer, status=f"skipped: {reason}")

    def fail(self, config: str, err: BaseException) -> None:
        text = f"{type(err).__name__}: {err}".strip().replace("\n", " ")
        self.add(kind="timing", config=config, status=f"failed: {text[:400]}")
        print(f"  {config}: FAILED {text[:400]}", flush=True)

    def finish(self, status: str, error: str | None = None) -> None:
        self.data.update(status=status, ended=time.time())
        if error:
            self.data["error"] = error
        self.flush()


@dataclass
class Ctx:
    """What a part runner needs: device, sizes, its deadline, where to write."""

    device: str
    quick: bool
    deadline: float
    out: Path
    work: Path
    repeats: int = 5
    warmup: int = 1
    last_row_s: float = 0.0
    d2_iters: int = 300

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def left(self) -> float:
        return self.deadline - time.time()

    def has_time(self) -> bool:
        """Enough time left for a row as long as the last one (the first row always runs)."""
        return self.left() > max(1.0, 1.1 * self.last_row_s)

    def out_of_time(self) -> str:
        return (
            f"time cap of this part reached ({self.left():.0f} s left, the last row took "
            f"{self.last_row_s:.0f} s); rerun with `--parts` and a larger `--budget`"
        )

    def timing(self, repeats: int, warmup: int) -> None:
        """Timed/untimed rounds for the coming rows (quick: 1 / 0)."""
        self.repeats, self.warmup = (1, 0) if self.quick else (repeats, warmup)


def _bm():
    """tools/benchmark.py, imported once (its measuring code is reused)."""
    import benchmark

    return benchmark


def _free_memory() -> None:
    """Return the last row's CUDA memory (no-op on CPU: a full collection costs ~1 s there)."""
    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def _cuda_healthy() -> bool:
    import torch

    try:
        torch.cuda.synchronize()
        return True
    except Exception:  # noqa: BLE001 - any CUDA error means the context is gone
        return False


class CudaBroken(RuntimeError):
    """The CUDA context of this process is unusable (sticky error): start a new process."""


def measure(ctx: Ctx, rec: Recorder, config: str, build: Callable, images: int | None = None):
    """One row: build, compare outputs, time A/B alternating, peak CUDA memory; all recorded.

    ``build()`` returns a ``benchmark.Bench`` whose ``"ours"`` is ours. Failures (including
    CUDA out of memory) are recorded as the row's status.
    """
    if not ctx.has_time():
        rec.skip(config, ctx.out_of_time())
        return
    bm = _bm()
    t0 = time.time()
    bench = None
    try:
        bench = build()
        outs = {name: bm.snapshot(fn()) for name, fn in bench.impls.items()}  # warm-up/compile
        agreement = bench.compare(outs)
        del outs
        times = bm.ab_time(bench.impls, ctx.repeats, ctx.warmup, ctx.device)
        mems = {n: bm.peak_cuda_of(fn) for n, fn in bench.impls.items()} if ctx.cuda else {}
        ours = times["ours"]
        for peer in [n for n in times if n != "ours"] or [None]:
            rec.add(
                kind="timing",
                config=config,
                ours_ms=ours * 1e3,
                peer=peer,
                peer_ms=times[peer] * 1e3 if peer else None,
                ratio=times[peer] / ours if peer else None,
                images=images,
                ours_mib=mems.get("ours"),
                peer_mib=mems.get(peer) if peer else None,
                agreement=agreement,
                status="measured",
            )
        for peer, why in bench.skipped.items():
            rec.skip(config, why, peer=peer)
        text = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in times.items())
        print(f"  {config}: {text} | {agreement}", flush=True)
    except Exception as err:  # noqa: BLE001 - recorded; the next row runs
        rec.fail(config, err)
        if ctx.cuda and not _cuda_healthy():
            raise CudaBroken(str(err)) from err
    finally:
        del bench
        _free_memory()
        ctx.last_row_s = time.time() - t0


# ------------------------------------------------------------------------------------------
# Parts
# ------------------------------------------------------------------------------------------


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def part_env(ctx: Ctx, rec: Recorder) -> None:
    import torch

    import plugins

    rec.result("python", f"{platform.python_version()} ({sys.executable})")
    rec.result("torch", f"{torch.__version__}, CUDA {torch.version.cuda}")
    if ctx.cuda:
        props = torch.cuda.get_device_properties(0)
        rec.result(
            "GPU",
            f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability "
            f"{props.major}.{props.minor}, cuDNN {torch.backends.cudnn.version()}",
        )
        smi = shutil.which("nvidia-smi")
        if smi:
            q = "--query-gpu=driver_version,clocks.max.sm,power.limit"
            res = subprocess.run([smi, q, "--format=csv,noheader"], capture_output=True, text=True)
            rec.result("driver, max SM clock, power limit", res.stdout.strip() or res.stderr[-200:])
    else:
        rec.result("GPU", NO_CUDA)
    names = (
        "torchvision triton numpy Pillow timm effdet detectron2 pb1-detectron2 fvcore iopath "
        "pycocotools omegaconf hydra-core mmcv mmdet mmengine dense-detection-plugins"
    ).split()
    rec.result("packages", ", ".join(f"{n} {_dist_version(n)}" for n in names))
    rec.result("plugins imported from", Path(plugins.__file__).parent)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    rec.result("CPU", f"{os.cpu_count()} cores visible, load average {load}")


def _gpu_test_files() -> list[str]:
    """Test files that use the ``gpu`` marker (collecting only these keeps tests whose
    frameworks are absent on the device, e.g. mmdet, from failing at import)."""
    found = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        text = path.read_text(encoding="utf-8")
        if "mark.gpu" in text:
            found.append(str(path))
    return found


def part_pytest_gpu(ctx: Ctx, rec: Recorder) -> None:
    import pytest

    files = _gpu_test_files()
    if not files:  # (pytest without files would collect the whole suite)
        raise RuntimeError("no test file under tests/ uses the gpu marker")
    rec.result("test files with the gpu marker", ", ".join(Path(f).name for f in files))
    xml = ctx.out / "pytest_gpu.xml"
    # -v: one line per test in the log, which survives a stop at the cap (the XML does not)
    args = ["-m", "gpu", "-v", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    args += ["--rootdir", str(REPO), *files]
    rec.result("command", "`pytest " + " ".join(shlex.quote(a) for a in args) + "`")
    code = int(pytest.main(args))
    counts: dict[str, int] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "FAILED", "error": "ERROR"}.get(tag, "skipped")
                detail = (node.get("message") or "").replace("\n", " ")[:300]
        counts[outcome] = counts.get(outcome, 0) + 1
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        rec.result(name, f"{outcome} in {float(case.get('time', 0)):.2f} s {detail}".strip())
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no tests"
    rec.result("summary", f"{summary}; pytest exit status {code}")
    if code not in (0, 5):  # 5: nothing selected
        raise RuntimeError(f"pytest -m gpu: {summary} (exit status {code})")


def _count_syncs(fn: Callable[[], object]) -> int:
    """Synchronising CUDA calls made by one call of ``fn`` (torch's sync debug mode, "warn")."""
    import torch

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def _build_soft_nms(ctx: Ctx, p: dict):
    """tools/benchmark.py's soft-NMS bench (ours; mmcv when importable; checked against mmcv,
    or on a device without it against our CPU engine) + on CUDA our CPU path as a timed peer
    and the host syncs of one call."""
    from plugins.core.soft_nms import batched_soft_nms

    bm = _bm()
    bench = bm._build_soft_nms(p, ctx.device)
    if not ctx.cuda:
        bench.skipped["ours on CUDA vs CPU path"] = NO_CUDA
        return bench
    boxes, scores, idxs = bm.detector_like_boxes(p["n"])
    args = (p["method"], 0.5, 0.3, 0.001)
    bench.impls["ours, CPU path"] = lambda: batched_soft_nms(boxes, scores, idxs, *args)
    check = bench.compare

    def compare(outs: dict) -> str:
        return f"{check(outs)}; {_count_syncs(bench.impls['ours'])} host syncs in one call"

    bench.compare = compare
    return bench


def part_soft_nms(ctx: Ctx, rec: Recorder) -> None:
    ctx.timing(repeats=5, warmup=1)
    sizes = (300,) if ctx.quick else (5000, 1000, 20000)
    for n in sizes:
        for method in ("gaussian", "linear"):
            p = dict(n=n, method=method)
            config = f"{n} boxes x 80 classes, {method}"
            measure(ctx, rec, config, lambda p=p: _build_soft_nms(ctx, p))


def part_ops(ctx: Ctx, rec: Recorder) -> None:
    bm = _bm()
    ctx.timing(repeats=15, warmup=2)
    for p in bm._focal_rows(ctx.quick, ctx.device):
        config = f"focal loss, {bm._describe(p)}"
        p = dict(p, mmdet=False)  # peers: torchvision, mmcv's CUDA kernel (when importable)
        measure(ctx, rec, config, lambda p=p: bm._build_focal(p, ctx.device))
    for p in bm._corner_rows(ctx.quick, ctx.device):
        config = f"corner pool {p['direction']}, {tuple(p['shape'])}"
        measure(ctx, rec, config, lambda p=p: bm._build_corner(p, ctx.device))


def _effdet_rows(ctx: Ctx, compiled: bool) -> list[dict]:
    variants = ("d0",) if ctx.quick else ("d0", "d1", "d2", "d3")
    batches = (2, 1) if ctx.quick else (64, 1)
    size = 64 if ctx.quick else None  # None: the variant's own image size
    rows = [
        dict(variant=v, batch=b, dtype=d, compiled=compiled, size=size)
        for v in variants
        for b in batches
        for d in ("bf16", "fp32")
    ]
    if ctx.quick:  # both batch sizes and both dtypes, in two rows
        rows = [rows[0], rows[-1]]
    return rows


def _effdet_config(p: dict) -> str:
    from plugins.core.variants import EFFICIENTDET_VARIANTS

    size = p.get("size") or EFFICIENTDET_VARIANTS[f"efficientdet_{p['variant']}"].image_size
    mode = "compiled" if p["compiled"] else "eager"
    return f"{p['variant'].upper()}, {size} px, batch {p['batch']}, {p['dtype']}, {mode}"


def _effdet_inference(ctx: Ctx, rec: Recorder, compiled: bool) -> None:
    import torch

    bm = _bm()
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its kernels (both nets)
    ctx.timing(repeats=7, warmup=2)
    for p in _effdet_rows(ctx, compiled):
        config = _effdet_config(p)
        measure(ctx, rec, config, lambda p=p: bm._build_effdet_gpu(p, ctx.device), p["batch"])


def part_effdet_infer(ctx: Ctx, rec: Recorder) -> None:
    _effdet_inference(ctx, rec, compiled=False)


def part_effdet_compile(ctx: Ctx, rec: Recorder) -> None:
    if not ctx.cuda:
        # Inductor's CPU code generation compiles EfficientDet for minutes: not a dry-run size.
        for p in _effdet_rows(ctx, compiled=True):
            rec.skip(_effdet_config(p), NO_CUDA)
        return
    _effdet_inference(ctx, rec, compiled=True)


def _fits(ctx: Ctx, p: dict, impl: str, batch: int) -> bool:
    """Whether one training step of ``impl`` at ``batch`` runs without CUDA running out of memory."""
    import torch

    bm = _bm()
    t0 = time.time()
    bench = None
    try:
        bench = bm._build_effdet(dict(p, batch=batch), ctx.device, impl)
        bench.impls[impl]()
        if ctx.cuda:
            torch.cuda.synchronize()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        del bench
        _free_memory()
        ctx.last_row_s = time.time() - t0


def _train_batch(ctx: Ctx, p: dict, candidates: tuple[int, ...]) -> tuple[int, int, str]:
    """(ours' largest of ``candidates`` that fits, the batch both fit, a note)."""
    ours = 0
    for batch in candidates:  # ascending: stop at the first that does not fit (or at the cap)
        if not ctx.has_time() or not _fits(ctx, p, "ours", batch):
            break
        ours = batch
    both = ours
    while both >= candidates[0] and not _fits(ctx, p, "effdet", both):
        both //= 2  # effdet needs more memory: measure both where both fit
    both = both if both >= candidates[0] else 0
    note = f"ours: largest of {candidates} that fits {ours or 'none'}"
    if ours == candidates[-1]:
        note += " (the largest tried)"
    note += f"; effdet fits {both or 'none'}" + (" too" if both == ours else "")
    return ours, both, note


def part_effdet_train(ctx: Ctx, rec: Recorder) -> None:
    import torch

    from plugins.core.variants import EFFICIENTDET_VARIANTS

    torch.backends.cudnn.benchmark = True
    ctx.timing(repeats=5, warmup=1)
    # (train-mode BatchNorm needs 2 values per channel: D0's 1x1 P7 at 64 px needs batch 2)
    candidates = (2,) if ctx.quick else (16, 32, 64, 128, 256, 512)
    for v in ("d0",) if ctx.quick else ("d0", "d1", "d2", "d3"):
        size = 64 if ctx.quick else EFFICIENTDET_VARIANTS[f"efficientdet_{v}"].image_size
        p = dict(mode="train step", variant=v, size=size, amp="bf16", channels_last=True)
        label = f"{v.upper()}, {size} px, AMP bf16, channels-last"
        if not ctx.has_time():
            rec.skip(label, ctx.out_of_time())
            continue
        try:
            _, batch, note = _train_batch(ctx, p, candidates)
        except Exception as err:  # noqa: BLE001 - recorded; the next variant runs
            rec.fail(f"{label}: batch search", err)
            if ctx.cuda and not _cuda_healthy():
                raise CudaBroken(str(err)) from err
            continue
        rec.result(f"{label}: batch", note)
        if batch == 0:
            rec.skip(label, f"no batch fitted in time or memory ({note})")
            continue
        p = dict(p, batch=batch)
        config = f"{label}, batch {batch}"
        measure(ctx, rec, config, lambda p=p: _train_bench(p, ctx.device), batch)


def _train_bench(p: dict, device: str):
    """benchmark.py's training-step bench without its note on the GPU rows (this is them)."""
    bench = _bm()._build_effdet(p, device)
    bench.skipped.clear()
    return bench


def _build_cornernet(ctx: Ctx, p: dict, model, images) -> object:
    """Row ``p`` (dtype, compiled) of ``model``; the peer is the same network eager (and fp32)."""
    import torch

    from plugins.core.cornernet import OUTPUT_KEYS

    bm = _bm()

    def run(net, bf16: bool):
        def call():
            with torch.no_grad(), torch.autocast(ctx.device, torch.bfloat16, enabled=bf16):
                return net(images)

        return call

    bf16 = p["dtype"] == "bf16"
    net = torch.compile(model, dynamic=False) if p["compiled"] else model
    impls = {"ours": run(net, bf16)}
    if p["compiled"]:  # peer: the same dtype, eager
        impls[f"ours eager {p['dtype']}"] = run(model, bf16)
    elif bf16:  # peer: fp32, eager
        impls["ours eager fp32"] = run(model, False)
    tol = 1e-1 if bf16 else 2e-2  # bf16: 8 mantissa bits through 104 layers; fp32: TF32 convs

    def compare(outs: dict) -> str:
        if len(outs) == 1:
            return "reference row (fp32 eager)"
        ref = outs[next(k for k in outs if k != "ours")]
        worst = 0.0
        for key in OUTPUT_KEYS:
            for a, b in zip(outs["ours"][key], ref[key]):
                if a is not None:
                    worst = max(worst, bm.max_rel_diff(a.float(), b.float()))
        assert worst < tol, f"CornerNet outputs differ: max rel diff {worst:.2e}"
        return f"max rel diff {worst:.1e} vs the peer (tol {tol:g})"

    return bm.Bench(impls, compare)


def part_cornernet(ctx: Ctx, rec: Recorder) -> None:
    import torch

    from plugins.core.cornernet import CornerNet
    from plugins.core.hourglass import HOURGLASS_TINY, HourglassNet

    bm = _bm()
    torch.backends.cudnn.benchmark = True
    ctx.timing(repeats=5, warmup=1)
    size, batch = (63, 2) if ctx.quick else (511, 8)
    hg = dict(HOURGLASS_TINY) if ctx.quick else {}
    name = "tiny hourglass" if ctx.quick else "Hourglass-104"
    torch.manual_seed(13)
    with torch.device(ctx.device):  # initialise the weights where they run
        backbone = HourglassNet(**hg, channels_last=True)
        model = CornerNet(80, backbone, channels_last=True).eval()
    bm._randomise_bn_(model, 14)
    g = torch.Generator().manual_seed(15)
    images = torch.randn(batch, 3, size, size, generator=g).to(ctx.device)
    rec.result("network", f"{name}, 80 classes, channels-last, {size} px, batch {batch}")
    rec.result("peer", "mmdet is not on the device image: compiled rows vs eager, bf16 vs fp32")
    for dtype, compiled in (("fp32", False), ("bf16", False), ("bf16", True), ("fp32", True)):
        p = dict(dtype=dtype, compiled=compiled)
        config = f"{name}, batch {batch}, {dtype}, {'compiled' if compiled else 'eager'}"
        if compiled and not ctx.cuda:
            rec.skip(config, "torch.compile rows run on CUDA only (Inductor's CPU build is slow)")
            continue
        measure(ctx, rec, config, lambda p=p: _build_cornernet(ctx, p, model, images), batch)


_AP_RE = re.compile(r"copypaste: ([-0-9.nan]+(?:,[-0-9.nan]+)+)\n")
_SPEED_RE = re.compile(r"Overall training speed: (\d+) iterations in (\S+) \(([0-9.]+) s / it\)")


def d2_train_command(ctx: Ctx, out_dir: Path) -> tuple[list[str], list[str]]:
    """``tools/train_net.py`` command of the demo training and notes on the choices made."""
    notes = []
    cmd = [sys.executable, "tools/train_net.py", "--config-file"]
    cmd += ["configs/demo/efficientdet_shapes.yaml", "MODEL.DEVICE", ctx.device]
    if ctx.cuda:
        shm = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 0
        workers = 4 if shm > 2**30 else 0
        notes.append(f"{workers} data-loader workers (/dev/shm free {shm / 2**30:.1f} GiB)")
        cmd += ["SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", str(ctx.d2_iters)]
        cmd += ["DATALOADER.NUM_WORKERS", str(workers)]
    else:
        notes.append("AMP off: Detectron2's AMPTrainer needs CUDA")
        notes.append("dry run: the tiny efficientdet_test variant at 128 px, 2 iterations")
        cmd += ["SOLVER.AMP.ENABLED", "False", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1"]
        cmd += ["MODEL.EFFICIENTDET.VARIANT", "efficientdet_test", "SOLVER.IMS_PER_BATCH", "2"]
        cmd += ["INPUT.SCALE_JITTER.SIZE", "128", "INPUT.MIN_SIZE_TEST", "128"]
        cmd += ["INPUT.MAX_SIZE_TEST", "128", "MODEL.EFFICIENTDET.TOPK_CANDIDATES_TEST", "50"]
    cmd += ["OUTPUT_DIR", str(out_dir)]
    return cmd, notes


def run_logged(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> int | None:
    """Run ``cmd`` in REPO, output to ``log``; its process group is killed after ``timeout``.

    Returns:
        the exit status, or ``None`` when it was stopped at ``timeout``.
    """
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            return proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group of the process started above
            proc.wait()
            return None


def parse_d2_log(text: str) -> dict:
    """Numbers of a ``train_net.py`` log: AP values, iteration times, overall speed."""
    found: dict = {}
    aps = _AP_RE.findall(text)
    if aps:
        values = [float(v) for v in aps[-1].split(",")]
        found["AP"], found["AP50"], found["AP75"] = values[:3]
    times = [float(t) for t in _bm()._TIME_RE.findall(text)]
    if times:
        used = times[1:] if len(times) > 1 else times  # the first window holds the warm-up
        found["s_per_iter_logged"] = statistics.median(used)
    speed = _SPEED_RE.search(text)
    if speed:
        found["iterations"], found["train_time"] = int(speed.group(1)), speed.group(2)
        found["s_per_iter"] = float(speed.group(3))
    return found


def part_d2_train(ctx: Ctx, rec: Recorder) -> None:
    out_dir = ctx.work / "d2_train"
    cmd, notes = d2_train_command(ctx, out_dir)
    shown = " ".join(shlex.quote(c) for c in ["python"] + cmd[1:-1] + ["<tmp>/d2_train"])
    rec.result("command", f"`{shown}`")
    for note in notes:
        rec.result("note", note)
    log = ctx.out / "d2_train.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not ctx.cuda:
        env["OMP_NUM_THREADS"] = "1"
    t0 = time.time()
    code = run_logged(cmd, log, ctx.left() - 2, env)
    wall = time.time() - t0
    text = log.read_text(errors="replace")
    found = parse_d2_log(text)
    rec.result("exit status", "stopped at the part's time cap" if code is None else code)
    rec.result("wall time (start, training, evaluation)", f"{wall:.1f} s")
    if "s_per_iter" in found:
        ips = 8 if ctx.cuda else 2
        rec.result(
            "training",
            f"{found['iterations']} iterations in {found['train_time']} "
            f"({found['s_per_iter']:.3f} s / it, {ips / found['s_per_iter']:.1f} images/s)",
        )
    if "s_per_iter_logged" in found:
        rec.result(
            "median logged s / iteration (warm-up window dropped)", found["s_per_iter_logged"]
        )
    if "AP" in found:
        rec.result(
            "COCO AP / AP50 / AP75 on shapes_val (%)",
            f"{found['AP']:.1f} / {found['AP50']:.1f} / {found['AP75']:.1f}",
        )
    if code != 0 or "AP" not in found:
        tail = " | ".join(text.strip().splitlines()[-6:])[-600:]
        raise RuntimeError(f"train_net.py exit status {code}, no AP line; log tail: {tail}")


RUNNERS: dict[str, Callable[[Ctx, Recorder], None]] = {
    "env": part_env,
    "pytest_gpu": part_pytest_gpu,
    "soft_nms": part_soft_nms,
    "ops": part_ops,
    "d2_train": part_d2_train,
    "effdet_infer": part_effdet_infer,
    "effdet_compile": part_effdet_compile,
    "effdet_train": part_effdet_train,
    "cornernet": part_cornernet,
}


def child_main(job_file: Path) -> int:
    """Run the job's parts that have no record yet, in order (one process, see the docstring)."""
    job = json.loads(job_file.read_text())
    state = job_file.parent
    todo = [n for n in job["parts"] if not (state / f"{n}.json").exists()]
    if job["device"] == "cpu":
        import torch

        torch.set_num_threads(1)  # the dry run: tiny tensors, shared CI cores
    for i, name in enumerate(todo):
        deadline = part_deadline(time.time(), job["end"], todo[i:])
        rec = Recorder(state / f"{name}.json", deadline)
        ctx = Ctx(job["device"], job["quick"], deadline, Path(job["out"]), state)
        ctx.d2_iters = job["d2_iters"]
        print(f"[{name}] cap {deadline - time.time():.0f} s", flush=True)
        if job["end"] - time.time() < 2:
            rec.finish("skipped", "no time left in the budget")
            continue
        try:
            RUNNERS[name](ctx, rec)
            rec.finish("done")
        except CudaBroken as err:
            rec.finish("failed", f"CUDA context broken: {err}")
            return _RESPAWN
        except Exception as err:  # noqa: BLE001 - recorded; the next part runs
            rec.finish("failed", "".join(traceback.format_exception(err))[-3000:])
            print(f"[{name}] FAILED: {type(err).__name__}: {err}", flush=True)
            if job["device"] == "cuda" and not _cuda_healthy():
                return _RESPAWN
        _free_memory()
    return 0


# ------------------------------------------------------------------------------------------
# Parent: run the children, enforce the caps, write the reports
# ------------------------------------------------------------------------------------------


def _read_parts(state: Path, names: list[str]) -> dict[str, dict]:
    found = {}
    for name in names:
        path = state / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


def _running(records: dict[str, dict]) -> str | None:
    return next((n for n, r in records.items() if r["status"] == "running"), None)


def _mark(state: Path, name: str, status: str, error: str) -> None:
    path = state / f"{name}.json"
    data = json.loads(path.read_text()) if path.exists() else dict(rows=[], started=time.time())
    data.update(status=status, error=error, ended=time.time())
    path.write_text(json.dumps(data, default=str))


def run_children(job_file: Path, report: Callable[[], None]) -> None:
    """Start children until every part of the job has a final record (see the docstring)."""
    job = json.loads(job_file.read_text())
    state, names = job_file.parent, job["parts"]
    while True:
        records = _read_parts(state, names)
        if all(n in records and records[n]["status"] != "running" for n in names):
            return
        if time.time() > job["end"]:
            for n in names:
                if n not in records:
                    _mark(state, n, "skipped", "no time left in the budget")
            return
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--_child", str(job_file)],
            cwd=REPO,
            start_new_session=True,
        )
        recorded_before = len(records)
        done_before = -1
        while proc.poll() is None:
            time.sleep(0.25)
            records = _read_parts(state, names)
            finished = sum(r["status"] != "running" for r in records.values())
            if finished != done_before:
                done_before = finished
                report()
            current = _running(records)
            if current and time.time() > records[current]["deadline"] + _GRACE_S:
                os.killpg(proc.pid, signal.SIGKILL)  # the child's own process group
                proc.wait()
                cap = records[current]["deadline"] - records[current]["started"]
                _mark(
                    state,
                    current,
                    "killed",
                    f"stopped by the parent {_GRACE_S:.0f} s after its time cap ({cap:.0f} s); "
                    "the rows before that are kept",
                )
        records = _read_parts(state, names)
        current = _running(records)
        if current:  # the child died inside a part
            _mark(state, current, "failed", f"child process exited with status {proc.returncode}")
        elif len(records) == recorded_before:  # it died before starting one: do not loop
            for n in names:
                if n not in records:
                    why = f"child process exited with status {proc.returncode} before this part"
                    _mark(state, n, "failed", why)
        report()


def render_markdown(result: dict) -> str:
    """The run as markdown: a header, then one section per part."""
    lines = [
        "# GPU check",
        "",
        f"Run {result['date']} on {result['device']} ({result['machine']}); budget "
        f"{result['budget_s']:.0f} s, took {result['elapsed_s']:.0f} s.  ",
        f"Command: `{result['command']}`",
        "",
    ]
    for name, part in result["parts"].items():
        lines += [f"## {result['titles'][name]} (`{name}`)", ""]
        took = part.get("ended", part.get("started", 0)) - part.get("started", 0)
        cap = max(0.0, part.get("deadline", part.get("started", 0)) - part.get("started", 0))
        status = f"Status: **{part['status']}** after {took:.1f} s (cap {cap:.0f} s)."
        if part.get("error"):
            status += f" {part['error'].strip().splitlines()[-1][:400]}"
        lines += [status, ""]
        results = [r for r in part["rows"] if r["kind"] == "result"]
        timings = [r for r in part["rows"] if r["kind"] == "timing"]
        if results:
            lines += ["| item | value |", "|---|---|"]
            lines += [f"| {r['item']} | {_cell(r['value'])} |" for r in results]
            lines.append("")
        if timings:
            lines += [
                "| config | ours (ms) | ours img/s | peer | peer (ms) | peer img/s | peer / ours "
                "| peak MiB ours / peer | outputs agree | status |",
                "|---|---:|---:|---|---:|---:|---:|---|---|---|",
            ]
            lines += [_timing_line(r) for r in timings]
            lines.append("")
    return "\n".join(lines)


def _cell(value: object) -> str:
    return str(value).replace("|", "/").replace("\n", " ")


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _timing_line(r: dict) -> str:
    per_s = lambda ms: None if ms is None or not r.get("images") else r["images"] / ms * 1e3  # noqa: E731
    mem = "-"
    if r.get("ours_mib") is not None:
        mem = f"{r['ours_mib']:.0f} / {_num(r.get('peer_mib'), 0)}"
    cells = [
        r["config"],
        _num(r.get("ours_ms")),
        _num(per_s(r.get("ours_ms")), 1),
        r.get("peer") or "-",
        _num(r.get("peer_ms")),
        _num(per_s(r.get("peer_ms")), 1),
        _num(r.get("ratio")),
        mem,
        r.get("agreement", "-"),
        r["status"],
    ]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the CPU dry run)")
    parser.add_argument(
        "--out",
        default=os.environ.get("OUT") or str(REPO / "output" / "gpu_check"),
        help="output folder (default $OUT when set, else output/gpu_check)",
    )
    parser.add_argument("--budget", type=float, default=None, help="seconds (480; quick 600)")
    parser.add_argument(
        "--parts", default="all", help=f"comma-separated subset of {','.join(PART_NAMES)}"
    )
    parser.add_argument(
        "--d2-iters", type=int, default=300, help="iterations of the CUDA demo training (300)"
    )
    parser.add_argument("--_child", dest="child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(Path(args.child))
    names = PART_NAMES if args.parts == "all" else [n.strip() for n in args.parts.split(",")]
    unknown = [n for n in names if n not in PART_NAMES]
    if unknown:
        print(f"gpu_check.py: error: --parts: unknown {unknown}; choose from {PART_NAMES}")
        return 2
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check.py: error: --device cuda: no CUDA device (use --device cpu --quick)")
        return 2
    names = [n for n in PART_NAMES if n in names]  # run order
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget or (600.0 if args.quick else 480.0)  # quick: caps must not skip rows
    start = time.time()
    result = dict(
        date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        command=" ".join(
            shlex.quote(a) for a in ["python", "tools/gpu_check.py"] + (argv or sys.argv[1:])
        ),
        device=args.device,  # the GPU's name is in the env part
        machine=f"{platform.node()}, {os.cpu_count()} CPU cores",
        budget_s=budget,
        titles={p.name: p.title for p in PARTS},
        parts={},
    )
    lanes = [names]
    if args.device == "cpu":
        # dry run: two lanes side by side (CI's two cores; no timing of a dry run means
        # anything). On CUDA every part runs alone.
        second = [n for n in _DRY_RUN_SECOND_LANE if n in names]
        lanes = [lane for lane in ([n for n in names if n not in second], second) if lane]
    state = Path(tempfile.mkdtemp(prefix="gpu_check_"))  # ours: removed at the end
    lock = threading.Lock()

    def report() -> None:
        with lock:
            result["parts"] = _read_parts(state, names)
            env = {
                r.get("item"): r.get("value")
                for r in result["parts"].get("env", {}).get("rows", [])
            }
            if args.device == "cuda" and "GPU" in env:
                result["device"] = env["GPU"]
            result["elapsed_s"] = time.time() - start
            (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
            (out / "gpu_check.md").write_text(render_markdown(result))

    try:
        threads = []
        for i, lane in enumerate(lanes):
            job = dict(parts=lane, end=start + budget, device=args.device, quick=args.quick)
            job["d2_iters"] = args.d2_iters
            job_file = state / f"job_{i}.json"
            job_file.write_text(json.dumps(dict(job, out=str(out))))
            threads.append(threading.Thread(target=run_children, args=(job_file, report)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        missing = [n for n in names if not (state / f"{n}.json").exists()]
        for n in missing:  # only when a runner thread itself failed (its traceback is printed)
            _mark(state, n, "failed", "not run: the parent's runner thread failed")
        report()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    print("\n" + (out / "gpu_check.md").read_text(), flush=True)
    bad = [n for n, p in result["parts"].items() if p["status"] not in ("done", "skipped")]
    print(f"gpu_check: {len(names) - len(bad)} of {len(names)} parts done or skipped; "
          f"not: {bad or 'none'}; results in {out}", flush=True)  # fmt: skip
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
