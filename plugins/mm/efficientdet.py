"""EfficientDet in MMDetection 3.x, built from the core network pieces.

Paper: `EfficientDet: Scalable and Efficient Object Detection <https://arxiv.org/abs/1911.09070>`_.

The core modules sit under the attribute paths shared with the Detectron2 side, so one
checkpoint serves both frameworks by a prefix swap:

* ``backbone.body`` -- :class:`plugins.core.efficientnet.EfficientNet` (P3-P5),
* ``neck.fpn`` -- :class:`plugins.core.bifpn.BiFPN` (P3-P7, P3-P8 for D7x),
* ``bbox_head.class_net`` / ``bbox_head.box_net`` -- :class:`plugins.core.efficientdet.DetectionHead`.

Registered names: ``PluginsEfficientDet`` (detector), ``PluginsEfficientNet`` (backbone),
``PluginsBiFPN`` (neck), ``PluginsEfficientDetHead`` (head) in ``MODELS``;
``PluginsEfficientDetAnchorGenerator`` and ``PluginsEfficientDetBoxCoder`` in ``TASK_UTILS``.
The head reuses mmdet's ``AnchorHead`` machinery (assigner, sampler, target building,
per-image decoding) with the core anchors, the core ``(ty, tx, th, tw)`` box coding and the
core soft-NMS (``test_cfg.nms.type="plugins_soft_nms"``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch
from mmdet.models.dense_heads import AnchorHead
from mmdet.models.detectors import SingleStageDetector
from mmdet.models.task_modules.coders.base_bbox_coder import BaseBBoxCoder
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures.bbox import get_box_tensor
from mmengine.model import BaseModule
from torch import Tensor

from plugins.core._validate import check_tensor
from plugins.core.anchors import feature_sizes, generate_anchors
from plugins.core.bifpn import BiFPN
from plugins.core.box_coder import decode_boxes, encode_boxes
from plugins.core.efficientdet import DetectionHead
from plugins.core.efficientnet import B0_STAGES, EfficientNet, round_filters
from plugins.core.variants import EfficientDetVariant, get_variant
from plugins.mm.soft_nms import SoftNMSPostProcessMixin

__all__ = [
    "resolve_variant",
    "PluginsEfficientNet",
    "PluginsBiFPN",
    "PluginsEfficientDetAnchorGenerator",
    "PluginsEfficientDetBoxCoder",
    "PluginsEfficientDetHead",
    "PluginsEfficientDet",
]

# Largest log-size ratio accepted by the decoder, as torchvision's and detectron2's box coders
# (exp(4.135) = 62.5): keeps untrained heads from producing inf boxes.
_MAX_LOG_RATIO = math.log(1000.0 / 16)


def resolve_variant(variant: str | dict | EfficientDetVariant) -> EfficientDetVariant:
    """Look up a variant, or derive one from a config dict.

    Args:
        variant: a name of :data:`~plugins.core.variants.EFFICIENTDET_VARIANTS`, an
            :class:`~plugins.core.variants.EfficientDetVariant`, or a dict
            ``dict(base="efficientdet_test", fpn_channels=32, ...)`` giving a table entry and
            the fields to change (e.g. for small demos).

    Returns:
        The variant.

    Raises:
        ValueError: unknown name, missing ``base`` or an unknown field.
    """
    if not isinstance(variant, (dict, Mapping)):
        return get_variant(variant)
    fields = dict(variant)
    if "base" not in fields:
        raise ValueError(f"variant: a dict needs a 'base' variant name, got keys {sorted(fields)}")
    base = get_variant(fields.pop("base"))
    known = {f.name for f in dataclasses.fields(EfficientDetVariant)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"variant: unknown fields {unknown}; expected some of {sorted(known)}")
    if "aspect_ratios" in fields:
        fields["aspect_ratios"] = tuple(tuple(float(v) for v in r) for r in fields["aspect_ratios"])
    return dataclasses.replace(base, **fields)


def _head_options(cfg: EfficientDetVariant) -> dict:
    """Constructor options shared by the BiFPN and the heads, read from the variant table."""
    return dict(
        separable=cfg.separable,
        conv_bias=cfg.conv_bias,
        bn_eps=cfg.bn_eps,
        bn_momentum=cfg.bn_momentum,
        tf_same=cfg.tf_same,
    )


def _backbone_strides(cfg: EfficientDetVariant) -> list[int]:
    """Strides the backbone feeds to the BiFPN (P3-P5; the rest are pooled by the BiFPN)."""
    return [2**level for level in range(cfg.min_level, min(cfg.max_level, 5) + 1)]


def _backbone_channels(cfg: EfficientDetVariant) -> list[int]:
    """Channels of the backbone maps at :func:`_backbone_strides` (without building it).

    A stride is tapped at the last B0 stage that ends at it, as in the core EfficientNet.
    """
    last_at_stride: dict[int, int] = {}
    stride = 2  # after the stem
    for spec in B0_STAGES:
        stride *= spec.stride
        last_at_stride[stride] = round_filters(spec.channels, cfg.width_mult)
    return [last_at_stride[s] for s in _backbone_strides(cfg)]


@MODELS.register_module()
class PluginsEfficientNet(BaseModule):
    """EfficientNet feature extractor of an EfficientDet variant as an mmdet backbone.

    Paper: `EfficientNet <https://arxiv.org/abs/1905.11946>`_.

    Args:
        variant: EfficientDet variant name (``"efficientdet_d0"`` ... ``"efficientdet_d7x"``,
            ``"efficientdet_test"``) or a dict for :func:`resolve_variant`; picks the
            width/depth coefficients. Default ``"efficientdet_d0"``.
        drop_path_rate: stochastic-depth rate; ``None`` takes the variant's (0.2).
            Default ``None``.
        init_cfg: mmengine init config (e.g. a ``Pretrained`` checkpoint). Default ``None``
            (keeps the core's TF-style initialisation).

    Attributes:
        body: the core :class:`~plugins.core.efficientnet.EfficientNet`.
        out_channels: channels of the returned maps.
    """

    def __init__(
        self,
        variant: str | dict = "efficientdet_d0",
        drop_path_rate: float | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        cfg = resolve_variant(variant)
        self.variant = cfg.name
        self.body = EfficientNet(
            cfg.width_mult,
            cfg.depth_mult,
            out_strides=_backbone_strides(cfg),
            drop_path_rate=cfg.drop_path_rate if drop_path_rate is None else drop_path_rate,
            tf_same=cfg.tf_same,
            bn_eps=cfg.bn_eps,
            bn_momentum=cfg.backbone_bn_momentum,
        )
        self.out_channels = self.body.out_channels

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """``(B, 3, H, W)`` images -> P3-P5 maps ``(B, C_l, ceil(H / 2**l), ceil(W / 2**l))``."""
        return tuple(self.body(x))


@MODELS.register_module()
class PluginsBiFPN(BaseModule):
    """The BiFPN of an EfficientDet variant as an mmdet neck.

    Paper: `EfficientDet <https://arxiv.org/abs/1911.09070>`_ (Sec. 3).

    Args:
        variant: EfficientDet variant name or :func:`resolve_variant` dict; picks width,
            repeats, fusion and levels.
            Default ``"efficientdet_d0"``.
        in_channels: backbone channels, finest first; ``None`` takes the variant's
            EfficientNet channels. Default ``None``.
        init_cfg: mmengine init config. Default ``None``.

    Attributes:
        fpn: the core :class:`~plugins.core.bifpn.BiFPN`.
    """

    def __init__(
        self,
        variant: str | dict = "efficientdet_d0",
        in_channels: Sequence[int] | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        cfg = resolve_variant(variant)
        if in_channels is None:
            in_channels = _backbone_channels(cfg)
        self.variant = cfg.name
        self.fpn = BiFPN(
            in_channels,
            cfg.fpn_channels,
            cfg.num_levels,
            cfg.fpn_repeats,
            cfg.fusion,
            **_head_options(cfg),
        )

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Backbone maps (finest first) -> ``num_levels`` maps ``(B, width, H_l, W_l)``."""
        return tuple(self.fpn(list(feats)))


@TASK_UTILS.register_module()
class PluginsEfficientDetAnchorGenerator:
    """mmdet prior generator returning the core EfficientDet anchors.

    :func:`plugins.core.anchors.generate_anchors` for the input size implied by the finest
    feature map (``H_{min_level} * 2**min_level``), split per level; the anchors of a
    location are ordered ``octave * len(aspect_ratios) + ratio`` as the head channels. Pad the
    inputs to multiples of ``2**max_level`` (``pad_size_divisor`` of the data preprocessor,
    128 for P3-P7) and the anchors equal the core's for that input exactly.

    Args:
        variant: EfficientDet variant (name or :func:`resolve_variant` dict) whose anchor
            settings are the defaults.
            Default ``"efficientdet_d0"``.
        min_level: finest level; ``None`` for the variant's (3). Default ``None``.
        max_level: coarsest level; ``None`` for the variant's (7, 8 for D7x). Default ``None``.
        num_scales: octave scales; ``None`` for the variant's (3). Default ``None``.
        aspect_ratios: ``(w, h)`` multipliers; ``None`` for the variant's. Default ``None``.
        anchor_scale: base size in strides; ``None`` for the variant's (4, 5 for D7).
            Default ``None``.
    """

    def __init__(
        self,
        variant: str | dict = "efficientdet_d0",
        min_level: int | None = None,
        max_level: int | None = None,
        num_scales: int | None = None,
        aspect_ratios: Sequence[Sequence[float]] | None = None,
        anchor_scale: float | None = None,
    ) -> None:
        cfg = resolve_variant(variant)
        self.min_level = cfg.min_level if min_level is None else int(min_level)
        self.max_level = cfg.max_level if max_level is None else int(max_level)
        self.num_scales = cfg.num_scales if num_scales is None else int(num_scales)
        ratios = cfg.aspect_ratios if aspect_ratios is None else aspect_ratios
        self.aspect_ratios = tuple((float(r[0]), float(r[1])) for r in ratios)
        self.anchor_scale = cfg.anchor_scale if anchor_scale is None else float(anchor_scale)
        self.strides = [(2**lv, 2**lv) for lv in range(self.min_level, self.max_level + 1)]

    @property
    def num_levels(self) -> int:
        """Number of pyramid levels."""
        return self.max_level - self.min_level + 1

    @property
    def num_base_priors(self) -> list[int]:
        """Anchors per location, one entry per level."""
        return [self.num_scales * len(self.aspect_ratios)] * self.num_levels

    def input_size(self, featmap_sizes: Sequence[Sequence[int]]) -> tuple[int, int]:
        """The ``(H, W)`` input implied by ``featmap_sizes``.

        Raises:
            ValueError: wrong number of levels, or sizes that are not the ceil-halving
                chain of one input size.
        """
        if len(featmap_sizes) != self.num_levels:
            raise ValueError(
                f"featmap_sizes: expected {self.num_levels} levels "
                f"(P{self.min_level}-P{self.max_level}), got {len(featmap_sizes)}"
            )
        sizes = [(int(s[0]), int(s[1])) for s in featmap_sizes]
        stride = 2**self.min_level
        size = (sizes[0][0] * stride, sizes[0][1] * stride)
        chain = feature_sizes(size, self.max_level)[self.min_level :]
        if chain != sizes:
            raise ValueError(
                f"featmap_sizes: expected the halving chain {chain} of an input of {size}, "
                f"got {sizes}"
            )
        return size

    def grid_priors(
        self,
        featmap_sizes: Sequence[Sequence[int]],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        with_stride: bool = False,
    ) -> list[Tensor]:
        """Anchors of every level.

        Args:
            featmap_sizes: ``(H_l, W_l)`` per level, finest first.
            dtype: dtype of the result. Default ``torch.float32``.
            device: device of the result. Default CPU.
            with_stride: unsupported (anchor-free heads only); must be ``False``.

        Returns:
            One ``Tensor[H_l * W_l * A, 4]`` per level, ``(x1, y1, x2, y2)``, ordered y, x,
            anchor.

        Raises:
            ValueError: ``with_stride`` set, or ``featmap_sizes`` inconsistent.
        """
        if with_stride:
            raise ValueError("with_stride: not supported by the EfficientDet anchors")
        anchors = generate_anchors(
            self.input_size(featmap_sizes),
            self.min_level,
            self.max_level,
            self.num_scales,
            self.aspect_ratios,
            self.anchor_scale,
            device=device,
        ).to(dtype)
        counts = [int(h) * int(w) * self.num_base_priors[0] for h, w in featmap_sizes]
        return list(anchors.split(counts))

    def valid_flags(
        self,
        featmap_sizes: Sequence[Sequence[int]],
        pad_shape: Sequence[int],
        device: torch.device | str = "cpu",
    ) -> list[Tensor]:
        """Every anchor is valid (EfficientDet keeps anchors that cross the border).

        Returns:
            One all-true ``Tensor[H_l * W_l * A]`` bool per level.
        """
        a = self.num_base_priors[0]
        return [
            torch.ones(int(h) * int(w) * a, dtype=torch.bool, device=device)
            for h, w in featmap_sizes
        ]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(levels=P{self.min_level}-P{self.max_level}, "
            f"num_scales={self.num_scales}, aspect_ratios={self.aspect_ratios}, "
            f"anchor_scale={self.anchor_scale})"
        )


@TASK_UTILS.register_module()
class PluginsEfficientDetBoxCoder(BaseBBoxCoder):
    """mmdet box coder around :mod:`plugins.core.box_coder` (``(ty, tx, th, tw)`` codes).

    Paper: `Faster R-CNN <https://arxiv.org/abs/1506.01497>`_ parameterisation, unscaled, as
    EfficientDet.

    Args:
        clip_border: clip decoded boxes to ``max_shape``. Default ``True``.
        max_log_ratio: upper clamp of ``th, tw`` before decoding. Default ``log(1000 / 16)``.
    """

    encode_size = 4

    def __init__(self, clip_border: bool = True, max_log_ratio: float = _MAX_LOG_RATIO, **kwargs):
        super().__init__(**kwargs)
        self.clip_border = bool(clip_border)
        self.max_log_ratio = float(max_log_ratio)

    def encode(self, bboxes, gt_bboxes) -> Tensor:
        """Codes of ``gt_bboxes`` ``Tensor[N, 4]`` relative to anchors ``bboxes`` ``Tensor[N, 4]``."""
        return encode_boxes(get_box_tensor(gt_bboxes), get_box_tensor(bboxes))

    def decode(self, bboxes, pred_bboxes: Tensor, max_shape: Sequence[int] | None = None) -> Tensor:
        """Boxes ``Tensor[..., 4]`` from codes ``pred_bboxes`` and anchors ``bboxes``.

        Args:
            bboxes: anchors ``Tensor[N, 4]`` (or ``(B, N, 4)``).
            pred_bboxes: codes ``(ty, tx, th, tw)``, same shape.
            max_shape: ``(H, W)`` to clip to when ``clip_border``. Default ``None``.
        """
        check_tensor("pred_bboxes", pred_bboxes, None, floating=True)
        codes = torch.cat(
            (pred_bboxes[..., :2], pred_bboxes[..., 2:].clamp(max=self.max_log_ratio)), dim=-1
        )
        boxes = decode_boxes(codes, get_box_tensor(bboxes))
        if self.clip_border and max_shape is not None:
            h, w = float(max_shape[0]), float(max_shape[1])
            boxes = torch.stack(
                (
                    boxes[..., 0].clamp(0, w),
                    boxes[..., 1].clamp(0, h),
                    boxes[..., 2].clamp(0, w),
                    boxes[..., 3].clamp(0, h),
                ),
                dim=-1,
            )
        return boxes


@MODELS.register_module()
class PluginsEfficientDetHead(SoftNMSPostProcessMixin, AnchorHead):
    """EfficientDet's class/box prediction networks as an mmdet anchor head.

    Paper: `EfficientDet <https://arxiv.org/abs/1911.09070>`_ (Sec. 3.3 and 4).

    Targets come from mmdet's assigner/sampler (``train_cfg``); the losses are normalised as
    effdet's: classification ``sum / (num_pos + 1)``, boxes ``sum / (4 * (num_pos + 1))``
    (then ``loss_weight``, 50 in the paper for the Huber box loss).

    Args:
        num_classes: number of object classes (no background).
        variant: EfficientDet variant name or :func:`resolve_variant` dict. Default
            ``"efficientdet_d0"``.
        in_channels: BiFPN width; ``None`` takes the variant's. Default ``None``.
        anchor_generator: prior generator config; ``None`` for
            ``PluginsEfficientDetAnchorGenerator`` of ``variant``. Default ``None``.
        bbox_coder: box coder config. Default ``PluginsEfficientDetBoxCoder``.
        loss_cls: classification loss config. Default ``PluginsFocalLoss`` with gamma 1.5,
            alpha 0.25.
        loss_bbox: box loss config. Default ``PluginsHuberLoss`` with delta 0.1, weight 50.
        train_cfg: mmdet training config (``assigner``, ``sampler``, ...). Default ``None``.
        test_cfg: mmdet test config (``nms_pre``, ``score_thr``, ``nms``, ``max_per_img``).
            Default ``None``.
        init_cfg: mmengine init config. Default ``None`` (core initialisation, including the
            0.01 prior bias of the class net).

    Attributes:
        class_net: core :class:`~plugins.core.efficientdet.DetectionHead`,
            ``num_classes`` outputs per anchor.
        box_net: core :class:`~plugins.core.efficientdet.DetectionHead`, 4 outputs per anchor.
    """

    def __init__(
        self,
        num_classes: int,
        variant: str | dict = "efficientdet_d0",
        in_channels: int | None = None,
        anchor_generator: dict | None = None,
        bbox_coder: dict | None = None,
        loss_cls: dict | None = None,
        loss_bbox: dict | None = None,
        train_cfg: dict | None = None,
        test_cfg: dict | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        cfg = resolve_variant(variant)
        self.variant = cfg.name
        self._variant_cfg = cfg
        width = cfg.fpn_channels if in_channels is None else int(in_channels)
        if anchor_generator is None:
            anchor_generator = dict(type="PluginsEfficientDetAnchorGenerator", variant=cfg.name)
        if bbox_coder is None:
            bbox_coder = dict(type="PluginsEfficientDetBoxCoder")
        if loss_cls is None:
            loss_cls = dict(type="PluginsFocalLoss", use_sigmoid=True, gamma=1.5, alpha=0.25)
        if loss_bbox is None:
            loss_bbox = dict(type="PluginsHuberLoss", delta=0.1, loss_weight=50.0)
        super().__init__(
            num_classes=num_classes,
            in_channels=width,
            feat_channels=width,
            anchor_generator=anchor_generator,
            bbox_coder=bbox_coder,
            reg_decoded_bbox=False,
            loss_cls=loss_cls,
            loss_bbox=loss_bbox,
            train_cfg=train_cfg,
            test_cfg=test_cfg,
            init_cfg=init_cfg,
        )

    def _init_layers(self) -> None:
        """Build the core class and box networks."""
        cfg = self._variant_cfg
        if not self.use_sigmoid_cls:
            raise ValueError("loss_cls: EfficientDet needs a sigmoid loss (use_sigmoid=True)")
        options = dict(num_levels=self.prior_generator.num_levels, **_head_options(cfg))
        self.class_net = DetectionHead(
            self.in_channels,
            self.cls_out_channels,
            self.num_base_priors,
            cfg.head_repeats,
            prior_prob=0.01,
            **options,
        )
        self.box_net = DetectionHead(
            self.in_channels,
            self.bbox_coder.encode_size,
            self.num_base_priors,
            cfg.head_repeats,
            **options,
        )

    def forward(self, x: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per-level logits ``(B, A * C, H_l, W_l)`` and codes ``(B, A * 4, H_l, W_l)``."""
        feats = list(x)
        return self.class_net(feats), self.box_net(feats)

    def loss_by_feat_single(
        self,
        cls_score: Tensor,
        bbox_pred: Tensor,
        anchors: Tensor,
        labels: Tensor,
        label_weights: Tensor,
        bbox_targets: Tensor,
        bbox_weights: Tensor,
        avg_factor: float,
    ) -> tuple[Tensor, Tensor]:
        """Losses of one level with effdet's normalisation.

        Args:
            cls_score: ``(B, A * C, H, W)`` logits.
            bbox_pred: ``(B, A * 4, H, W)`` codes.
            anchors: ``(B, H * W * A, 4)`` anchors (unused: codes are compared directly).
            labels: ``(B, H * W * A)`` class ids, ``C`` for background.
            label_weights: ``(B, H * W * A)``.
            bbox_targets: ``(B, H * W * A, 4)`` target codes.
            bbox_weights: ``(B, H * W * A, 4)``.
            avg_factor: number of positive anchors in the batch.

        Returns:
            ``(loss_cls, loss_bbox)`` scalars.
        """
        normalizer = float(avg_factor) + 1.0
        c = self.cls_out_channels
        loss_cls = self.loss_cls(
            cls_score.permute(0, 2, 3, 1).reshape(-1, c),
            labels.reshape(-1),
            label_weights.reshape(-1),
            avg_factor=normalizer,
        )
        k = self.bbox_coder.encode_size
        loss_bbox = self.loss_bbox(
            bbox_pred.permute(0, 2, 3, 1).reshape(-1, k),
            bbox_targets.reshape(-1, k),
            bbox_weights.reshape(-1, k),
            avg_factor=normalizer * k,
        )
        return loss_cls, loss_bbox


@MODELS.register_module()
class PluginsEfficientDet(SingleStageDetector):
    """EfficientDet detector: ``PluginsEfficientNet`` + ``PluginsBiFPN`` + ``PluginsEfficientDetHead``.

    Paper: `EfficientDet <https://arxiv.org/abs/1911.09070>`_. Same arguments as mmdet's
    ``SingleStageDetector``.
    """
