"""The EfficientDet network: EfficientNet backbone + BiFPN + shared class/box heads.

Paper: EfficientDet: Scalable and Efficient Object Detection, Tan et al. 2020,
https://arxiv.org/abs/1911.09070.

This module is the bare network (raw per-level outputs); anchors, target assignment, losses and
post-processing live elsewhere (:mod:`plugins.core.anchors`, :mod:`plugins.core.box_coder`,
the framework adapters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plugins.core._validate import check_positive, check_tensor
from plugins.core.bifpn import BiFPN, SeparableConv
from plugins.core.efficientnet import EfficientNet
from plugins.core.variants import EfficientDetVariant, get_variant


def _variance_scaling_(weight: Tensor, groups: int = 1) -> Tensor:
    """TF variance-scaling init (normal, fan-in mode): ``std = sqrt(1 / fan_in)``."""
    fan_in = weight.shape[1] * weight[0][0].numel()
    return nn.init.normal_(weight, 0.0, math.sqrt(1.0 / max(1.0, fan_in)))


class DetectionHead(nn.Module):
    """Class or box prediction head shared across pyramid levels.

    Paper: https://arxiv.org/abs/1911.09070 (section 3.3, "Box/class prediction network").

    Per level: ``repeats x (separable conv -> level-specific BN -> SiLU)`` then a separable
    prediction conv with ``num_anchors * num_outputs`` channels. Conv weights are shared by all
    levels; every level has its own BatchNorm (``norms[repeat][level]``).

    Args:
        width: input channels (BiFPN width).
        num_outputs: outputs per anchor (classes, or 4 for boxes).
        num_anchors: anchors per location.
        repeats: number of conv/BN/SiLU repeats.
        num_levels: number of pyramid levels. Default 5.
        separable: depthwise-separable convs. Default ``True``.
        conv_bias: biases on the convs followed by BN. Default ``True``.
        bn_eps: BatchNorm eps. Default 1e-3.
        bn_momentum: BatchNorm momentum (PyTorch convention). Default 0.01.
        tf_same: TensorFlow "SAME" padding. Default ``True``.
        prior_prob: if given, the prediction bias starts at ``-log((1 - p) / p)`` (focal-loss
            prior; 0.01 for the class head), else at 0. Default ``None``.
    """

    def __init__(
        self,
        width: int,
        num_outputs: int,
        num_anchors: int,
        repeats: int,
        num_levels: int = 5,
        separable: bool = True,
        conv_bias: bool = True,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
        tf_same: bool = True,
        prior_prob: float | None = None,
    ) -> None:
        super().__init__()
        check_positive("num_outputs", num_outputs)
        check_positive("num_anchors", num_anchors)
        self.num_levels = int(num_levels)
        self.num_outputs = int(num_outputs)
        self.num_anchors = int(num_anchors)
        self.prior_prob = prior_prob
        self.convs = nn.ModuleList(
            SeparableConv(width, width, 3, conv_bias, False, separable, tf_same=tf_same)
            for _ in range(repeats)
        )
        self.norms = nn.ModuleList(
            nn.ModuleList(
                nn.BatchNorm2d(width, eps=bn_eps, momentum=bn_momentum) for _ in range(num_levels)
            )
            for _ in range(repeats)
        )
        self.predict = SeparableConv(
            width, num_anchors * num_outputs, 3, True, False, separable, tf_same=tf_same
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """TF-style init: variance-scaling convs, zero biases (prior bias on the prediction)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _variance_scaling_(m.weight, m.groups)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.prior_prob is not None:
            p = self.prior_prob
            nn.init.constant_(self.predict.pw.bias, -math.log((1.0 - p) / p))

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        """``num_levels`` maps ``(B, width, H_l, W_l)`` -> ``(B, A * num_outputs, H_l, W_l)`` each."""
        if len(feats) != self.num_levels:
            raise ValueError(f"feats: expected {self.num_levels} feature maps, got {len(feats)}")
        outs = []
        for level, x in enumerate(feats):
            for conv, norms in zip(self.convs, self.norms):
                x = F.silu(norms[level](conv(x)), inplace=True)
            outs.append(self.predict(x))
        return outs


class EfficientDet(nn.Module):
    """EfficientDet detector network (raw outputs).

    Paper: https://arxiv.org/abs/1911.09070.

    Args:
        variant: a name from :data:`~plugins.core.variants.EFFICIENTDET_VARIANTS`
            (``"efficientdet_d0"`` ... ``"efficientdet_d7x"``, ``"efficientdet_test"``) or an
            :class:`~plugins.core.variants.EfficientDetVariant`.
        num_classes: number of object classes (no background). Default 90.
        channels_last: keep the weights and activations in ``torch.channels_last`` memory format,
            which runs the depthwise convolutions markedly faster on CPU (oneDNN). Values and
            shapes are unaffected; :meth:`forward` still returns contiguous NCHW tensors.
            Default ``True``.

    Attributes:
        variant: the resolved :class:`EfficientDetVariant`.
        backbone: :class:`~plugins.core.efficientnet.EfficientNet` giving P3-P5.
        fpn: :class:`~plugins.core.bifpn.BiFPN` giving P3-P7 (P3-P8 for D7x).
        class_net: :class:`DetectionHead` with ``num_classes`` outputs per anchor.
        box_net: :class:`DetectionHead` with 4 outputs ``(ty, tx, th, tw)`` per anchor.
    """

    def __init__(
        self,
        variant: str | EfficientDetVariant,
        num_classes: int = 90,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        cfg = get_variant(variant)
        check_positive("num_classes", num_classes)
        self.variant = cfg
        self.num_classes = int(num_classes)
        strides = [2**level for level in range(cfg.min_level, min(cfg.max_level, 5) + 1)]
        self.backbone = EfficientNet(
            cfg.width_mult,
            cfg.depth_mult,
            out_strides=strides,
            drop_path_rate=cfg.drop_path_rate,
            tf_same=cfg.tf_same,
            bn_eps=cfg.bn_eps,
            bn_momentum=cfg.backbone_bn_momentum,
        )
        common = dict(
            separable=cfg.separable,
            conv_bias=cfg.conv_bias,
            bn_eps=cfg.bn_eps,
            bn_momentum=cfg.bn_momentum,
            tf_same=cfg.tf_same,
        )
        self.fpn = BiFPN(
            self.backbone.out_channels,
            cfg.fpn_channels,
            cfg.num_levels,
            cfg.fpn_repeats,
            cfg.fusion,
            **common,
        )
        head = dict(num_levels=cfg.num_levels, **common)
        self.class_net = DetectionHead(
            cfg.fpn_channels,
            num_classes,
            cfg.num_anchors,
            cfg.head_repeats,
            prior_prob=0.01,
            **head,
        )
        self.box_net = DetectionHead(cfg.fpn_channels, 4, cfg.num_anchors, cfg.head_repeats, **head)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def num_anchors(self) -> int:
        """Anchors per location."""
        return self.variant.num_anchors

    def features(self, images: Tensor) -> list[Tensor]:
        """Backbone + BiFPN only.

        Args:
            images: ``(B, 3, H, W)`` float images.

        Returns:
            ``num_levels`` maps ``(B, fpn_channels, ceil(H / 2**l), ceil(W / 2**l))`` for
            ``l = min_level .. max_level`` (in channels-last memory format when the model is).

        Raises:
            ValueError: ``images`` is not a 4-D float tensor with 3 channels.
        """
        check_tensor("images", images, (None, 3, None, None), floating=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.fpn(self.backbone(images))

    def forward(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Run the detector.

        Args:
            images: ``(B, 3, H, W)`` float images (H, W ideally multiples of ``2**max_level``).

        Returns:
            ``(cls_outputs, box_outputs)``: per level ``(B, A * num_classes, H_l, W_l)`` logits and
            ``(B, A * 4, H_l, W_l)`` ``(ty, tx, th, tw)`` codes; channel ``a * K + k`` is output
            ``k`` of anchor ``a`` (the layout of effdet's raw outputs).

        Raises:
            ValueError: ``images`` is not a 4-D float tensor with 3 channels.
        """
        feats = self.features(images)
        cls_outputs = [t.contiguous() for t in self.class_net(feats)]
        box_outputs = [t.contiguous() for t in self.box_net(feats)]
        return cls_outputs, box_outputs


__all__ = ["DetectionHead", "EfficientDet"]
