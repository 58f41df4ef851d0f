"""Command line: generate the Shapes dataset (once) and print where it lives.

Usage::

    python -m plugins.data [--root DIR] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

from plugins.data.shapes import default_shapes_root, ensure_shapes_dataset


def main(argv: list[str] | None = None) -> int:
    """Generate the dataset under ``--root`` (default: the cache folder) and print its paths.

    Args:
        argv: Command-line arguments; default ``None`` reads ``sys.argv``.

    Returns:
        Process exit status (0).
    """
    parser = argparse.ArgumentParser(
        prog="python -m plugins.data",
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


if __name__ == "__main__":
    raise SystemExit(main())
