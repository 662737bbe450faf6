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

from ..layers.sampling_stats import separable_statistics
from ..modeling.blocks import learned_ssb_blocks

__all__ = ["SamplingStatsHook"]


class SamplingStatsHook(HookBase):
    """Put the sampling statistics of every SSB block into the ``EventStorage``."""

    def __init__(self):
        self._handles = []

    def before_train(self):
        for name, block in learned_ssb_blocks(self.trainer.model).items():
            self._handles.append(block.sampler.register_forward_hook(self._logger(name)))

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
