"""Multi-process training on CPU with Detectron2's launcher, where the installed one can.

Detectron2's ``launch()`` (``detectron2.engine.launch``) spawns one process per device, joins
them in a ``torch.distributed`` process group and runs ``main_func`` in each. Since January
2023 (after v0.6) it picks the gloo backend when the machine has no GPU; v0.6, the copy on the
package registry, asserts CUDA and hard-codes NCCL. :func:`launch` here is a drop-in:

- world size 1, a GPU present, or a Detectron2 whose launcher supports CPU: Detectron2's own
  ``launch()`` runs, unchanged;
- an NCCL-only launcher (v0.6) on a machine without GPU: the same steps with the gloo backend
  (spawn the workers, ``init_process_group``, the per-machine local process group that
  ``comm.get_local_rank()`` reads, a barrier, then ``main_func``).

:func:`cpu_launch_problem` states why a multi-process CPU run cannot start (a visible GPU makes
Detectron2's launcher pick NCCL, which cannot reduce CPU tensors). The model's DDP wrapper on CPU
is fixed in :class:`plugins.d2.engine.Trainer`.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

# the module: ``detectron2.engine`` re-exports its function under the same name
d2_launch_module = importlib.import_module("detectron2.engine.launch")

__all__ = ["launch", "launcher_supports_cpu", "cpu_launch_problem"]

logger = logging.getLogger(__name__)

_DEFAULT_TIMEOUT = getattr(d2_launch_module, "DEFAULT_TIMEOUT", timedelta(minutes=30))


def launcher_supports_cpu() -> bool:
    """Whether the installed Detectron2's ``launch()`` starts gloo process groups without a GPU.

    Read from its worker's source (v0.6: ``backend="NCCL"`` only; current: NCCL or GLOO).
    """
    try:
        source = inspect.getsource(d2_launch_module._distributed_worker)
    except (AttributeError, OSError, TypeError):
        return False
    return "gloo" in source.lower()


def cpu_launch_problem(num_processes: int, device: str) -> str | None:
    """Why ``num_processes`` CPU training processes cannot start here, or ``None`` if they can.

    Args:
        num_processes: processes per machine (``--num-gpus``).
        device: ``MODEL.DEVICE``.
    """
    if num_processes <= 1 or device != "cpu" or not torch.cuda.is_available():
        return None
    return (
        f"--num-gpus {num_processes} with MODEL.DEVICE cpu: a GPU is visible, so Detectron2's "
        "launch() joins the processes with NCCL, which cannot reduce CPU tensors; hide the GPUs "
        "(CUDA_VISIBLE_DEVICES=) to train on the CPU with gloo, or set MODEL.DEVICE cuda"
    )


def launch(
    main_func,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = None,
    args: tuple = (),
    timeout: timedelta = _DEFAULT_TIMEOUT,
) -> None:
    """Detectron2's ``launch()``, with gloo workers on CPU where the installed one is NCCL-only.

    Args:
        main_func: called as ``main_func(*args)`` in every process.
        num_gpus_per_machine: processes per machine (GPUs, or CPU workers without a GPU).
        num_machines: machines in the job. Default 1.
        machine_rank: rank of this machine. Default 0.
        dist_url: rendezvous URL, e.g. ``"tcp://127.0.0.1:29500"``, or ``"auto"`` (a free local
            port; one machine only). Default ``None``.
        args: arguments of ``main_func``. Default ``()``.
        timeout: process-group timeout. Default Detectron2's (30 minutes).
    """
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1 or torch.cuda.is_available() or launcher_supports_cpu():
        d2_launch_module.launch(
            main_func,
            num_gpus_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=args,
            timeout=timeout,
        )
        return
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url='auto' needs num_machines == 1")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    logger.info(
        "Detectron2's launch() is NCCL-only: starting %d gloo worker(s) on this CPU machine",
        num_gpus_per_machine,
    )
    mp.start_processes(
        _gloo_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout),
        daemon=False,
        start_method="spawn",
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _gloo_worker(
    local_rank: int,
    main_func,
    world_size: int,
    num_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
) -> None:
    dist.init_process_group(
        backend="gloo",
        init_method=dist_url,
        world_size=world_size,
        rank=machine_rank * num_per_machine + local_rank,
        timeout=timeout,
    )
    _create_local_process_group(num_per_machine, machine_rank)
    comm.synchronize()
    main_func(*args)


def _create_local_process_group(num_per_machine: int, machine_rank: int) -> None:
    """The group of this machine's ranks, which ``comm.get_local_rank()`` reads."""
    if hasattr(comm, "create_local_process_group"):  # Detectron2 after 2023-01
        comm.create_local_process_group(num_per_machine)
        return
    # Detectron2 v0.6 keeps the group in a module variable; every rank creates every group
    for i in range(dist.get_world_size() // num_per_machine):
        group = dist.new_group(list(range(i * num_per_machine, (i + 1) * num_per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
