"""Exponential moving average of a model's weights (the ResNet-RS recipe evaluates it)."""
import copy

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    """A frozen copy of a model whose floating-point state follows the model's by EMA.

    After each optimiser step, ``update(model)`` sets every floating-point parameter and
    buffer (BN running statistics included) to ``d * ema + (1 - d) * current`` with
    ``d = min(decay, (1 + n) / (10 + n))`` at update ``n`` (TensorFlow's ``num_updates``
    rule, so short runs are not dominated by the initial weights); integer buffers (BN step
    counters) are copied.

    Args:
        model (nn.Module): the model to follow (not a DDP wrapper); it is deep-copied.
        decay (float): the decay once ``n`` is large (ResNet-RS: 0.9999).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"CLS.EMA.DECAY={decay}: must be in [0, 1)")
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        current = model.state_dict()
        for name, ema_value in self.module.state_dict().items():
            value = current[name].detach()
            if ema_value.dtype.is_floating_point:
                ema_value.mul_(d).add_(value.to(ema_value.dtype), alpha=1.0 - d)
            else:
                ema_value.copy_(value)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"], strict=True)
        self.updates = int(state["updates"])
