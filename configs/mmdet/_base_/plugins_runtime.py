# What every config of this package adds to MMDetection's runtime: the plugins' registrations
# and their training hooks. Listed in `_base_` next to mmdet's own bases; a config that adds a
# hook of its own writes `custom_hooks = [dict(type=...), *_base_.custom_hooks]`.
custom_imports = dict(imports=["plugins.mm"], allow_failed_imports=False)

custom_hooks = [
    # stop on a diverging loss, never write / rotate in a checkpoint with bad weights, and
    # resume bit-exactly after a kill (plugins.mm.hooks)
    dict(type="PluginsDivergenceGuardHook"),
    dict(type="PluginsExactResumeHook"),
    # the model-zoo file <work_dir>/<config name>-<sha256[:8]>.pth after training (the evaluated
    # weights: the EMA ones where an EMAHook runs; plugins.mm.publish)
    dict(type="PluginsPublishHook"),
]
