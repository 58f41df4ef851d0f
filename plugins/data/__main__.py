"""Command line: generate the Shapes dataset, or check a COCO dataset before training.

Usage::

    python -m plugins.data [generate] [--root DIR] [--json]
    python -m plugins.data check ANN.json IMAGE_DIR [--num-classes N] [--json]
        [--no-images] [--decode] [--allow-no-annotations]

``check`` exits with status 0 when the dataset can be trained on (one warning line on stderr
when boxes were dropped), and 1 with ``plugins.data check: error: ...`` when it cannot.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from plugins.data.check import DatasetCheckError, check_coco_dataset, check_num_classes
from plugins.data.shapes import default_shapes_root, ensure_shapes_dataset

_PROG = "python -m plugins.data"


def generate(argv: list[str]) -> int:
    """Generate the dataset under ``--root`` (default: the cache folder) and print its paths."""
    parser = argparse.ArgumentParser(
        prog=f"{_PROG} [generate]",
        description="Generate the synthetic Shapes COCO dataset (once) and print its paths.",
    )
    parser.add_argument(
        "--root",
        default=None,
        help=f"dataset directory (default: {default_shapes_root()})",
    )
    parser.add_argument("--json", action="store_true", help="print the paths as one JSON object")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    paths = ensure_shapes_dataset(args.root)
    fields = dataclasses.asdict(paths)
    if args.json:
        print(json.dumps(fields))
    else:
        for name, value in fields.items():
            print(f"{name}: {value}")
    print(f"ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


def check(argv: list[str]) -> int:
    """Check a COCO json and its image folder; see :mod:`plugins.data.check`."""
    parser = argparse.ArgumentParser(
        prog=f"{_PROG} check",
        description="Check a COCO detection dataset (json, ids, categories, images, boxes).",
    )
    parser.add_argument("ann_file", help="COCO annotation json")
    parser.add_argument("image_dir", help="folder the images' file_name is relative to")
    parser.add_argument(
        "--num-classes", type=int, default=None, help="the model's class count to compare"
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--no-images", action="store_true", help="do not open the image files")
    parser.add_argument(
        "--decode", action="store_true", help="decode every image fully (slow; finds truncation)"
    )
    parser.add_argument(
        "--allow-no-annotations",
        action="store_true",
        help="accept a file without boxes (inference / test sets)",
    )
    args = parser.parse_args(argv)
    try:
        report = check_coco_dataset(
            args.ann_file,
            args.image_dir,
            require_annotations=not args.allow_no_annotations,
            check_images=not args.no_images,
            decode_images=args.decode,
            use_cache=False,
        )
        if args.num_classes is not None:
            check_num_classes(report, args.num_classes, "--num-classes")
    except DatasetCheckError as e:
        if args.json:
            print(json.dumps({"ok": False, "error": str(e)}))
        print(f"{_PROG} check: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"ok": True, **report.to_dict()}))
    else:
        print(
            f"{args.ann_file}: ok: {report.num_images} images, {report.num_valid_boxes} valid "
            f"boxes, {len(report.categories)} categories (checked in {report.seconds:.2f} s)"
        )
    if report.summary():
        print(f"warning: {report.summary()}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Dispatch to ``generate`` (also the default, for the original command line) or ``check``.

    Args:
        argv: Command-line arguments; default ``None`` reads ``sys.argv``.

    Returns:
        Process exit status.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "check":
        return check(argv[1:])
    if argv and argv[0] == "generate":
        return generate(argv[1:])
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    return generate(argv)


if __name__ == "__main__":
    raise SystemExit(main())
