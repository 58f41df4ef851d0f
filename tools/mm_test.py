"""Evaluate a checkpoint with MMDetection 3.x and the plugins' components.

Same command line as mmdet's ``tools/test.py``::

    python tools/mm_test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

The metrics (e.g. ``coco/bbox_mAP``, ``coco/bbox_mAP_50``) are logged and written under the work
directory; ``--out`` also dumps the raw predictions (mmdet's ``DumpDetResults``). Exits with
status 2 and a message naming the problem for an unknown model type, a missing data root or
annotation file, and a missing or corrupt checkpoint.
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))  # mm_train's shared checks
from mm_train import (  # noqa: E402  (also puts the repository root on sys.path)
    ConfigProblem,
    check_checkpoint,
    check_data,
    check_model_types,
    load_config,
    run_tool,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of mmdet's ``tools/test.py`` (without the visualisation options)."""
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(description="Test a detector (MMDetection + plugins)")
    parser.add_argument("config", help="test config file path")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--work-dir", help="directory for the evaluation logs and metrics")
    parser.add_argument("--out", help="dump the predictions to this pickle file (.pkl/.pickle)")
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        help="override config entries, KEY=VALUE",
    )
    parser.add_argument(
        "--launcher",
        choices=["none", "pytorch", "slurm", "mpi"],
        default="none",
        help="job launcher",
    )
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    return args


def build_test_config(args: argparse.Namespace):
    """Load the config and apply the command line.

    Raises:
        ConfigProblem: bad ``--out`` suffix or a problem found by the shared checks.
    """
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if args.out is not None:
        if not args.out.endswith((".pkl", ".pickle")):
            raise ConfigProblem(f"--out: expected a .pkl or .pickle file, got {args.out!r}")
        evaluators = cfg.test_evaluator
        evaluators = [evaluators] if isinstance(evaluators, dict) else list(evaluators)
        evaluators.append(dict(type="DumpDetResults", out_file_path=args.out))
        cfg.test_evaluator = evaluators
    check_model_types(cfg, args.config, mode="test")
    check_data(cfg, args.config, ("test_dataloader",), ("test_evaluator",))
    check_checkpoint(args.checkpoint)
    return cfg


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    run_tool("mm_test", parse_args(argv), build_test_config, "test")


if __name__ == "__main__":
    main()
