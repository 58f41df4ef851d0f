"""The EfficientDet variant table (D0-D7, D7x and a tiny test variant).

Paper: EfficientDet: Scalable and Efficient Object Detection, Tan et al. 2020,
https://arxiv.org/abs/1911.09070 (Table 1: compound scaling of D0-D7).

The values equal effdet 0.4.1's ``tf_efficientdet_d0`` ... ``tf_efficientdet_d7x`` configurations
(the ports of the official TensorFlow checkpoints): TF "same" padding, BatchNorm eps 1e-3 with
momentum 0.01 in the BiFPN/heads (the backbone keeps PyTorch's 0.1), redundant conv biases before
BatchNorm, fast normalised fusion up to D5 and plain sums for D6/D7/D7x.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from plugins.core.efficientnet import EFFICIENTNET_COEFFICIENTS

ASPECT_RATIOS: tuple[tuple[float, float], ...] = ((1.0, 1.0), (1.4, 0.7), (0.7, 1.4))


@dataclass(frozen=True)
class EfficientDetVariant:
    """One EfficientDet configuration.

    Attributes:
        name: table key, e.g. ``"efficientdet_d0"``.
        image_size: square input size the variant is trained at, e.g. 512.
        backbone: EfficientNet name, e.g. ``"efficientnet_b0"`` (``"custom"`` for the test variant).
        width_mult: backbone width coefficient.
        depth_mult: backbone depth coefficient.
        backbone_dropout: the backbone's classifier dropout from the EfficientNet paper
            (informative; a feature extractor has no classifier).
        drop_path_rate: backbone stochastic-depth rate (0.2, as effdet's tf_ configs).
        fpn_channels: BiFPN width.
        fpn_repeats: number of BiFPN layers.
        head_repeats: separable conv repeats in the class/box heads.
        fusion: BiFPN fusion method (``"fast"``, ``"softmax"`` or ``"sum"``).
        anchor_scale: base anchor size in units of the level stride.
        min_level: finest pyramid level (3).
        max_level: coarsest pyramid level (7; 8 for D7x).
        num_scales: anchor octave scales per location (3).
        aspect_ratios: anchor ``(w, h)`` multipliers.
        separable: depthwise-separable convs in the BiFPN and heads.
        tf_same: TensorFlow "SAME" padding.
        bn_eps: BatchNorm eps everywhere (1e-3).
        bn_momentum: BatchNorm momentum of the BiFPN and heads (PyTorch convention, 0.01).
        backbone_bn_momentum: BatchNorm momentum of the backbone (0.1).
        conv_bias: keep the (redundant) biases of convs followed by BatchNorm.
        expected_params: effdet 0.4.1's parameter count for 90 classes (0 when no reference).
    """

    name: str
    image_size: int
    backbone: str
    width_mult: float
    depth_mult: float
    backbone_dropout: float
    fpn_channels: int
    fpn_repeats: int
    head_repeats: int
    fusion: str = "fast"
    anchor_scale: float = 4.0
    min_level: int = 3
    max_level: int = 7
    num_scales: int = 3
    aspect_ratios: tuple[tuple[float, float], ...] = ASPECT_RATIOS
    separable: bool = True
    tf_same: bool = True
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01
    backbone_bn_momentum: float = 0.1
    drop_path_rate: float = 0.2
    conv_bias: bool = True
    expected_params: int = 0

    @property
    def num_levels(self) -> int:
        """Number of pyramid levels, ``max_level - min_level + 1``."""
        return self.max_level - self.min_level + 1

    @property
    def num_anchors(self) -> int:
        """Anchors per location, ``num_scales * len(aspect_ratios)``."""
        return self.num_scales * len(self.aspect_ratios)


def _variant(
    index: str,
    image_size: int,
    backbone: str,
    fpn_channels: int,
    fpn_repeats: int,
    head_repeats: int,
    expected_params: int,
    **kwargs,
) -> EfficientDetVariant:
    width, depth, _, dropout = EFFICIENTNET_COEFFICIENTS[backbone]
    return EfficientDetVariant(
        name=f"efficientdet_{index}",
        image_size=image_size,
        backbone=backbone,
        width_mult=width,
        depth_mult=depth,
        backbone_dropout=dropout,
        fpn_channels=fpn_channels,
        fpn_repeats=fpn_repeats,
        head_repeats=head_repeats,
        expected_params=expected_params,
        **kwargs,
    )


_TABLE = (
    _variant("d0", 512, "efficientnet_b0", 64, 3, 3, 3_880_067),
    _variant("d1", 640, "efficientnet_b1", 88, 4, 3, 6_625_898),
    _variant("d2", 768, "efficientnet_b2", 112, 5, 3, 8_097_039),
    _variant("d3", 896, "efficientnet_b3", 160, 6, 4, 12_032_296),
    _variant("d4", 1024, "efficientnet_b4", 224, 7, 4, 20_723_675),
    _variant("d5", 1280, "efficientnet_b5", 288, 7, 4, 33_653_315),
    _variant("d6", 1280, "efficientnet_b6", 384, 8, 5, 51_871_782, fusion="sum"),
    _variant("d7", 1536, "efficientnet_b6", 384, 8, 5, 51_871_782, fusion="sum", anchor_scale=5.0),
    _variant("d7x", 1536, "efficientnet_b7", 384, 8, 5, 77_147_166, fusion="sum", max_level=8),
    EfficientDetVariant(
        name="efficientdet_test",
        image_size=128,
        backbone="custom",
        width_mult=0.25,
        depth_mult=0.1,
        backbone_dropout=0.0,
        fpn_channels=16,
        fpn_repeats=1,
        head_repeats=1,
        drop_path_rate=0.1,
    ),
    # CPU demo variant (configs/demo/efficientdet_shapes.yaml): half-width, shallow backbone,
    # BiFPN 64 x 2, 2 head repeats, 256 px, no stochastic depth; trains from scratch in minutes
    EfficientDetVariant(
        name="efficientdet_demo",
        image_size=256,
        backbone="custom",
        width_mult=0.5,
        depth_mult=0.35,
        backbone_dropout=0.0,
        fpn_channels=64,
        fpn_repeats=2,
        head_repeats=2,
        drop_path_rate=0.0,
    ),
)

EFFICIENTDET_VARIANTS: MappingProxyType[str, EfficientDetVariant] = MappingProxyType(
    {v.name: v for v in _TABLE}
)
"""Read-only mapping: variant name -> :class:`EfficientDetVariant`."""

# effdet's names for the fusion methods, used by the converter and the tests
EFFDET_FUSION_NAMES = {"fastattn": "fast", "attn": "softmax", "sum": "sum"}


def get_variant(variant: str | EfficientDetVariant) -> EfficientDetVariant:
    """Resolve a variant name (or pass a variant through).

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    if isinstance(variant, EfficientDetVariant):
        return variant
    if variant not in EFFICIENTDET_VARIANTS:
        raise ValueError(
            f"variant: expected one of {sorted(EFFICIENTDET_VARIANTS)}, got {variant!r}"
        )
    return EFFICIENTDET_VARIANTS[variant]


__all__ = [
    "ASPECT_RATIOS",
    "EfficientDetVariant",
    "EFFICIENTDET_VARIANTS",
    "EFFDET_FUSION_NAMES",
    "get_variant",
]
