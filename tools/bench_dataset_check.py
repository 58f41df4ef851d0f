"""Time the dataset check (plugins.data.check) on a COCO-2017-val-sized case.

The case is written into a temporary folder: 5,000 real image files (small noise JPEGs and
PNGs of a few sizes, so that header reads do real work) and a synthetic COCO json with
36,781 boxes (COCO val2017's count), 0.1 % of them broken (NaN, zero size, outside) so the
drop path runs. Three implementations run alternately in one process (tools/benchmark.py's
``ab_time``: rotating order, median), after a warm-up, so the files sit in the page cache:

* ``check`` - :func:`plugins.data.check.check_coco_dataset` (json, ids, boxes, 5k image
  headers);
* ``check --no-images`` - the same without opening the images;
* ``pycocotools COCO()`` (peer) - loading the same json with pycocotools, which both
  frameworks do anyway before training: the ratio says what the check adds to that.

Usage::

    python tools/bench_dataset_check.py [--images 5000] [--boxes 36781] [--repeats 5]

Prints a Markdown table (and ``--json`` a JSON line) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from benchmark import ab_time  # noqa: E402

from plugins.data.check import check_coco_dataset  # noqa: E402

_SIZES = ((64, 48), (48, 64), (80, 60), (60, 80))  # (width, height): small real files


def write_case(root: Path, num_images: int, num_boxes: int, seed: int = 0) -> tuple[str, str]:
    """Write the images and the json of the case under ``root``; returns (json, image dir)."""
    rng = np.random.default_rng(seed)
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    # one encoded file per (size, format), copied: writing is not what is measured
    blobs = {}
    for w, h in _SIZES:
        for ext, fmt in ((".jpg", "JPEG"), (".png", "PNG")):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, fmt)
            blobs[(w, h, ext)] = buf.getvalue()
    images = []
    for i in range(num_images):
        w, h = _SIZES[i % len(_SIZES)]
        ext = ".jpg" if i % 2 == 0 else ".png"
        name = f"{i + 1:012d}{ext}"
        (image_dir / name).write_bytes(blobs[(w, h, ext)])
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
    owner = rng.integers(0, num_images, num_boxes)
    wh = np.array([(images[k]["width"], images[k]["height"]) for k in owner], dtype=np.float64)
    size = rng.uniform(0.05, 0.5, (num_boxes, 2)) * wh
    xy = rng.uniform(0.0, 1.0, (num_boxes, 2)) * (wh - size)
    boxes = np.concatenate([xy, size], axis=1).round(2)
    broken = rng.choice(num_boxes, max(3, num_boxes // 1000), replace=False)
    for j, k in enumerate(broken):
        boxes[k] = ([np.nan, 1, 5, 5], [1, 1, 0, 5], [1e4, 1e4, 5, 5])[j % 3]
    anns = [
        {
            "id": k + 1,
            "image_id": int(owner[k]) + 1,
            "category_id": int(k % 80) + 1,
            "bbox": boxes[k].tolist(),
            "area": float(boxes[k, 2] * boxes[k, 3]),
            "iscrowd": 0,
        }
        for k in range(num_boxes)
    ]
    cats = [{"id": c + 1, "name": f"class{c + 1}", "supercategory": "x"} for c in range(80)]
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(ann_file), str(image_dir)


def main(argv: list[str] | None = None) -> int:
    """Build the case, check once (asserting the counts), then time the three variants."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--boxes", type=int, default=36781)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args(argv)
    from pycocotools.coco import COCO

    with tempfile.TemporaryDirectory(prefix="bench_dataset_check_") as tmp:
        t0 = time.perf_counter()
        ann_file, image_dir = write_case(Path(tmp), args.images, args.boxes)
        written = time.perf_counter() - t0
        report = check_coco_dataset(ann_file, image_dir, use_cache=False)
        assert report.num_images == args.images and report.num_annotations == args.boxes
        assert report.num_dropped == max(3, args.boxes // 1000), report.dropped

        def peer() -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                COCO(ann_file)

        times = ab_time(
            {
                "check": lambda: check_coco_dataset(ann_file, image_dir, use_cache=False),
                "check --no-images": lambda: check_coco_dataset(
                    ann_file, image_dir, check_images=False, use_cache=False
                ),
                "pycocotools COCO()": peer,
            },
            repeats=args.repeats,
            warmup=args.warmup,
            device="cpu",
        )
        json_mb = os.path.getsize(ann_file) / 1e6
    peer_s = times["pycocotools COCO()"]
    print(
        f"case: {args.images} images ({len(_SIZES)} sizes, half JPEG half PNG), {args.boxes} "
        f"boxes ({report.num_dropped} broken: {report.dropped}), json {json_mb:.1f} MB; "
        f"written in {written:.1f} s; median of {args.repeats}, files in the page cache"
    )
    print("| variant | median s | vs pycocotools load |")
    print("| --- | --- | --- |")
    for name, sec in times.items():
        print(f"| {name} | {sec:.3f} | {sec / peer_s:.2f}x |")
    if args.json:
        print(json.dumps({"times_s": times, "json_mb": json_mb, "dropped": report.dropped}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
