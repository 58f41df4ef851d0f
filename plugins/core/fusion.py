"""Weighted feature fusion used by the BiFPN nodes.

Paper: EfficientDet: Scalable and Efficient Object Detection, Tan et al. 2020,
https://arxiv.org/abs/1911.09070 (section 3.3, "Weighted Feature Fusion").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from plugins.core._validate import check_choice, check_positive

FUSION_METHODS = ("fast", "softmax", "sum")


class WeightedFusion(nn.Module):
    """Fuse ``num_inputs`` same-shaped feature maps with learned scalar weights.

    Paper: https://arxiv.org/abs/1911.09070 (EfficientDet, section 3.3).

    Methods:
        ``"fast"``: fast normalized fusion, ``out = sum_i relu(w_i) / (eps + sum_j relu(w_j)) * x_i``.
        ``"softmax"``: softmax-based fusion, ``out = sum_i softmax(w)_i * x_i``.
        ``"sum"``: plain sum of the inputs; the module then holds no parameters.

    Args:
        num_inputs: number of feature maps fused (>= 1).
        method: one of ``"fast"``, ``"softmax"``, ``"sum"``. Default ``"fast"``.
        eps: stabiliser of the fast normalisation. Default ``1e-4`` (the paper's value).

    Attributes:
        weight: ``Tensor[num_inputs]`` learned raw weights (initialised to 1), or ``None`` for
            ``"sum"``.
    """

    def __init__(self, num_inputs: int, method: str = "fast", eps: float = 1e-4) -> None:
        super().__init__()
        check_choice("method", method, FUSION_METHODS)
        check_positive("num_inputs", num_inputs)
        check_positive("eps", eps)
        self.num_inputs = int(num_inputs)
        self.method = method
        self.eps = float(eps)
        if method == "sum":
            self.register_parameter("weight", None)
        else:
            self.weight = nn.Parameter(torch.ones(self.num_inputs))

    def normalized_weights(self, dtype: torch.dtype | None = None) -> Tensor | None:
        """Return the mixing coefficients, ``Tensor[num_inputs]`` (``None`` for ``"sum"``).

        Args:
            dtype: cast the raw weights to this dtype first (default: keep theirs).
        """
        if self.weight is None:
            return None
        w = self.weight if dtype is None else self.weight.to(dtype)
        if self.method == "softmax":
            return torch.softmax(w, dim=0)
        w = torch.relu(w)
        return w / (w.sum() + self.eps)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """Fuse the inputs.

        Args:
            inputs: ``num_inputs`` tensors of identical shape, e.g. ``(B, C, H, W)``.

        Returns:
            Tensor of the same shape as each input.

        Raises:
            ValueError: wrong number of inputs or mismatched shapes.
        """
        if len(inputs) != self.num_inputs:
            raise ValueError(f"inputs: expected {self.num_inputs} tensors, got {len(inputs)}")
        first = inputs[0]
        for i, x in enumerate(inputs[1:], start=1):
            if x.shape != first.shape:
                raise ValueError(
                    f"inputs: expected every tensor of shape {tuple(first.shape)}, "
                    f"got {tuple(x.shape)} at position {i}"
                )
        weights = self.normalized_weights(first.dtype)
        if weights is None:
            out = first + inputs[1] if self.num_inputs > 1 else first.clone()
            for x in inputs[2:]:
                out = out + x
            return out
        out = first * weights[0]
        for i in range(1, self.num_inputs):
            out = torch.addcmul(out, inputs[i], weights[i])
        return out

    def extra_repr(self) -> str:
        return f"num_inputs={self.num_inputs}, method={self.method!r}, eps={self.eps}"
