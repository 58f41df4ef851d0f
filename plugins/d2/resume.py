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

The run's seed is ``SEED`` when it is >= 0, else a random seed shared by the processes; it is
saved, so a resumed run continues the same sequence. Changing ``SOLVER.IMS_PER_BATCH``, the
number of processes or the dataset between the two runs makes the data differ (a warning says so).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import torch
from detectron2.data import DatasetFromList, build_detection_train_loader
from detectron2.engine import DefaultTrainer, HookBase
from detectron2.engine.train_loop import TrainerBase
from detectron2.utils import comm
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from plugins.resume import STEP, BatchPlan, derive_seed, isolated_rng, seed_all

__all__ = [
    "ExactResumeHook",
    "ResumableTrainLoader",
    "build_resumable_train_loader",
    "checkpoint_training_state",
    "install_exact_resume",
    "restart_train_loader",
    "run_seed",
]

logger = logging.getLogger(__name__)


def run_seed(cfg) -> int:
    """``cfg.SEED`` when >= 0, else a random seed that every process of the run shares."""
    return int(cfg.SEED) if cfg.SEED >= 0 else int(comm.shared_random_seed())


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
    world_size = comm.get_world_size()
    if args["total_batch_size"] % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH: {args['total_batch_size']} is not divisible by the "
            f"{world_size} processes"
        )
    return ResumableTrainLoader(
        args["dataset"],
        args["mapper"],
        args["total_batch_size"] // world_size,
        seed=run_seed(cfg),
        aspect_ratio_grouping=args["aspect_ratio_grouping"],
        num_workers=args["num_workers"],
    )


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


def checkpoint_training_state(trainer: DefaultTrainer) -> None:
    """Save the optimizer (and AMP's grad scaler) in the checkpoints, as resuming needs.

    Detectron2 0.6's ``DefaultTrainer`` checkpoints neither (later versions save them in the
    trainer's state); without them a resumed AdamW restarts its moments and the first resumed
    iteration runs with the initial learning rate.
    """
    if type(trainer).state_dict is not TrainerBase.state_dict:
        return  # this Detectron2 saves the inner trainer's state (optimizer, grad scaler)
    checkpointer = trainer.checkpointer
    if "optimizer" not in checkpointer.checkpointables:
        checkpointer.add_checkpointable("optimizer", trainer.optimizer)
    scaler = getattr(trainer._trainer, "grad_scaler", None)
    if scaler is not None and "grad_scaler" not in checkpointer.checkpointables:
        checkpointer.add_checkpointable("grad_scaler", scaler)


def restart_train_loader(trainer: DefaultTrainer) -> None:
    """Make the trainer's next batch the one of ``trainer.start_iter`` (call after loading)."""
    loader = trainer.data_loader
    if not isinstance(loader, ResumableTrainLoader):
        logger.warning(
            "the train loader (%s) cannot start at iteration %d: it restarts from its first batch",
            type(loader).__name__,
            trainer.start_iter,
        )
        return
    loader.start_iter = trainer.start_iter
    inner = trainer._trainer
    if hasattr(inner, "_data_loader_iter_obj"):  # Detectron2 after v0.6: created lazily
        inner._data_loader_iter_obj = None
    else:
        inner._data_loader_iter = iter(loader)


def install_exact_resume(trainer: DefaultTrainer, hooks: list[HookBase]) -> ExactResumeHook:
    """Put an :class:`ExactResumeHook` first in ``hooks`` and checkpoint the training state.

    Call it from ``build_hooks`` (the checkpointer exists by then).
    """
    loader = trainer.data_loader
    if isinstance(loader, ResumableTrainLoader):
        hook = ExactResumeHook(loader.seed, loader)
    else:
        hook = ExactResumeHook(run_seed(trainer.cfg))
    checkpoint_training_state(trainer)
    hooks.insert(0, hook)
    return hook
