# Training options read by tools/lazyconfig_train_net.py (Detectron2's configs/common/train.py
# plus the plugins' EMA, divergence guard and end-of-training publish). Each recipe sets what its
# YAML twin sets.
train = dict(
    output_dir="./output",
    # weights to start from (MODEL.WEIGHTS); "" = random initialisation
    init_checkpoint="",
    max_iter=90000,
    amp=dict(enabled=False),  # mixed precision (AMPTrainer; needs CUDA)
    ddp=dict(  # DistributedDataParallel options
        broadcast_buffers=False,
        find_unused_parameters=False,
        fp16_compression=False,
    ),
    # PeriodicCheckpointer: every `period` iterations; max_to_keep None keeps all (as the YAMLs)
    checkpointer=dict(period=5000, max_to_keep=None),
    eval_period=0,  # 0: evaluate once, at the end
    log_period=20,
    device="cuda",
    seed=-1,  # < 0: random
    # exponential moving average of the weights, used for evaluation (MODEL.EMA)
    ema=dict(enabled=False, decay=0.9998, warmup=True),
    # stop a diverging run with one error line, never checkpoint bad weights
    # (SOLVER.DIVERGENCE_GUARD, plugins/d2/config.py): a NaN / inf loss always stops the run; a
    # finite loss above factor x the median of the last `window` losses does after `warmup`
    # iterations (factor 0: off); a checkpoint with a weight |x| > max_weight is refused (0: only
    # non-finite weights)
    divergence_guard=dict(enabled=True, factor=1000.0, warmup=20, window=100, max_weight=1e8),
    # model-zoo file <output_dir>/<name>-<sha256[:8]>.pth at the end of training (PUBLISH)
    publish=dict(enabled=True, name="model_final"),
)
