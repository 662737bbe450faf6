"""Log how far each SSB block's learned sampling is from uniform while training.

``SamplingStatsHook`` is a Detectron2 training hook: for the duration of training it puts
forward hooks on the model's saliency samplers; each training-mode forward then adds
``ssb/<block>/kl`` and ``ssb/<block>/density_ratio`` (batch means, see
:mod:`ssb_det.layers.sampling_stats`) to the trainer's ``EventStorage``, from where
Detectron2's writers put them in ``metrics.json`` and TensorBoard. Nothing is written onto
the model; samplers in eval mode (evaluation during training) are not logged.
"""
import torch
from detectron2.engine import HookBase
from detectron2.utils.events import get_event_storage

from ..layers import SaliencySampler
from ..layers.sampling_stats import separable_statistics

__all__ = ["SamplingStatsHook", "sampler_names"]


def sampler_names(model: torch.nn.Module):
    """``{block name: sampler}`` of every learned (non-uniform) sampler in ``model``,
    named by its block as in a checkpoint without the backbone prefix, e.g. ``"res3.1"``."""
    unwrapped = getattr(model, "module", model)  # DistributedDataParallel
    found = {}
    for name, module in unwrapped.named_modules():
        if isinstance(module, SaliencySampler) and not module.uniform:
            block = name[: -len(".sampler")] if name.endswith(".sampler") else name
            found[block.split("bottom_up.")[-1]] = module
    return found


class SamplingStatsHook(HookBase):
    """Put the sampling statistics of every SSB block into the ``EventStorage``."""

    def __init__(self):
        self._handles = []

    def before_train(self):
        for name, sampler in sampler_names(self.trainer.model).items():
            self._handles.append(sampler.register_forward_hook(self._logger(name)))

    def after_train(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @staticmethod
    def _logger(name: str):
        def log(module, inputs, grid):
            if not module.training:
                return
            with torch.no_grad():
                kl, ratio = separable_statistics(grid.knots_y, grid.knots_x)
            get_event_storage().put_scalars(**{
                f"ssb/{name}/kl": float(kl.mean()),
                f"ssb/{name}/density_ratio": float(ratio.mean()),
            })
        return log
