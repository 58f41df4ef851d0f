"""Does a checkpoint fit a model? Name-and-shape matching, and what a file seems to hold.

Both framework adapters call :func:`check_weights_match` before (or right after) loading
weights into a model. A file whose tensors cover less than half of the model's tensors *and*
of which less than half fits the model holds another model: that is an error naming what the
file seems to hold and the converter to use. Deliberate partial loads stay possible: a
backbone-only file (all of its tensors fit, part of the model) or a new number of classes (all
but the classifier fit) load with one summary line.

Pure dict code: no framework import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "WrongCheckpointError",
    "MatchReport",
    "describe_checkpoint",
    "match_weights",
    "check_weights_match",
]


class WrongCheckpointError(ValueError):
    """The checkpoint holds a different model than the config builds."""


@dataclass(frozen=True)
class MatchReport:
    """How a checkpoint's tensors fit a model's (names after the loader's renaming).

    Attributes:
        model_total: tensors in the model's state dict.
        file_total: tensors in the checkpoint's state dict.
        loaded: tensors present in both with equal shapes.
        wrong_shape: names present in both with different shapes.
        missing: model names absent from the file (shape mismatches not included).
        unused: file names absent from the model.
    """

    model_total: int
    file_total: int
    loaded: int
    wrong_shape: tuple[str, ...]
    missing: tuple[str, ...]
    unused: tuple[str, ...]

    @property
    def model_fraction(self) -> float:
        """Share of the model's tensors filled from the file."""
        return self.loaded / max(self.model_total, 1)

    @property
    def file_fraction(self) -> float:
        """Share of the file's tensors used by the model."""
        return self.loaded / max(self.file_total, 1)

    @property
    def is_wrong_model(self) -> bool:
        """Less than half of the model filled, and less than half of the file used."""
        return self.model_fraction < 0.5 and self.file_fraction < 0.5

    @property
    def is_complete(self) -> bool:
        """Every model tensor filled and every file tensor used."""
        return self.loaded == self.model_total == self.file_total

    def summary(self, path: str) -> str:
        """One line: what was and was not loaded from ``path``."""
        parts = [f"loaded {self.loaded}/{self.model_total} model tensors from {path}"]
        if self.wrong_shape:
            parts.append(f"{len(self.wrong_shape)} skipped for shape (e.g. {self.wrong_shape[0]})")
        if self.missing:
            parts.append(f"{len(self.missing)} not in the file (e.g. {self.missing[0]})")
        if self.unused:
            parts.append(f"{len(self.unused)} of the file unused (e.g. {self.unused[0]})")
        return "; ".join(parts)


def match_weights(
    model_shapes: Mapping[str, tuple[int, ...]], file_shapes: Mapping[str, tuple[int, ...]]
) -> MatchReport:
    """Compare a model's state-dict shapes with a checkpoint's, by name and shape.

    Args:
        model_shapes: name -> shape of the model's state dict.
        file_shapes: name -> shape of the checkpoint's state dict (after any renaming the
            loader applies, e.g. mmengine's ``module.`` prefix removal).

    Returns:
        The :class:`MatchReport`.
    """
    both = [k for k in model_shapes if k in file_shapes]
    wrong = tuple(k for k in both if tuple(model_shapes[k]) != tuple(file_shapes[k]))
    return MatchReport(
        model_total=len(model_shapes),
        file_total=len(file_shapes),
        loaded=len(both) - len(wrong),
        wrong_shape=wrong,
        missing=tuple(k for k in model_shapes if k not in file_shapes),
        unused=tuple(k for k in file_shapes if k not in model_shapes),
    )


# (what, framework, key prefixes that all must occur)
_SIGNATURES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("EfficientDet", "d2", ("backbone.body.", "backbone.fpn.", "head.class_net.")),
    ("EfficientDet", "mm", ("backbone.body.", "neck.fpn.", "bbox_head.class_net.")),
    ("CornerNet", "d2", ("backbone.body.", "head.net.")),
    ("CornerNet", "mm", ("backbone.body.", "bbox_head.net.")),
    ("CornerNet", "mmdet", ("backbone.hourglass_modules.", "bbox_head.tl_heat.")),
    ("EfficientDet", "effdet", ("backbone.conv_stem.", "fpn.cell.", "class_net.predict.")),
    ("EfficientDet", "core", ("backbone.", "fpn.", "class_net.", "box_net.")),
    ("RetinaNet", "d2", ("backbone.bottom_up.", "head.cls_subnet.")),
    ("RetinaNet", "mm", ("backbone.layer1.", "bbox_head.retina_cls.")),
    ("ResNet backbone", "torchvision", ("conv1.weight", "layer1.0.")),
)

_FRAMEWORK_NAMES = {
    "d2": "Detectron2 (plugins.d2)",
    "mm": "MMDetection (plugins.mm)",
    "mmdet": "MMDetection's own CornerHead/HourglassNet",
    "effdet": "effdet (efficientdet-pytorch / timm)",
    "core": "plugins.core (bare network)",
    "torchvision": "torchvision / ImageNet classification",
}


def describe_checkpoint(keys: Iterable[str]) -> tuple[str, str | None]:
    """Guess what a state dict holds from its key names.

    Args:
        keys: the checkpoint's state-dict names.

    Returns:
        ``(description, framework)``: e.g. ``("a CornerNet checkpoint of Detectron2
        (plugins.d2)", "d2")``; ``framework`` is ``None`` when nothing is recognised.
    """
    keys = list(keys)
    for what, framework, prefixes in _SIGNATURES:
        if all(any(k.startswith(p) for k in keys) for p in prefixes):
            article = "an" if what[0] in "AEIOU" else "a"
            return f"{article} {what} checkpoint of {_FRAMEWORK_NAMES[framework]}", framework
    sample = ", ".join(sorted(keys)[:3]) or "no tensors"
    return f"an unrecognised checkpoint ({len(keys)} tensors: {sample}, ...)", None


def _converter_hint(model_desc: str, file_framework: str | None, target: str) -> str:
    """Which command turns the file into weights for the model, if any does."""
    model_arch = model_desc.split(" checkpoint")[0].split(" ", 1)[-1]
    if file_framework in ("d2", "mm") and file_framework != target:
        return (
            f"Convert it first: python tools/convert_checkpoint.py FILE OUT.pth --to {target}"
            " (EfficientDet and CornerNet)"
        )
    if file_framework == "effdet":
        return (
            "Convert it first: python tools/convert_effdet.py --variant efficientdet_dN "
            f"--format {target} FILE OUT.pth"
        )
    if file_framework == "mmdet":
        return "Convert it with plugins.convert.mmdet_cornernet (mmdet's CornerNet layout -> ours)"
    return f"Use a config that builds that model, or weights of {model_arch or 'this model'}"


def check_weights_match(
    model_shapes: Mapping[str, tuple[int, ...]],
    file_shapes: Mapping[str, tuple[int, ...]],
    path: str,
    target: str,
    held_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> MatchReport:
    """Raise when a checkpoint holds another model; else return the report.

    Args:
        model_shapes: name -> shape of the model's state dict.
        file_shapes: name -> shape of the checkpoint's state dict, as the loader names them.
        path: the file (for the message).
        target: ``"d2"`` or ``"mm"``: the framework loading it (for the converter hint).
        held_shapes: the file's weights where the loader would not find them (e.g. a
            Detectron2 ``model`` dict read by mmengine); used to name what the file holds.
            Default ``None``: ``file_shapes``.

    Returns:
        The :class:`MatchReport` (callers print :meth:`MatchReport.summary` when it is not
        complete).

    Raises:
        WrongCheckpointError: less than half of the model's tensors fit and less than half
            of the file's tensors are used; the message names what the file seems to hold,
            what the model is, and the converter to use.
    """
    report = match_weights(model_shapes, file_shapes)
    if report.is_wrong_model:
        held, framework = describe_checkpoint(held_shapes or file_shapes)
        model_desc, _ = describe_checkpoint(model_shapes)
        raise WrongCheckpointError(
            f"{path} does not fit the model: only {report.loaded} of its {report.file_total} "
            f"tensors match the model's {report.model_total} by name and shape. The file "
            f"seems to hold {held}; the config builds {model_desc}. "
            f"{_converter_hint(model_desc, framework, target)}."
        )
    return report
