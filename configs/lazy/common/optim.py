# Optimizers of the recipes, as plugins.d2.engine.Trainer.build_optimizer makes them from the
# YAML keys SOLVER.OPTIMIZER / BASE_LR / WEIGHT_DECAY / WEIGHT_DECAY_NORM (0: no decay on norm
# layers) / CLIP_GRADIENTS. `params.model` is set by tools/lazyconfig_train_net.py.
from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

from plugins.d2.lazy import optimizer_with_clipping


def optimizer_config(name, lr, weight_decay, clip_norm=None, clip_type="norm", **kwargs):
    """`name` ("SGD", "AdamW", ...) with gradient-norm clipping at `clip_norm`: per parameter
    (`clip_type="norm"`, Detectron2's) or of all gradients together ("full_model")."""
    return L(optimizer_with_clipping)(
        optimizer=name,
        params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
        lr=lr,
        weight_decay=weight_decay,
        clip_gradients=dict(
            enabled=clip_norm is not None,
            clip_type=clip_type,
            clip_value=float(clip_norm or 0.0),
            norm_type=2.0,
        ),
        **kwargs,
    )
