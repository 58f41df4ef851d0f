"""Child process of test_soft_nms_triton.py: the Triton kernel under Triton's CPU interpreter.

``TRITON_INTERPRET=1`` must be set before triton is imported, so this runs in its own process
(``python tests/core/_triton_interpret_cases.py``) and prints one JSON line per case comparing
:func:`plugins.core.soft_nms_triton.soft_nms_padded` (on CPU tensors) with the CPU engine.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") != "1":
    raise SystemExit("run with TRITON_INTERPRET=1 (see tests/core/test_soft_nms_triton.py)")

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from plugins.core.soft_nms import batched_soft_nms  # noqa: E402
from plugins.core.soft_nms_triton import soft_nms_padded  # noqa: E402


def _random(n, seed, num_classes):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 60
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 30 + 1], 1)
    return boxes, torch.rand(n, generator=g), torch.randint(0, num_classes, (n,), generator=g)


def _tied(n, seed, num_classes):
    boxes, _, idxs = _random(n, seed, num_classes)
    g = torch.Generator().manual_seed(seed + 1)
    boxes[n // 2 :] = boxes[: n - n // 2].clone()  # duplicates: IoU 1
    scores = torch.randint(1, 4, (n,), generator=g).float() / 4  # many exact ties
    return boxes, scores, idxs


def _detector_like(n, seed, num_classes):
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(5, 2, generator=g) * 200
    size = torch.rand(5, 2, generator=g) * 60 + 20
    which = torch.randint(0, 5, (n,), generator=g)
    c = ctr[which] + torch.randn(n, 2, generator=g) * size[which] * 0.1
    boxes = torch.cat([c - size[which] / 2, c + size[which] / 2], 1)
    scores = torch.rand(n, generator=g) * 0.9 + 0.05
    scores[::9] = 5e-4  # below score_threshold from the start (discarded at the first pick)
    return boxes, scores, torch.randint(0, num_classes, (n,), generator=g)


# name: (inputs, method, score_threshold, block); block 8 makes every class span several tiles.
CASES = {
    "random-gaussian-block16": (_random(48, 0, 3), "gaussian", 0.001, 16),
    "tied-linear-block8": (_tied(40, 1, 2), "linear", 0.05, 8),
    "tied-gaussian": (_tied(40, 2, 2), "gaussian", 0.3, 256),
    "detector-like-linear": (_detector_like(60, 3, 3), "linear", 0.001, 256),
    "detector-like-gaussian-one-class-block8": (_detector_like(40, 4, 1), "gaussian", 0.01, 8),
}


def main() -> None:
    for name, ((boxes, scores, idxs), method, thr, block) in CASES.items():
        keep, sc, num = soft_nms_padded(boxes, scores, idxs, method, 0.5, 0.3, thr, block=block)
        k = int(num)
        ref_keep, ref_sc = batched_soft_nms(boxes, scores, idxs, method, 0.5, 0.3, thr)
        same = keep[:k].tolist() == ref_keep.tolist()
        diff = (sc[:k] - ref_sc).abs().max().item() if same and k else float("nan")
        padding_ok = bool((sc[k:] == float("-inf")).all())
        print(json.dumps(dict(case=name, kept=k, ref_kept=ref_keep.numel(), same=same,
                              max_diff=diff, padding_ok=padding_ok)))  # fmt: skip


if __name__ == "__main__":
    main()
