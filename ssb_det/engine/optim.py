"""Optimizer parameter groups for SSB models: the saliency convs' own learning rate."""
from typing import Iterable, List

import torch

from ..layers import SaliencySampler

__all__ = ["saliency_parameters", "scale_learning_rate"]


def saliency_parameters(model: torch.nn.Module) -> List[torch.nn.Parameter]:
    """The weights of every learned saliency conv of ``model`` (none for uniform sampling)."""
    return [p for m in model.modules() if isinstance(m, SaliencySampler)
            for p in m.parameters()]


def scale_learning_rate(optimizer: torch.optim.Optimizer,
                        params: Iterable[torch.nn.Parameter], factor: float) -> None:
    """Move ``params`` into groups of their own whose learning rate is ``factor`` times that
    of the group each came from (other hyperparameters unchanged). Call it before the LR
    scheduler is built: schedulers record each group's initial learning rate."""
    chosen = {id(p) for p in params}
    new_groups = []
    for group in optimizer.param_groups:
        moved = [p for p in group["params"] if id(p) in chosen]
        if moved:
            group["params"] = [p for p in group["params"] if id(p) not in chosen]
            new_groups.append(dict(group, params=moved, lr=group["lr"] * factor))
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    for group in new_groups:
        optimizer.add_param_group(group)
