"""Drop-in loss modules."""
from __future__ import annotations

import torch

from ..ops.cross_entropy import masked_softmax_cross_entropy


class MaskedSoftmaxCELoss(torch.nn.CrossEntropyLoss):
    """d2l's ``MaskedSoftmaxCELoss`` on the fused kernels: ``loss(pred, label, valid_len)``.

    pred (B, T, V) logits; label (B, T) integer; valid_len (B,) integer or None. The default reduction
    "per_sequence" returns (B,): the sum of the cross-entropy over steps t < valid_len[b], divided by T (d2l's
    ``(unweighted_loss * weights).mean(dim=1)``). Other reductions: "none", "sum", "mean" (over unmasked steps; 0
    when all are masked). Targets equal to ``ignore_index`` are masked too. Subclasses torch.nn.CrossEntropyLoss,
    as d2l's does.
    """

    def __init__(self, ignore_index: int = -100, label_smoothing: float = 0.0, reduction: str = "per_sequence",
                 *, backend: str | None = None):
        super().__init__(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
        self.backend = backend

    def forward(self, pred, label, valid_len=None):
        return masked_softmax_cross_entropy(pred, label, valid_len, ignore_index=self.ignore_index,
                                            label_smoothing=self.label_smoothing, reduction=self.reduction,
                                            backend=self.backend)
