# Learning-rate multipliers of the recipes, as Detectron2's build_lr_scheduler makes them from the
# YAML keys SOLVER.LR_SCHEDULER_NAME / MAX_ITER / STEPS / GAMMA / WARMUP_ITERS / WARMUP_FACTOR.
# The warm-up is a fraction of train.max_iter: keep it in step when overriding max_iter.
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import CosineParamScheduler, MultiStepParamScheduler


def warmup_cosine(max_iter, warmup_iters, warmup_factor):
    """WarmupCosineLR: linear warm-up from warmup_factor x lr, then cosine decay to 0."""
    return L(WarmupParamScheduler)(
        scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
        warmup_length=min(warmup_iters / max_iter, 1.0),
        warmup_factor=warmup_factor,
        warmup_method="linear",
    )


def warmup_multistep(max_iter, steps, warmup_iters, warmup_factor, gamma=0.1):
    """WarmupMultiStepLR: linear warm-up, then lr x gamma at each of `steps`."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[gamma**k for k in range(len(steps) + 1)],
            milestones=list(steps),
            num_updates=max_iter,
        ),
        warmup_length=min(warmup_iters / max_iter, 1.0),
        warmup_factor=warmup_factor,
        warmup_method="linear",
    )
