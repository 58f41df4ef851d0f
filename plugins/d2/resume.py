"""Exact resume for the Detectron2 trainer: a train loader that can start at any iteration.

Detectron2's ``DefaultTrainer`` resumes the iteration count, but its infinite
``TrainingSampler`` and ``AspectRatioGroupedDataset`` start again from the first batch, the
augmentations draw from generators that are not restored, and v0.6 does not even save the
optimizer state, so a resumed run ends with different weights. Here (see :mod:`plugins.resume`):

- :class:`ResumableTrainLoader`: batch ``k`` of this process is global batch
  ``k * world_size + rank`` of a :class:`~plugins.resume.BatchPlan` (shuffled passes,
  Detectron2's landscape / portrait grouping when ``DATALOADER.ASPECT_RATIO_GROUPING``), and
  each image is augmented under its own seed, so batch ``k`` is the same whether the loader
  starts at 0 or at ``k``, with any ``DATALOADER.NUM_WORKERS``;
- :class:`ExactResumeHook`: reseeds Python / numpy / torch before every iteration (the model's
  own randomness), saves the seed and the data layout in the checkpoint (``trainer.hooks``) and
  restores the seed on resume;
- :func:`checkpoint_training_state`: adds the optimizer (and AMP's grad scaler) to the
  checkpoint where the installed Detectron2 does not save them;
- :func:`restart_train_loader`: after ``resume_or_load``, the loader continues at
  ``start_iter``.

The same pieces serve ``tools/lazyconfig_train_net.py``: :func:`build_lazy_train_loader` builds
the loader from a LazyConfig's ``dataloader.train`` node, and :func:`install_exact_resume` /
:func:`restart_train_loader` take the seed, checkpointer and start iteration explicitly for its
plain ``SimpleTrainer``.

The run's seed is ``SEED`` (``train.seed``) when it is >= 0, else a random seed shared by the
processes; it is saved, so a resumed run continues the same sequence. Changing
``SOLVER.IMS_PER_BATCH``, the number of processes or the dataset between the two runs makes the
data differ (a warning says so).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Sequence

import torch
from detectron2.config import instantiate
from detectron2.data import DatasetFromList, build_detection_train_loader
from detectron2.data.samplers import TrainingSampler
from detectron2.engine import HookBase
from detectron2.engine.train_loop import TrainerBase
from detectron2.utils import comm
from detectron2.utils.registry import locate
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from plugins.resume import STEP, BatchPlan, derive_seed, isolated_rng, seed_all

__all__ = [
    "ExactResumeHook",
    "ResumableTrainLoader",
    "build_lazy_train_loader",
    "build_resumable_train_loader",
    "checkpoint_training_state",
    "install_exact_resume",
    "resolve_seed",
    "restart_train_loader",
    "run_seed",
]

logger = logging.getLogger(__name__)


def resolve_seed(seed: int) -> int:
    """``seed`` when >= 0, else a random seed that every process of the run shares (every
    process must call it)."""
    return int(seed) if seed >= 0 else int(comm.shared_random_seed())


def run_seed(cfg) -> int:
    """``cfg.SEED`` when >= 0, else a random seed that every process of the run shares."""
    return resolve_seed(cfg.SEED)


def _identity(batch):
    return batch


class _PlannedBatches(IterableDataset):
    """Mapped batches of a :class:`BatchPlan` from iteration ``start`` on (in workers, each
    worker takes every ``num_workers``-th batch; the DataLoader interleaves them in order)."""

    def __init__(self, dataset, mapper: Callable, plan: BatchPlan, start: int) -> None:
        self.dataset = dataset
        self.mapper = mapper
        self.plan = plan
        self.start = start
        self.rank = comm.get_rank()
        self.world_size = comm.get_world_size()

    def __iter__(self) -> Iterator[list]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        k = self.start + worker
        while True:
            yield self.load(k)
            k += workers

    def load(self, k: int) -> list:
        """The mapped batch of iteration ``k`` of this process."""
        out = []
        for seed, index in self.plan.batch(k * self.world_size + self.rank):
            with isolated_rng(seed):
                mapped = self.mapper(self.dataset[index])
            if mapped is not None:
                out.append(mapped)
        if not out:
            raise RuntimeError(f"the mapper rejected every image of the batch of iteration {k}")
        return out


class ResumableTrainLoader:
    """An endless iterable of training batches (lists of mapped dicts) that can start at any
    iteration: set :attr:`start_iter` (and :attr:`seed`) before iterating.

    Args:
        dataset: the dataset dicts (a list) or a map-style dataset of them.
        mapper: e.g. ``DatasetMapper(cfg, is_train=True)``; may return ``None`` to skip an
            image.
        batch_size: images per batch of this process.
        seed: the run's seed.
        aspect_ratio_grouping: never mix landscape and portrait images in a batch (needs
            ``"width"`` and ``"height"`` in the dataset dicts).
        num_workers: data-loading worker processes.
        shuffle: shuffle each pass over the data.
    """

    def __init__(
        self,
        dataset: Sequence[dict],
        mapper: Callable,
        batch_size: int,
        seed: int,
        aspect_ratio_grouping: bool = True,
        num_workers: int = 0,
        shuffle: bool = True,
    ) -> None:
        if aspect_ratio_grouping:
            landscape = [i for i, d in enumerate(dataset) if d["width"] > d["height"]]
            portrait = [i for i, d in enumerate(dataset) if d["width"] <= d["height"]]
            self.groups = [landscape, portrait]
        else:
            self.groups = [list(range(len(dataset)))]
        self.dataset = (
            DatasetFromList(dataset, copy=False) if isinstance(dataset, list) else dataset
        )
        self.mapper = mapper
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.seed = seed
        self.start_iter = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def plan(self) -> BatchPlan:
        """The batch plan for the current :attr:`seed`."""
        return BatchPlan(self.groups, self.batch_size, self.seed, self.shuffle)

    def __iter__(self) -> Iterator[list]:
        # a generator: nothing (no worker process) starts before the first batch is asked for,
        # so Detectron2 0.6's eager iter() at construction costs nothing when resuming
        batches = _PlannedBatches(self.dataset, self.mapper, self.plan(), self.start_iter)
        loader = DataLoader(
            batches,
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
            # the worker base seed comes from this generator, not from the global one
            generator=torch.Generator().manual_seed(self.seed % 2**63),
        )
        yield from loader


def build_resumable_train_loader(cfg, mapper: Callable, dataset=None) -> ResumableTrainLoader:
    """Detectron2's ``build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)``, as a
    :class:`ResumableTrainLoader`.

    The dataset dicts, batch size, grouping and workers come from the config as Detectron2
    reads them. Samplers other than ``TrainingSampler`` (``DATALOADER.SAMPLER_TRAIN``) keep
    Detectron2's own loader, which cannot resume exactly (a warning says so).
    """
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        logger.warning(
            "DATALOADER.SAMPLER_TRAIN %s: Detectron2's own loader, a resumed run will not see the "
            "same batches (exact resume supports TrainingSampler)",
            cfg.DATALOADER.SAMPLER_TRAIN,
        )
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dataset)
    args = build_detection_train_loader.from_config(cfg, mapper=mapper, dataset=dataset)
    return _per_process_loader(args, run_seed(cfg), "SOLVER.IMS_PER_BATCH")


def _per_process_loader(args: dict, seed: int, batch_key: str, shuffle: bool = True):
    """A :class:`ResumableTrainLoader` of ``build_detection_train_loader``'s arguments
    (``dataset``, ``mapper``, ``total_batch_size``, ``aspect_ratio_grouping``,
    ``num_workers``); ``batch_key`` names the total batch size in errors."""
    world_size = comm.get_world_size()
    if args["total_batch_size"] % world_size:
        raise ValueError(
            f"{batch_key}: {args['total_batch_size']} is not divisible by the "
            f"{world_size} processes"
        )
    return ResumableTrainLoader(
        args["dataset"],
        args["mapper"],
        args["total_batch_size"] // world_size,
        seed=seed,
        aspect_ratio_grouping=args["aspect_ratio_grouping"],
        num_workers=args["num_workers"],
        shuffle=shuffle,
    )


def _target(node) -> object:
    """The callable of a LazyCall node (``_target_`` may be an object or a dotted name)."""
    target = node.get("_target_") if hasattr(node, "get") else None
    return locate(target) if isinstance(target, str) else target


def build_lazy_train_loader(node, seed: int, key: str = "dataloader.train"):
    """A LazyConfig's ``dataloader.train`` node as a :class:`ResumableTrainLoader`.

    The node must call Detectron2's ``build_detection_train_loader`` with the default sampler
    or a ``TrainingSampler`` (whose ``shuffle`` is kept) and no ``collate_fn``; its ``dataset``
    and ``mapper`` are instantiated separately; ``total_batch_size``, ``num_workers`` and
    ``aspect_ratio_grouping`` are read from the node (Detectron2's defaults when absent).
    Anything else is ``instantiate(node)``, Detectron2's own loader, which cannot resume
    exactly (a warning says so).

    Args:
        node: the ``dataloader.train`` LazyCall node.
        seed: the run's seed (:func:`resolve_seed`).
        key: the node's name, for messages.

    Raises:
        ValueError: no ``total_batch_size``, or one not divisible by the number of processes.
    """
    sampler = node.get("sampler")
    problem = None
    if _target(node) is not build_detection_train_loader:
        problem = f"{key} is not build_detection_train_loader"
    elif sampler is not None and _target(sampler) is not TrainingSampler:
        problem = f"{key}.sampler is not a TrainingSampler"
    elif node.get("collate_fn") is not None:
        problem = f"{key}.collate_fn is set"
    if problem is None:
        dataset = instantiate(node.dataset)
        if isinstance(dataset, IterableDataset):
            problem = f"{key}.dataset is an iterable dataset"
    if problem is not None:
        logger.warning(
            "%s: Detectron2's own loader, a resumed run will not see the same batches (exact "
            "resume supports build_detection_train_loader with a TrainingSampler)",
            problem,
        )
        return instantiate(node)
    if node.get("total_batch_size") is None:
        raise ValueError(f"{key}.total_batch_size: missing (the images per iteration)")
    defaults = inspect.signature(build_detection_train_loader).parameters
    args = {
        name: node.get(name, defaults[name].default)
        for name in ("total_batch_size", "aspect_ratio_grouping", "num_workers")
    }
    mapper = instantiate(node.get("mapper"))
    args.update(dataset=dataset, mapper=_identity if mapper is None else mapper)
    shuffle = True if sampler is None else bool(sampler.get("shuffle", True))
    return _per_process_loader(args, seed, f"{key}.total_batch_size", shuffle)


class ExactResumeHook(HookBase):
    """Reseed before every iteration; save and restore the run's seed and data layout.

    Place it first: it reseeds in ``before_step``. Its ``state_dict`` goes into the
    checkpoint with the trainer's (``{"trainer": {"hooks": {"ExactResumeHook": ...}}}``).

    Args:
        seed: the run's seed (the loader's, when it is a :class:`ResumableTrainLoader`).
        loader: the training loader, updated on resume.
    """

    def __init__(self, seed: int, loader: ResumableTrainLoader | None = None) -> None:
        self.seed = int(seed)
        self.loader = loader

    def before_step(self) -> None:
        seed_all(derive_seed(self.seed, STEP, comm.get_rank(), self.trainer.iter))

    def _layout(self) -> dict:
        if self.loader is None:
            return {}
        return {
            "batch_size": self.loader.batch_size,
            "world_size": comm.get_world_size(),
            "num_images": len(self.loader),
        }

    def state_dict(self) -> dict:
        """``{"seed", "batch_size", "world_size", "num_images"}`` (plain ints)."""
        return {"seed": self.seed, **self._layout()}

    def load_state_dict(self, state: dict) -> None:
        """Take the saved seed; warn when the data layout changed since the checkpoint."""
        self.seed = int(state["seed"])
        if self.loader is not None:
            self.loader.seed = self.seed
        changed = {
            k: (state[k], v) for k, v in self._layout().items() if k in state and state[k] != v
        }
        if changed:
            logger.warning(
                "resuming with a different data layout (saved, now): %s; the batches after the "
                "checkpoint differ from those of an uninterrupted run",
                changed,
            )


def checkpoint_training_state(trainer: TrainerBase, checkpointer=None) -> None:
    """Save the optimizer (and AMP's grad scaler) in the checkpoints, as resuming needs.

    Detectron2 0.6's ``DefaultTrainer`` checkpoints neither (later versions save them in the
    trainer's state); without them a resumed AdamW restarts its moments and the first resumed
    iteration runs with the initial learning rate. A ``SimpleTrainer`` / ``AMPTrainer``
    (checkpointed as ``trainer=``) saves both in its own state already: nothing to add.

    Args:
        trainer: a ``DefaultTrainer``, or a ``SimpleTrainer`` with its checkpointer.
        checkpointer: default ``trainer.checkpointer``.
    """
    if type(trainer).state_dict is not TrainerBase.state_dict:
        return  # this trainer saves the optimizer and grad scaler in its own state
    checkpointer = trainer.checkpointer if checkpointer is None else checkpointer
    inner = getattr(trainer, "_trainer", trainer)
    if "optimizer" not in checkpointer.checkpointables:
        checkpointer.add_checkpointable("optimizer", inner.optimizer)
    scaler = getattr(inner, "grad_scaler", None)
    if scaler is not None and "grad_scaler" not in checkpointer.checkpointables:
        checkpointer.add_checkpointable("grad_scaler", scaler)


def restart_train_loader(trainer: TrainerBase, start_iter: int | None = None) -> None:
    """Make the trainer's next batch the one of ``start_iter`` (call after loading).

    Args:
        trainer: a ``DefaultTrainer`` or a ``SimpleTrainer`` / ``AMPTrainer``.
        start_iter: default ``trainer.start_iter`` (a ``DefaultTrainer``'s, after
            ``resume_or_load``).
    """
    start_iter = trainer.start_iter if start_iter is None else start_iter
    loader = trainer.data_loader
    if not isinstance(loader, ResumableTrainLoader):
        logger.warning(
            "the train loader (%s) cannot start at iteration %d: it restarts from its first batch",
            type(loader).__name__,
            start_iter,
        )
        return
    loader.start_iter = start_iter
    inner = getattr(trainer, "_trainer", trainer)
    if hasattr(inner, "_data_loader_iter_obj"):  # Detectron2 after v0.6: created lazily
        inner._data_loader_iter_obj = None
    else:
        inner._data_loader_iter = iter(loader)


def install_exact_resume(
    trainer: TrainerBase, hooks: list[HookBase], seed: int | None = None, checkpointer=None
) -> ExactResumeHook:
    """Put an :class:`ExactResumeHook` first in ``hooks`` and checkpoint the training state.

    Call it from ``build_hooks`` (the checkpointer exists by then), or, for a
    ``SimpleTrainer``, before registering ``hooks``.

    Args:
        trainer: a ``DefaultTrainer``, or a ``SimpleTrainer`` with ``seed`` and
            ``checkpointer``.
        hooks: the trainer's hooks, changed in place.
        seed: the run's seed when the loader is not a :class:`ResumableTrainLoader` (which
            has its own); default :func:`run_seed` of ``trainer.cfg``.
        checkpointer: default ``trainer.checkpointer``.
    """
    loader = trainer.data_loader
    if isinstance(loader, ResumableTrainLoader):
        hook = ExactResumeHook(loader.seed, loader)
    else:
        hook = ExactResumeHook(run_seed(trainer.cfg) if seed is None else seed)
    checkpoint_training_state(trainer, checkpointer)
    hooks.insert(0, hook)
    return hook
