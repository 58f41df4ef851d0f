"""Benchmark the plugins' ops and networks against their peers (mmcv, mmdet, torchvision, effdet).

Every case runs our implementation and the peer's *alternately* in one process (A/B/A/B...,
rotating which goes first each round) on identical inputs (networks: identical weights, through
our converters), after a warm-up. Before anything is timed the outputs are compared and the run
stops with an ``AssertionError`` if they disagree beyond the stated tolerance. Peak memory is
measured separately: on CPU in one child process per (case, implementation) (peak resident set
size over the op minus the resident size before it, see :func:`peak_rss_of`), on CUDA with
``torch.cuda.max_memory_allocated``.

Usage::

    python tools/benchmark.py                      # every case, full size -> BENCHMARKS.md
    python tools/benchmark.py --quick --output /tmp/b.md
    python tools/benchmark.py --cases soft_nms,focal_loss --repeats 7
    python tools/benchmark.py --device cuda --cases efficientdet

``BENCHMARKS.md`` holds one section per case between ``<!-- case:NAME -->`` markers; a run
replaces the sections of the cases it ran and keeps the others.
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
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MiB = 1024.0 * 1024.0


# ------------------------------------------------------------------------------------------
# Timing and memory
# ------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def ab_time(
    impls: dict[str, Callable[[], object]], repeats: int, warmup: int, device: str
) -> dict[str, float]:
    """Median seconds per call of each implementation, run in rotating alternation.

    Args:
        impls: ``{name: zero-argument callable}``; each call is one complete op.
        repeats: timed rounds; in round ``r`` the order is rotated by ``r``.
        warmup: untimed rounds first.
        device: ``"cpu"`` or ``"cuda"`` (synchronised around each call).

    Returns:
        ``{name: median seconds}``.
    """
    names = list(impls)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            _sync(device)
            t0 = time.perf_counter()
            impls[name]()
            _sync(device)
            if r >= warmup:
                samples[name].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in samples.items()}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes(reset_worked: bool) -> int:
    if reset_worked:
        with open("/proc/self/status") as f:
            m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
        if m:
            return int(m.group(1)) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_of(fn: Callable[[], object]) -> float:
    """Peak resident memory (MiB) one call of ``fn`` adds to this process.

    ``peak RSS during the call - RSS before it``. The peak is ``ru_maxrss``; where the
    kernel lets the process reset its peak mark (``/proc/self/clear_refs``), the mark is reset
    first and read from ``VmHWM`` so one child process can measure several rows in turn.
    """
    gc.collect()
    reset = _reset_peak_rss()
    base = _rss_bytes()
    out = fn()
    peak = _peak_rss_bytes(reset)
    del out
    return max(0.0, (peak - base) / MiB)


def peak_cuda_of(fn: Callable[[], object]) -> float:
    """Peak CUDA memory (MiB) allocated by one call of ``fn`` above what was allocated before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del out
    return (peak - base) / MiB


def snapshot(obj: object) -> object:
    """Detached CPU copies of the tensors in ``obj`` (nested lists/tuples/dicts)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, (list, tuple)):
        return [snapshot(o) for o in obj]
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    return obj


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max(max|b|, 1e-12)``: a size-free closeness measure for big sums/grads."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item() if b.numel() else 0.0


# ------------------------------------------------------------------------------------------
# Case plumbing
# ------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """One row's implementations, built on identical inputs.

    Attributes:
        impls: ``{name: zero-argument callable}`` running the op once; ``"ours"`` is ours.
        compare: checks the snapshots ``{name: output}`` agree; raises ``AssertionError``,
            returns a short text such as ``"max rel diff 3e-07 (tol 1e-05)"``.
        skipped: ``{peer name: why it is not measured (with the command that measures it)}``.
    """

    impls: dict[str, Callable[[], object]]
    compare: Callable[[dict[str, object]], str]
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class Case:
    """A benchmark case: its rows, a builder and its targets (on CPU)."""

    name: str
    title: str
    rows: Callable[[bool, str], list[dict]]
    build: Callable[[dict, str, str | None], Bench]
    target: str
    check: Callable[[dict, dict], str] | None = None
    notes: str = ""


def _ratio_target(min_ratio: Callable[[dict], float], memory: bool = False):
    """A row check: ratio >= ``min_ratio(params)`` (and ours' peak <= peer's when ``memory``)."""

    def check(params: dict, row: dict) -> str:
        need = min_ratio(params)
        ok = row["ratio"] >= need
        why = [] if ok else [f"ratio {row['ratio']:.2f} < {need:g}"]
        if memory and row.get("ours_mem") is not None and row.get("peer_mem") is not None:
            if row["ours_mem"] > row["peer_mem"]:
                why.append(f"peak {row['ours_mem']:.0f} > {row['peer_mem']:.0f} MiB")
        return "met" if not why else "**MISSED**: " + "; ".join(why)

    return check


# ------------------------------------------------------------------------------------------
# 1. Soft-NMS
# ------------------------------------------------------------------------------------------


def detector_like_boxes(
    n: int, num_classes: int = 80, num_objects: int = 300, size: int = 1024, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates as a detector emits them before NMS.

    ``num_objects`` objects of random class, centre and size; each candidate is a jittered copy
    of one object (jitter ~10% of the object size), labelled with the object's class (80%) or
    a random one (20%), with a score that falls with the jitter on top of a per-object
    confidence, so most candidates score low and a few per object score high.

    Returns:
        boxes ``Tensor[n, 4]`` xyxy, scores ``Tensor[n]`` in (0, 1), class ids ``Tensor[n]``.
    """
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(num_objects, 2, generator=g) * size
    wh = torch.exp(torch.rand(num_objects, 2, generator=g) * 3.0) * 12.0  # 12 .. 240 px
    conf = torch.rand(num_objects, generator=g) * 0.8 + 0.2
    cls = torch.randint(0, num_classes, (num_objects,), generator=g)
    which = torch.randint(0, num_objects, (n,), generator=g)
    jitter = torch.randn(n, 4, generator=g) * 0.1
    c = ctr[which] + jitter[:, :2] * wh[which]
    s = wh[which] * torch.exp(jitter[:, 2:])
    boxes = torch.cat([c - s / 2, c + s / 2], 1).clamp(0, size)
    spread = jitter.abs().sum(1)
    scores = (conf[which] * torch.exp(-4.0 * spread) * torch.rand(n, generator=g)).clamp(1e-4, 1)
    relabel = torch.rand(n, generator=g) < 0.2
    idxs = torch.where(relabel, torch.randint(0, num_classes, (n,), generator=g), cls[which])
    return boxes, scores, idxs


def _soft_nms_rows(quick: bool, device: str) -> list[dict]:
    sizes = [300, 1000] if quick else [1000, 5000, 20000]
    return [dict(n=n, method=m) for n in sizes for m in ("gaussian", "linear")]


def _build_soft_nms(p: dict, device: str, only: str | None = None) -> Bench:
    try:
        import mmcv.ops
    except ImportError:  # a device image without mmcv (tools/gpu_check.py)
        if device == "cpu":
            raise
        mmcv = None

    from plugins.core.soft_nms import batched_soft_nms

    boxes, scores, idxs = (t.to(device) for t in detector_like_boxes(p["n"]))
    cfg = dict(type="soft_nms", iou_threshold=0.3, sigma=0.5, min_score=0.001, method=p["method"])

    def ours():
        return batched_soft_nms(boxes, scores, idxs, p["method"], 0.5, 0.3, 0.001)

    def mmcv_fn():
        dets, keep = mmcv.ops.batched_nms(boxes, scores, idxs, dict(cfg))
        return keep, dets[:, 4]

    def compare(outs: dict) -> str:
        # The reference is mmcv.ops.soft_nms run class by class. mmcv's batched_nms is what is
        # timed, but neither of its paths is an exact reference: below split_thr (10000) it
        # shifts boxes by class id x (max coordinate + 1), ~82k px here, and float32 then
        # rounds IoUs in the 4th digit (scores off by up to 7e-5, and flipped linear decays at
        # the IoU step); its per-class path (split_thr=0) gave 2 of 2492 scores that differ
        # from mmcv.ops.soft_nms on the same class's boxes (5k candidates, linear; measured).
        k1, s1 = (t.cpu() for t in outs["ours"])
        b_cpu, s_cpu, i_cpu = boxes.cpu(), scores.cpu(), idxs.cpu()
        if mmcv is None:  # our CPU engine: equal to mmcv.ops.soft_nms per class (tests/core)
            k2, s2 = batched_soft_nms(b_cpu, s_cpu, i_cpu, p["method"], 0.5, 0.3, 0.001)
            assert k1.tolist() == k2.tolist(), "kept boxes differ from the CPU engine"
            torch.testing.assert_close(s1, s2, rtol=1e-5, atol=1e-6)
            diff = (s1 - s2).abs().max().item() if k1.numel() else 0.0
            return f"same {k1.numel()} kept as our CPU engine; max score diff {diff:.1e}"
        ref_keep, ref_scores = [], []
        for c in i_cpu.unique().tolist():
            sel = (i_cpu == c).nonzero()[:, 0]
            dets, inds = mmcv.ops.soft_nms(
                b_cpu[sel], s_cpu[sel], 0.3, 0.5, 0.001, p["method"], offset=0
            )
            low = dets[:, 4] < 0.001  # mmcv keeps its first pick even below min_score
            ref_keep.append(sel[inds[~low].long()])
            ref_scores.append(dets[~low, 4])
        k2, s2 = torch.cat(ref_keep), torch.cat(ref_scores)
        o1, o2 = k1.argsort(), k2.argsort()
        assert k1[o1].tolist() == k2[o2].tolist(), "kept boxes differ"
        torch.testing.assert_close(s1[o1], s2[o2].to(s1.dtype), rtol=1e-5, atol=1e-6)
        diff = (s1[o1] - s2[o2]).abs().max().item() if k1.numel() else 0.0
        return (
            f"same {k1.numel()} kept as mmcv.ops.soft_nms per class; max score diff "
            f"{diff:.1e} (tol 1e-5 rel + 1e-6)"
        )

    impls = {"ours": ours, "mmcv": mmcv_fn}
    skipped = {}
    if mmcv is None:
        del impls["mmcv"]
        skipped["mmcv"] = "mmcv is not installed here (its soft-NMS copies CUDA tensors to the CPU)"
    return Bench({k: v for k, v in impls.items() if only in (None, k)}, compare, skipped)


# ------------------------------------------------------------------------------------------
# 2. Sigmoid focal loss
# ------------------------------------------------------------------------------------------


def _focal_rows(quick: bool, device: str) -> list[dict]:
    if quick:
        return [dict(shape="D0-like", batch=2, anchors=5456, classes=90)]
    return [
        dict(shape="EfficientDet-D0 512", batch=8, anchors=49104, classes=90),
        dict(shape="RetinaNet 800x800", batch=2, anchors=120087, classes=80),
    ]


def _build_focal(p: dict, device: str, only: str | None = None) -> Bench:
    from torchvision.ops import sigmoid_focal_loss as tv_focal

    from plugins.core.focal_loss import sigmoid_focal_loss

    g = torch.Generator().manual_seed(1)
    rows = p["batch"] * p["anchors"]
    logits = (torch.randn(rows, p["classes"], generator=g) * 2 - 3).to(device)
    labels = torch.randint(0, p["classes"], (rows,), generator=g)
    positive = torch.rand(rows, generator=g) < 0.01  # about 1% positive anchors
    targets = torch.zeros(rows, p["classes"])
    targets[positive.nonzero()[:, 0], labels[positive]] = 1.0
    targets = targets.to(device)
    x = logits.requires_grad_(True)

    def run(loss_fn):
        def call():
            x.grad = None
            loss = loss_fn()
            loss.backward()
            return loss, x.grad

        return call

    impls = {
        "ours": run(lambda: sigmoid_focal_loss(x, targets, 0.25, 2.0, "sum")),
        "torchvision": run(lambda: tv_focal(x, targets, 0.25, 2.0, "sum")),
    }
    skipped = {}
    try:
        if p.get("mmdet") is False:  # tools/gpu_check.py: not this peer (mmdet imports seconds)
            raise ImportError("left out by the caller")
        from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss

        impls["mmdet (py)"] = run(
            lambda: py_sigmoid_focal_loss(x, targets, gamma=2.0, alpha=0.25, reduction="sum")
        )
    except ImportError as err:  # pragma: no cover - mmdet is in the project environment
        skipped["mmdet (py)"] = f"mmdet not importable ({err})"
    if device == "cuda":
        try:
            from mmcv.ops import sigmoid_focal_loss as mmcv_focal
        except ImportError as err:  # e.g. a device image without mmcv (tools/gpu_check.py)
            skipped["mmcv (CUDA)"] = f"mmcv.ops not importable ({err})"
        else:
            mm_labels = torch.where(positive, labels, p["classes"]).to(device)  # bg = classes
            impls["mmcv (CUDA)"] = run(lambda: mmcv_focal(x, mm_labels, 2.0, 0.25, None, "sum"))
    else:
        skipped["mmcv (CUDA)"] = (
            "CUDA kernel only; `python tools/benchmark.py --device cuda --cases focal_loss`"
        )

    def compare(outs: dict) -> str:
        ref_loss, ref_grad = outs["torchvision"]
        worst = 0.0
        for loss, grad in outs.values():
            worst = max(worst, max_rel_diff(loss, ref_loss), max_rel_diff(grad, ref_grad))
        assert worst < 1e-4, f"focal loss/grad differ: max rel diff {worst:.2e}"
        return f"loss and grad max rel diff {worst:.1e} (tol 1e-4)"

    impls = {k: v for k, v in impls.items() if only in (None, k)}
    return Bench(impls, compare, skipped)


# ------------------------------------------------------------------------------------------
# 3. Corner pooling
# ------------------------------------------------------------------------------------------


def _corner_rows(quick: bool, device: str) -> list[dict]:
    shape = (1, 16, 32, 32) if quick else (2, 256, 128, 128)
    return [dict(shape=shape, direction=d) for d in ("top", "bottom", "left", "right")]


def _build_corner(p: dict, device: str, only: str | None = None) -> Bench:
    from plugins.core.corner_pool import corner_pool

    g = torch.Generator().manual_seed(2)
    x = torch.randn(*p["shape"], generator=g).to(device).requires_grad_(True)
    grad_out = torch.randn(*p["shape"], generator=g).to(device)

    def run(fn):
        def call():
            x.grad = None
            out = fn(x)
            out.backward(grad_out)
            return out, x.grad

        return call

    impls = {"ours": run(lambda t: corner_pool(t, p["direction"]))}
    skipped = {}
    try:
        from mmcv.ops import CornerPool
    except ImportError as err:  # e.g. a device image without mmcv (tools/gpu_check.py)
        skipped["mmcv"] = f"mmcv.ops not importable ({err})"
    else:
        impls["mmcv"] = run(CornerPool(p["direction"]))

    def compare(outs: dict) -> str:
        o1, g1 = outs["ours"]
        checks = []
        if device != "cpu":  # ours on the device (cummax) vs our CPU path (row scans)
            x_cpu = x.detach().cpu().requires_grad_(True)
            ref = corner_pool(x_cpu, p["direction"])
            ref.backward(grad_out.cpu())
            assert torch.equal(o1, ref.detach()), "corner pool forward differs from the CPU path"
            torch.testing.assert_close(g1, x_cpu.grad, rtol=1e-5, atol=1e-5)
            checks.append("forward equal to our CPU path, grad within 1e-5 rel + 1e-5")
        if "mmcv" in outs:
            o2, g2 = outs["mmcv"]
            assert torch.equal(o1, o2), "corner pool forward differs"
            torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-5)
            diff = (g1 - g2).abs().max().item()
            checks.append(f"forward equal; grad max diff {diff:.1e} (tol 1e-5 rel + 1e-5)")
        return "; ".join(checks) or "no reference here (mmcv not importable)"

    impls = {k: v for k, v in impls.items() if only in (None, k)}
    return Bench(impls, compare, skipped)


# ------------------------------------------------------------------------------------------
# 4. BiFPN
# ------------------------------------------------------------------------------------------

_EFFDET_FPN_NAMES = {"fast": "bifpn_fa", "softmax": "bifpn_attn", "sum": "bifpn_sum"}


def _bifpn_rows(quick: bool, device: str) -> list[dict]:
    rows = []
    for variant in ("d0", "d4"):
        for fusion in ("fast", "softmax", "sum"):
            rows.append(dict(variant=variant, fusion=fusion, size=64 if quick else None))
    return rows


def _randomise_bn_(module: torch.nn.Module, seed: int) -> None:
    """Random BN statistics and affine terms (fresh BNs are identities and hide mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
                m.weight.copy_(1 + torch.randn(m.weight.shape, generator=g) * 0.2)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)


def _build_bifpn(p: dict, device: str, only: str | None = None) -> Bench:
    import dataclasses

    import effdet
    from effdet.efficientdet import BiFpn

    from plugins.convert.effdet import effdet_key_to_ours
    from plugins.core.bifpn import BiFPN
    from plugins.core.variants import EFFICIENTDET_VARIANTS

    variant = EFFICIENTDET_VARIANTS[f"efficientdet_{p['variant']}"]
    variant = dataclasses.replace(variant, fusion=p["fusion"])
    cfg = effdet.get_efficientdet_config(f"tf_efficientdet_{p['variant']}")
    cfg.fpn_name = _EFFDET_FPN_NAMES[p["fusion"]]
    size = p["size"] or variant.image_size
    cfg.image_size = (size, size)
    chans = {"d0": (40, 112, 320), "d4": (56, 160, 448)}[p["variant"]]
    info = [dict(num_chs=c, reduction=2**lv) for c, lv in zip(chans, (3, 4, 5))]
    torch.manual_seed(3)
    ref = BiFpn(cfg, info)
    _randomise_bn_(ref, 4)
    ours = BiFPN(
        chans,
        variant.fpn_channels,
        num_levels=5,
        repeats=variant.fpn_repeats,
        fusion=p["fusion"],
    )
    sd = {
        effdet_key_to_ours("fpn." + k, variant, set())[len("fpn.") :]: v
        for k, v in ref.state_dict().items()
    }
    ours.load_state_dict(sd, strict=True)
    ref, ours = ref.eval().to(device), ours.eval().to(device)
    g = torch.Generator().manual_seed(5)
    feats = [
        torch.randn(1, c, size // 2**lv, size // 2**lv, generator=g).to(device)
        for c, lv in zip(chans, (3, 4, 5))
    ]

    def run(net):
        def call():
            with torch.no_grad():
                return net(list(feats))

        return call

    def compare(outs: dict) -> str:
        worst = max(max_rel_diff(a, b) for a, b in zip(outs["ours"], outs["effdet"]))
        assert worst < 1e-4, f"BiFPN outputs differ: max rel diff {worst:.2e}"
        return f"5 levels, max rel diff {worst:.1e} (tol 1e-4)"

    impls = {"ours": run(ours), "effdet": run(ref)}
    return Bench({k: v for k, v in impls.items() if only in (None, k)}, compare)


# ------------------------------------------------------------------------------------------
# 5. EfficientDet-D0
# ------------------------------------------------------------------------------------------


def _effdet_rows(quick: bool, device: str) -> list[dict]:
    if quick:
        return [
            dict(mode="inference", batch=1, size=64),
            dict(mode="train step", batch=2, size=128),
        ]
    return [
        dict(mode="inference", batch=1, size=512),
        dict(mode="inference", batch=8, size=512),
        dict(mode="train step", batch=8, size=512),
    ]


def simple_detection_loss(cls_outputs: list, box_outputs: list) -> torch.Tensor:
    """A loss on raw outputs, identical for both networks: mean squares plus mean magnitudes."""
    loss = sum(c.float().square().mean() for c in cls_outputs)
    return loss + sum(b.float().abs().mean() for b in box_outputs)


def _build_effdet(p: dict, device: str, only: str | None = None) -> Bench:
    import dataclasses

    import effdet

    from plugins.convert.effdet import convert_effdet_state_dict, convert_to_effdet_state_dict
    from plugins.core.efficientdet import EfficientDet
    from plugins.core.variants import EFFICIENTDET_VARIANTS

    train = p["mode"] != "inference"
    name = p.get("variant", "d0")  # optional keys (tools/gpu_check.py): variant, amp, channels_last
    amp = p.get("amp") == "bf16"  # bf16 autocast around the forward
    cfg = effdet.get_efficientdet_config(f"tf_efficientdet_{name}")
    cfg.image_size = (p["size"], p["size"])
    # stochastic depth off on both sides: a training step must be deterministic to compare
    cfg.backbone_args = dict(cfg.backbone_args, drop_path_rate=0.0)
    variant = dataclasses.replace(EFFICIENTDET_VARIANTS[f"efficientdet_{name}"], drop_path_rate=0.0)
    torch.manual_seed(6)
    ref = effdet.EfficientDet(cfg, pretrained_backbone=False)
    _randomise_bn_(ref, 7)
    ours = EfficientDet(variant) if only in (None, "ours") else None
    if ours is not None:
        ours.load_state_dict(convert_effdet_state_dict(ref.state_dict(), variant), strict=True)
    if only == "ours":
        ref = None
    nets = {"ours": ours, "effdet": ref}
    for net in nets.values():
        if net is not None:
            net.to(device).train(train)
    g = torch.Generator().manual_seed(8)
    images = torch.randn(p["batch"], 3, p["size"], p["size"], generator=g).to(device)
    if p.get("channels_last"):  # both networks (ours is channels-last by default)
        for net in nets.values():
            if net is not None:
                net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)

    def run(name):
        net = nets[name]

        def infer():
            with torch.no_grad():
                return net(images)

        def step():
            net.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
                outputs = net(images)
            loss = simple_detection_loss(*outputs)
            loss.backward()
            return loss

        return step if train else infer

    def compare(outs: dict) -> str:
        if not train:
            worst = max(
                max_rel_diff(a, b)
                for a, b in zip(
                    outs["ours"][0] + outs["ours"][1], outs["effdet"][0] + outs["effdet"][1]
                )
            )
            assert worst < 1e-4, f"EfficientDet outputs differ: max rel diff {worst:.2e}"
            return f"10 output maps, max rel diff {worst:.1e} (tol 1e-4)"
        loss_diff = max_rel_diff(outs["ours"], outs["effdet"])
        ours_grads = {k: p_.grad for k, p_ in nets["ours"].named_parameters()}
        as_effdet = convert_to_effdet_state_dict(ours_grads, variant)
        ref_params = dict(nets["effdet"].named_parameters())
        # Train-mode BN amplifies float32 summation-order noise towards the stem: our own
        # network, channels-last vs NCHW, differs by 8.8e-3 of the largest gradient entry at
        # batch 2 x 128 px (measured), ours vs effdet by 2.3e-2 at batch 8 x 512 px (gradient
        # cosine 1 - 1.6e-4 there). So the assertion is on the direction of the whole
        # gradient (a wrong or missing gradient moves it far off) with a loose tolerance; the
        # largest entry-wise difference is reported.
        keys = list(ref_params)
        a = torch.cat([as_effdet[k].flatten().double() for k in keys])
        b = torch.cat([ref_params[k].grad.flatten().double() for k in keys])
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
        worst = ((a - b).abs().max() / b.abs().max()).item()
        if amp:
            # bf16 rounding dominates the gradients of this loss at random init: each network's
            # own bf16 vs float32 gradient cosine was 0.08 (ours) and 0.45 (effdet) at D0,
            # 128 px, batch 4 (CPU, measured). So the loss and finite gradients are asserted;
            # the float32 rows check the gradients.
            assert loss_diff < 2e-2 and bool(a.isfinite().all() and b.isfinite().all()), (
                f"AMP training step differs: loss {loss_diff:.2e} or non-finite gradients"
            )
            return (
                f"bf16 loss rel diff {loss_diff:.1e} (tol 2e-2), gradients finite; gradient "
                f"cosine {cosine:.2f} (not asserted: bf16 noise)"
            )
        assert loss_diff < 1e-4 and cosine > 0.999, (
            f"training step differs: loss {loss_diff:.2e}, gradient cosine {cosine:.6f}"
        )
        return (
            f"loss rel diff {loss_diff:.1e} (tol 1e-4); gradient cosine 1 - {1 - cosine:.1e} "
            f"(tol 1e-3); max entry diff / max grad {worst:.1e}"
        )

    impls = {n: run(n) for n in ("ours", "effdet") if only in (None, n)}
    skipped = {}
    if device == "cpu":
        skipped["GPU D0-D3, batch 1/64, bf16, channels_last, +/- torch.compile"] = (
            "no GPU here; `python tools/benchmark.py --device cuda --cases efficientdet_gpu`"
        )
    return Bench(impls, compare, skipped)


def _effdet_gpu_rows(quick: bool, device: str) -> list[dict]:
    if device != "cuda":
        return []
    variants = ("d0",) if quick else ("d0", "d1", "d2", "d3")
    batches = (1, 8) if quick else (1, 64)
    return [
        dict(variant=v, batch=b, dtype=d, compiled=c)
        for v in variants
        for b in batches
        for d in ("bf16", "fp32")
        for c in (False, True)
    ]


def _build_effdet_gpu(p: dict, device: str, only: str | None = None) -> Bench:
    """channels_last inference, ours vs effdet with the same weights.

    ``p``: ``variant`` ("d0"...), ``batch``, ``compiled`` (``torch.compile(dynamic=False)``),
    ``dtype`` ("bf16": bf16 autocast, the default; "fp32": no autocast), ``size`` (default:
    the variant's image size).
    """
    import effdet

    from plugins.convert.effdet import convert_effdet_state_dict
    from plugins.core.efficientdet import EfficientDet

    name = f"efficientdet_{p['variant']}"
    cfg = effdet.get_efficientdet_config(f"tf_{name}")
    size = p.get("size") or cfg.image_size[0]
    cfg.image_size = (size, size)  # effdet plans its BiFPN resampling from it
    bf16 = p.get("dtype", "bf16") == "bf16"
    torch.manual_seed(6)
    ref = effdet.EfficientDet(cfg, pretrained_backbone=False)
    ours = EfficientDet(name)
    ours.load_state_dict(convert_effdet_state_dict(ref.state_dict(), name), strict=True)
    images = torch.randn(p["batch"], 3, size, size, device=device)
    images = images.to(memory_format=torch.channels_last)
    nets = {}
    for key, net in (("ours", ours), ("effdet", ref)):
        net = net.eval().to(device).to(memory_format=torch.channels_last)
        nets[key] = torch.compile(net, dynamic=False) if p["compiled"] else net

    def run(net):
        def call():
            with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                return net(images)

        return call

    # float32 on CUDA: cuDNN may run the convolutions in TF32 (torch's default)
    tol = 5e-2 if bf16 else (1e-2 if device == "cuda" else 1e-4)

    def compare(outs: dict) -> str:
        worst = max(
            max_rel_diff(a.float(), b.float())
            for a, b in zip(
                outs["ours"][0] + outs["ours"][1], outs["effdet"][0] + outs["effdet"][1]
            )
        )
        kind = "bf16" if bf16 else "fp32"
        assert worst < tol, f"{kind} outputs differ: {worst:.2e}"
        return f"{kind} max rel diff {worst:.1e} (tol {tol:g})"

    impls = {k: run(v) for k, v in nets.items() if only in (None, k)}
    return Bench(impls, compare)


# ------------------------------------------------------------------------------------------
# 6. CornerNet Hourglass-104
# ------------------------------------------------------------------------------------------


def _cornernet_rows(quick: bool, device: str) -> list[dict]:
    if quick:
        return [dict(backbone="tiny (2 stacks, 8-16 ch)", size=63)]
    return [dict(backbone="Hourglass-104", size=511)]


def _build_cornernet(p: dict, device: str, only: str | None = None) -> Bench:
    import mmdet
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from plugins.convert.mmdet_cornernet import convert_mmdet_cornernet_state_dict
    from plugins.core.cornernet import OUTPUT_KEYS, CornerNet
    from plugins.core.hourglass import HOURGLASS_TINY, HourglassNet

    register_all_modules()
    path = Path(mmdet.__file__).parent / ".mim/configs/cornernet"
    cfg = Config.fromfile(str(path / "cornernet_hourglass104_8xb6-210e-mstest_coco.py"))
    model_cfg = cfg.model
    hg_kwargs = {}
    if p["size"] < 128:  # quick: the same architecture, tiny
        hg_kwargs = dict(HOURGLASS_TINY)
        model_cfg.backbone.update(hg_kwargs)
        model_cfg.bbox_head.in_channels = hg_kwargs["feat_channel"]
    torch.manual_seed(9)
    ref = MODELS.build(model_cfg)
    _randomise_bn_(ref, 10)
    ours = None
    if only in (None, "ours"):
        # channels-last inside: the faster inference layout (off by default, see HourglassNet)
        backbone = HourglassNet(**hg_kwargs, channels_last=True)
        ours = CornerNet(model_cfg.bbox_head.num_classes, backbone, channels_last=True)
        ours.load_state_dict(convert_mmdet_cornernet_state_dict(ref.state_dict()), strict=True)
        ours = ours.eval().to(device)
    if only == "ours":
        ref = None
    else:
        ref = ref.eval().to(device)
    g = torch.Generator().manual_seed(11)
    images = torch.randn(1, 3, p["size"], p["size"], generator=g).to(device)

    def ours_fn():
        with torch.no_grad():
            return ours(images)

    def mmdet_fn():
        with torch.no_grad():
            return ref.bbox_head(ref.backbone(images))

    def compare(outs: dict) -> str:
        worst = 0.0
        for i, key in enumerate(OUTPUT_KEYS):
            for a, b in zip(outs["ours"][key], outs["mmdet"][i]):
                worst = max(worst, max_rel_diff(a, b))
        assert worst < 1e-4, f"CornerNet outputs differ: max rel diff {worst:.2e}"
        return f"6 maps x 2 stacks, max rel diff {worst:.1e} (tol 1e-4)"

    impls = {"ours": ours_fn, "mmdet": mmdet_fn}
    return Bench({k: v for k, v in impls.items() if only in (None, k)}, compare)


# ------------------------------------------------------------------------------------------
# 7. Training throughput of the demo configs (subprocesses)
# ------------------------------------------------------------------------------------------

_TIME_RE = re.compile(r"(?<![a-z_])time: ([0-9.]+)")


def training_commands(iters: int, out_dir: str) -> dict[str, list[str]]:
    """The two demo trainings, ``iters`` iterations each, batch 8 (the configs' own)."""
    py = sys.executable
    return {
        "Detectron2": [
            py,
            "tools/train_net.py",
            "--config-file",
            "configs/demo/efficientdet_shapes.yaml",
            "SOLVER.MAX_ITER",
            str(iters),
            "SOLVER.IMS_PER_BATCH",
            "8",
            "TEST.EVAL_PERIOD",
            "0",
            "OUTPUT_DIR",
            os.path.join(out_dir, "d2"),
        ],
        "MMDetection": [
            py,
            "tools/mm_train.py",
            "configs/mmdet/demo/efficientdet_shapes.py",
            "--work-dir",
            os.path.join(out_dir, "mm"),
            "--cfg-options",
            "train_dataloader.batch_size=8",
            "default_hooks.logger.interval=5",
        ],
    }


def measure_training(cmd: list[str], iters: int, timeout: float) -> tuple[float | None, str]:
    """Run one demo training and read its per-iteration ``time:`` from the log.

    The process is stopped (by its own id) once its log has reported ``iters`` iterations or
    after ``timeout`` seconds (MMDetection's epoch loop has no iteration cap on the command
    line, and Detectron2 evaluates after its last iteration; neither part is timed).

    Returns:
        (median seconds per iteration over the logged windows, or ``None``; a note).
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    times, tail, t0 = [], [], time.monotonic()
    iter_re = re.compile(r"iter: (\d+)|\[(\d+)/\d+\]")
    seen = 0
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            tail = (tail + [line.rstrip()])[-8:]
            m = _TIME_RE.search(line)
            if m:
                times.append(float(m.group(1)))
                it = iter_re.search(line)
                if it:
                    seen = int(it.group(1) or it.group(2)) + (1 if it.group(1) else 0)
                if seen >= iters:
                    break
            if time.monotonic() - t0 > timeout:
                break
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if not times:
        return None, "no timing in its log; last lines: " + " | ".join(tail)[-300:]
    # the first window holds the warm-up iterations; drop it when there are more
    used = times[1:] if len(times) > 1 else times
    return statistics.median(used), f"{len(used)} log window(s) up to iteration {seen}"


# ------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------


# A process that keeps every core busy with torch matrix products (one thread per core).
_BUSY_CORES = (
    "import sys, torch\n"
    "torch.set_num_threads(int(sys.argv[1]))\n"
    "a = torch.randn(1024, 1024)\n"
    "while True:\n"
    "    a @ a\n"
)


def _soft_nms_shared_rows(quick: bool, device: str) -> list[dict]:
    if device != "cpu":
        return []
    cores = os.cpu_count() or 2
    sizes = [1000] if quick else [1000, 5000]
    beside = f"{cores}-thread matmul process"
    return [dict(n=n, method=m, beside=beside) for n in sizes for m in ("gaussian", "linear")]


def _build_soft_nms_shared(p: dict, device: str, only: str | None = None) -> Bench:
    """Case 1 with every core kept busy by another process for as long as the bench lives
    (data-loader workers or a neighbouring job do the same to an evaluation)."""
    bench = _build_soft_nms(p, device, only)
    if only is None:  # not in the peak-memory children
        busy = subprocess.Popen(
            [sys.executable, "-c", _BUSY_CORES, str(os.cpu_count() or 2)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        weakref.finalize(bench, busy.kill)
        time.sleep(2.0)  # torch imported and multiplying
    return bench


def _min_ratio_soft_nms(p: dict) -> float:
    return 5.0 if p["n"] == 5000 else 1.0


# ------------------------------------------------------------------------------------------
# 8. The exported ONNX graph (whole detector) in onnxruntime
# ------------------------------------------------------------------------------------------


def _onnx_rows(quick: bool, device: str) -> list[dict]:
    if quick:
        return [dict(variant="efficientdet_test", batch=1, size=128)]
    return [dict(variant="efficientdet_d0", batch=b, size=512) for b in (1, 8)]


def _build_onnx(p: dict, device: str, only: str | None = None) -> Bench:
    """Whole D0 detector: onnxruntime (our exported graph) vs our eager module vs effdet."""
    import shutil

    import effdet

    from plugins.convert.effdet import convert_effdet_state_dict
    from plugins.core.anchors import feature_sizes, generate_anchors
    from plugins.core.efficientdet import EfficientDet
    from plugins.core.variants import EFFICIENTDET_VARIANTS
    from plugins.export.detector import (
        AnchorDecoder,
        ExportableDetector,
        Selection,
        efficientdet_box_decoder,
    )
    from plugins.export.onnx import OnnxDetector, export_onnx

    if device != "cpu":
        raise ValueError("onnx case: CPU only (onnxruntime's CPU provider)")
    variant = EFFICIENTDET_VARIANTS[p["variant"]]
    size, batch, classes = p["size"], p["batch"], 90
    cfg = effdet.get_efficientdet_config("tf_efficientdet_d0")
    cfg.image_size, cfg.num_classes = (size, size), classes
    torch.manual_seed(6)
    ref = effdet.EfficientDet(cfg, pretrained_backbone=False).eval()
    mean = torch.tensor([123.675, 116.28, 103.53]).reshape(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).reshape(1, 3, 1, 1)
    images = torch.randint(
        0, 256, (batch, 3, size, size), generator=torch.Generator().manual_seed(8)
    )
    images = images.to(torch.uint8)
    normalised = (images.float() - mean) / std
    # BatchNorm statistics measured on the inputs: with random statistics a deep random network
    # gives nearly the same output everywhere, and the NMS then picks among boxes whose scores
    # tie to float noise (ONNX and eager would keep different ones of equal boxes)
    norms = [m for m in ref.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if p["variant"] != "efficientdet_d0":  # quick run: the tiny variant keeps its own weights
        norms = []
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    with torch.no_grad():
        ref(normalised)
        for bn in norms:
            bn.running_var.clamp_(min=0.01)
    ref.eval()
    with torch.no_grad():  # logits around -2.5: about a thousand candidates above 0.05
        bias = ref.class_net.predict.conv_pw.bias
        bias.copy_(torch.randn(bias.shape, generator=torch.Generator().manual_seed(9)) - 2.5)
    net = EfficientDet(variant, classes).eval()
    if p["variant"] == "efficientdet_d0":
        net.load_state_dict(convert_effdet_state_dict(ref.state_dict(), variant), strict=True)
    else:  # the quick run's tiny variant: random weights of its own
        with torch.no_grad():
            net.class_net.predict.pw.bias.normal_(-1.5, 1.0)
    v = variant
    anchors = generate_anchors(
        (size, size), v.min_level, v.max_level, v.num_scales, v.aspect_ratios, v.anchor_scale
    )
    levels = feature_sizes((size, size), v.max_level)[v.min_level :]
    detector = ExportableDetector(
        net,
        AnchorDecoder(
            anchors,
            [h * w for h, w in levels],
            v.num_anchors,
            classes,
            1000,
            0.05,
            efficientdet_box_decoder(),
        ),
        Selection(num_classes=classes, max_detections=100, nms_iou_threshold=0.5, shift_limit=1000),
        (size, size),
        mean.flatten().tolist(),
        std.flatten().tolist(),
    ).eval()
    impls: dict[str, Callable[[], object]] = {}
    bench = Bench(impls, lambda outs: "")
    if only in (None, "ours"):
        folder = tempfile.mkdtemp(prefix="bench_onnx_")
        weakref.finalize(bench, shutil.rmtree, folder, True)  # the folder is ours
        path = export_onnx(detector, os.path.join(folder, "d0.onnx"), batch=batch)
        runner = OnnxDetector(path, threads=torch.get_num_threads())
        array = images.numpy()
        impls["ours"] = lambda: runner(array)
    if only in (None, "torch_eager"):

        def eager():
            with torch.no_grad():
                return detector(images)

        impls["torch_eager"] = eager
    if only in (None, "effdet") and p["variant"] == "efficientdet_d0":
        predict = effdet.DetBenchPredict(ref).eval()

        def peer():
            with torch.no_grad():
                return predict(normalised)

        impls["effdet"] = peer

    def compare(outs: dict) -> str:
        from plugins.export.onnx import match_detections

        ort = outs["ours"]
        boxes, scores, labels, count = (t.numpy() for t in outs["torch_eager"])
        total = 0
        for i in range(batch):
            n, m = int(ort["num_detections"][i]), int(count[i])
            mine = (ort["boxes"][i, :n], ort["scores"][i, :n], ort["labels"][i, :n])
            total += match_detections(
                mine, (boxes[i, :m], scores[i, :m], labels[i, :m]), 1e-3 * size
            )
        assert total > 0, "no detections: the comparison would be vacuous"
        text = f"ONNX = eager: {total} detections (boxes 1e-3 of the size, scores 1e-4)"
        if "effdet" in outs:  # its own post-processing (5000 pre-NMS, no threshold): its top-1
            top = outs["effdet"][:, :1].numpy()
            for i in range(batch):
                n = int(count[i])
                mine = (boxes[i, :n], scores[i, :n], labels[i, :n])
                match_detections(
                    (top[i, :, :4], top[i, :, 4], top[i, :, 5].astype(int) - 1),
                    mine,
                    1e-3 * size,
                    subset=True,
                )
            text += "; effdet's best detection among ours"
        return text

    bench.compare = compare
    if only is None:
        bench.skipped["onnxruntime GPU / TensorRT"] = (
            "not measured (no device lent); the same graph runs on onnxruntime's CUDA / "
            "TensorRT providers"
        )
    return bench


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case(
            "soft_nms",
            "1. Soft-NMS (batched, 80 classes)",
            _soft_nms_rows,
            _build_soft_nms,
            "CPU: ratio >= 5 at 5k candidates, >= 1 at every size",
            _ratio_target(_min_ratio_soft_nms),
            "Ours: `plugins.core.soft_nms.batched_soft_nms`; peer: `mmcv.ops.batched_nms(boxes, "
            "scores, idxs, dict(type='soft_nms', iou_threshold=0.3, sigma=0.5, min_score=0.001, "
            "method=...))` (its `split_thr` 10000: per-class loop above 10k boxes). Inputs: "
            "`detector_like_boxes` - 300 objects of random class in a 1024 px image, candidates "
            "jittered around them (10% of the object size), 20% relabelled to a random class, "
            "scores falling with the jitter. mmcv keeps a class's first pick even below "
            "min_score; those are dropped before comparing. Outputs are checked against "
            "`mmcv.ops.soft_nms` run class by class (see `_build_soft_nms` for why not against "
            "batched_nms' own output).",
        ),
        Case(
            "soft_nms_shared",
            "1b. Soft-NMS with the CPU cores shared",
            _soft_nms_shared_rows,
            _build_soft_nms_shared,
            "report (no target)",
            None,
            "Case 1's inputs and comparison while another process keeps every core busy "
            "(`torch.set_num_threads(cores)` and a loop of 1024x1024 matrix products), started "
            "2 s before the case and killed after it. CPU only.",
        ),
        Case(
            "focal_loss",
            "2. Sigmoid focal loss, forward + backward (reduction sum)",
            _focal_rows,
            _build_focal,
            "CPU: ratio >= 1 and peak memory <= the peer's",
            _ratio_target(lambda p: 1.0, memory=True),
            "Ours: `plugins.core.focal_loss.sigmoid_focal_loss`; peers: "
            "`torchvision.ops.sigmoid_focal_loss`, `mmdet.models.losses.focal_loss."
            "py_sigmoid_focal_loss` (mmcv's kernel is CUDA-only). alpha 0.25, gamma 2, ~1% "
            "positive anchors. Anchors: D0 at 512 px = 9 x (64^2+32^2+16^2+8^2+4^2) = 49,104; "
            "RetinaNet at 800x800 = 9 x (100^2+50^2+25^2+13^2+7^2) = 120,087.",
        ),
        Case(
            "corner_pool",
            "3. Corner pooling, forward + backward",
            _corner_rows,
            _build_corner,
            "CPU: ratio >= 1",
            _ratio_target(lambda p: 1.0),
            "Ours: `plugins.core.corner_pool.corner_pool`; peer: `mmcv.ops.CornerPool`.",
        ),
        Case(
            "bifpn",
            "4. BiFPN (all repeats, P3-P7), inference",
            _bifpn_rows,
            _build_bifpn,
            "report (no target)",
            None,
            "Ours: `plugins.core.bifpn.BiFPN`; peer: effdet's `BiFpn` (fpn_name bifpn_fa / "
            "bifpn_attn / bifpn_sum) with the same weights through `plugins.convert.effdet`. "
            "D0: width 64, 3 repeats, 512 px; D4: width 224, 7 repeats, 1024 px; batch 1.",
        ),
        Case(
            "efficientdet",
            "5. EfficientDet-D0 (CPU, float32)",
            _effdet_rows,
            _build_effdet,
            "CPU: ratio >= 1",
            _ratio_target(lambda p: 1.0),
            "Ours: `plugins.core.efficientdet.EfficientDet('efficientdet_d0')` (channels-last "
            "default); peer: effdet's `EfficientDet(tf_efficientdet_d0)`; same weights via "
            "`convert_effdet_state_dict`, stochastic depth off on both. Train step = forward "
            "+ `simple_detection_loss` (mean squares of class maps + mean |box maps|) + backward.",
        ),
        Case(
            "efficientdet_gpu",
            "5b. EfficientDet D0-D3 on GPU (bf16 / fp32, channels_last, +/- torch.compile)",
            _effdet_gpu_rows,
            _build_effdet_gpu,
            "report images/s",
            None,
            "GPU only.",
        ),
        Case(
            "cornernet",
            "6. CornerNet Hourglass-104, backbone + head forward",
            _cornernet_rows,
            _build_cornernet,
            "CPU: ratio >= 1",
            _ratio_target(lambda p: 1.0),
            "Ours: `plugins.core.cornernet.CornerNet` with `channels_last=True` in backbone and "
            "head (the inference option; off by default); peer: mmdet's `HourglassNet` + "
            "`CornerHead` built from `cornernet_hourglass104_8xb6-210e-mstest_coco.py`; same "
            "weights via `convert_mmdet_cornernet_state_dict`; batch 1, inference.",
        ),
        Case(
            "onnx",
            "8. Exported EfficientDet-D0 in onnxruntime (whole detector, CPU)",
            _onnx_rows,
            _build_onnx,
            "report (no target)",
            None,
            "Ours: `tools/export_onnx.py`'s graph (`plugins.export`: uint8 input, normalisation, "
            "network, decoding, top-1000 per level, score > 0.05, per-class NMS 0.5, top 100) "
            "in onnxruntime's CPU provider with torch's thread count; peers: the same "
            "`ExportableDetector` run eagerly in PyTorch (channels-last network) and effdet's "
            "`DetBenchPredict(tf_efficientdet_d0)` (its own post-processing: 5000 candidates, "
            "NMS 0.5, top 100) with the same weights; random weights, class biases about -2.5 so "
            "that NMS has work. The ONNX and eager detections are checked to be the same.",
        ),
        Case(
            "training",
            "7. Demo training throughput (EfficientDet on Shapes)",
            lambda quick, device: [],
            lambda p, device, only=None: Bench({}, lambda o: ""),
            "report images/s",
            None,
            "",
        ),
    )
}


# ------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------


def _describe(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items() if v is not None)


def _memory_child(case: str, impl: str, rows: list[dict], device: str) -> list[float | None]:
    """Run in a child process: peak memory of ``impl`` for each row of ``case``."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    out = []
    for params in rows:
        bench = CASES[case].build(params, device, impl)
        fn = bench.impls[impl]
        out.append(peak_cuda_of(fn) if device == "cuda" else peak_rss_of(fn))
        del bench, fn
        gc.collect()
    return out


def measure_memory(case: str, impl: str, rows: list[dict], device: str) -> list[float | None]:
    """Peak memory (MiB) per row: CUDA in this process, CPU in fresh child processes.

    One child runs every row when the kernel lets it reset its peak mark, otherwise one child
    per row. A failing child gives ``None`` rows (the table says "n/a").
    """
    if device == "cuda":
        return _memory_child(case, impl, rows, device)
    batches = [rows] if _reset_peak_rss() else [[r] for r in rows]
    result: list[float | None] = []
    for batch in batches:
        payload = json.dumps(dict(case=case, impl=impl, rows=batch, device=device))
        env = dict(os.environ, BENCH_THREADS=str(torch.get_num_threads()))
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--_memory-child", payload],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("MEMORY ")]
        if proc.returncode != 0 or not lines:
            print(f"  memory child failed ({case}/{impl}): {proc.stderr[-500:]}", file=sys.stderr)
            result.extend([None] * len(batch))
        else:
            result.extend(json.loads(lines[-1][len("MEMORY ") :]))
    return result


def run_case(case: Case, quick: bool, device: str, repeats: int, warmup: int, memory: bool):
    """Rows of one case: agreement first, then alternated timing, then peak memory."""
    rows = []
    param_rows = case.rows(quick, device)
    impl_names: list[str] = []
    skipped: dict[str, str] = {}
    for params in param_rows:
        bench = case.build(params, device, None)
        outs = {name: snapshot(fn()) for name, fn in bench.impls.items()}
        agreement = bench.compare(outs)  # AssertionError stops the run: nothing is timed
        del outs
        times = ab_time(bench.impls, repeats, warmup, device)
        impl_names = list(bench.impls)
        skipped.update(bench.skipped)
        rows.append(dict(params=params, times=times, agreement=agreement))
        print(
            f"  {_describe(params)}: "
            + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in times.items())
            + f" | {agreement}",
            flush=True,
        )
        del bench
        gc.collect()
    mems: dict[str, list] = {}
    if memory and param_rows:
        for name in impl_names:
            mems[name] = measure_memory(case.name, name, param_rows, device)
    table = []
    for i, row in enumerate(rows):
        ours_t = row["times"]["ours"]
        for peer in [n for n in impl_names if n != "ours"] or [None]:
            entry = dict(
                config=_describe(row["params"]),
                ours_ms=ours_t * 1e3,
                peer=peer,
                peer_ms=row["times"][peer] * 1e3 if peer else None,
                ratio=row["times"][peer] / ours_t if peer else None,
                ours_mem=mems.get("ours", [None] * len(rows))[i],
                peer_mem=mems.get(peer, [None] * len(rows))[i] if peer else None,
                agreement=row["agreement"],
            )
            if device == "cpu" and case.check and peer:
                entry["target"] = case.check(row["params"], entry)
            else:
                entry["target"] = "-"
            table.append(entry)
    return table, skipped


def _fmt(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.+)", f.read())
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpu}; {os.cpu_count()} cores visible; torch threads {torch.get_num_threads()}; "
        f"load average (1/5/15 min) at start {load}"
    )


def _versions() -> str:
    out = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    for mod in ("torchvision", "mmcv", "mmdet", "mmengine", "effdet", "timm", "detectron2"):
        try:
            version = getattr(__import__(mod), "__version__", None)
            out.append(f"{mod} {version or importlib.metadata.version(mod)}")
        except Exception:  # noqa: BLE001 - any import failure just means "absent"
            out.append(f"{mod} absent")
    return ", ".join(out)


def render_section(case: Case, table: list[dict], skipped: dict, header: dict, device: str) -> str:
    """Markdown section of one case (with its run's machine, versions and command)."""
    lines = [f"<!-- case:{case.name} -->", f"## {case.title}", ""]
    if case.notes:
        lines += [case.notes, ""]
    lines += [
        f"Target: {case.target}. Ratio = peer time / our time (> 1: ours is faster).",
        "",
        f"Run {header['date']} on {device}: {header['machine']}.  ",
        f"Versions: {header['versions']}.  ",
        f"Command: `{header['command']}`",
        "",
        "| config | ours (ms) | peer | peer (ms) | peer / ours | ours peak (MiB) "
        "| peer peak (MiB) | outputs agree | target |",
        "|---|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['config']} | {_fmt(r['ours_ms'])} | {r['peer'] or '-'} | "
            f"{_fmt(r['peer_ms'])} | {_fmt(r['ratio'], 2)} | {_fmt(r['ours_mem'])} | "
            f"{_fmt(r['peer_mem'])} | {r['agreement']} | {r['target']} |"
        )
    for name, why in skipped.items():
        lines.append(f"| - | - | {name} | not measured | - | - | - | - | {why} |")
    lines += ["", f"<!-- /case:{case.name} -->", ""]
    return "\n".join(lines)


FILE_HEADER = """# Benchmarks

Produced by `tools/benchmark.py` (see its docstring). Each case runs our implementation and the
peer's alternately in one process (A/B/A/B..., rotating which goes first each round) on
identical inputs, and for networks identical weights (through `plugins/convert`), after a
warm-up round; times are medians. Outputs are compared *before* timing (the run stops if they
disagree; the tolerance is in each row). Peak memory on CPU is measured in a child process
per implementation: peak resident set size during one call (forward + backward where timed
so) minus the resident size just before it; on CUDA `torch.cuda.max_memory_allocated`.
CPU timings on a shared machine are noisy; the load average at the start of each run is
given with it. Rows marked **MISSED** are targets this code does not reach yet.

"""


def write_markdown(path: Path, sections: dict[str, str]) -> None:
    """Replace (or append) the sections of the cases run; keep the others."""
    text = path.read_text() if path.exists() else FILE_HEADER
    if not text.startswith("# Benchmarks"):
        text = FILE_HEADER + text
    for name, body in sections.items():
        pattern = re.compile(
            rf"<!-- case:{re.escape(name)} -->.*?<!-- /case:{re.escape(name)} -->\n?", re.S
        )
        if pattern.search(text):
            text = pattern.sub(lambda _m, body=body: body, text)
        else:
            text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text.rstrip("\n") + "\n")


def run_training_case(quick: bool, header: dict) -> str:
    """Section for case 7 (subprocess trainings)."""
    case = CASES["training"]
    iters = 10 if quick else 20
    lines = [f"<!-- case:{case.name} -->", f"## {case.title}", ""]
    lines += [
        "Each framework's own trainer runs the repo's demo config as a subprocess; the "
        "per-iteration `time:` its logger prints is read (the first logged window, which holds "
        "the warm-up, is dropped when there are more); images/s = 8 / median seconds per "
        "iteration. Both demo configs train the same `efficientdet_demo` network (256 px, "
        "batch 8); what differs is each framework's data pipeline, hooks and what its logged "
        "`time` covers.",
        "",
        f"Run {header['date']}: {header['machine']}.  ",
        f"Command: `{header['command']}`",
        "",
        "| framework | iterations read | s / iteration | images/s | command | note |",
        "|---|---:|---:|---:|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, cmd in training_commands(iters, tmp).items():
            shown = " ".join(shlex.quote(c) for c in [Path(cmd[0]).name] + cmd[1:])
            shown = shown.replace(tmp, "/tmp/bench")
            try:
                sec, note = measure_training(cmd, iters, timeout=120 if quick else 600)
            except Exception as err:  # noqa: BLE001 - reported in the table
                sec, note = None, f"failed: {err}"
            ips = None if sec is None else 8 / sec
            status = "measured" if sec else "**not measured**"
            print(f"  {name}: {note}", flush=True)
            lines.append(
                f"| {name} | {iters} | {_fmt(sec, 3)} | {_fmt(ips, 2)} | `{shown}` | "
                f"{status}: {note.replace('|', '/')} |"
            )
    lines += ["", f"<!-- /case:{case.name} -->", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="every case at a small size")
    parser.add_argument(
        "--cases",
        default="all",
        help=f"comma-separated subset of: {', '.join(CASES)} (default all)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"))
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (5; quick 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (1)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        job = json.loads(args.memory_child)
        res = _memory_child(job["case"], job["impl"], job["rows"], job["device"])
        print("MEMORY " + json.dumps(res), flush=True)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    names = list(CASES) if args.cases == "all" else [c.strip() for c in args.cases.split(",")]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"--cases: unknown {unknown}; choose from {list(CASES)}")
    repeats = args.repeats or (3 if args.quick else 5)
    header = dict(
        date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        machine=_machine(),
        versions=_versions(),
        command=" ".join(
            shlex.quote(a) for a in ["python", "tools/benchmark.py"] + (argv or sys.argv[1:])
        ),
    )
    print(f"{header['machine']}\n{header['versions']}", flush=True)
    sections = {}
    for name in names:
        case = CASES[name]
        print(f"[{name}]", flush=True)
        t0 = time.monotonic()
        if name == "training":
            sections[name] = run_training_case(args.quick, header)
        elif name == "efficientdet_gpu" and args.device != "cuda":
            sections[name] = render_section(
                case,
                [],
                {
                    "ours and effdet": "no GPU on this machine; measure with "
                    "`python tools/benchmark.py --device cuda --cases efficientdet_gpu`"
                },
                header,
                args.device,
            )
        else:
            table, skipped = run_case(
                case, args.quick, args.device, repeats, args.warmup, not args.no_memory
            )
            sections[name] = render_section(case, table, skipped, header, args.device)
        print(f"  ({time.monotonic() - t0:.1f} s)", flush=True)
        write_markdown(Path(args.output), {name: sections[name]})  # keep finished cases
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
