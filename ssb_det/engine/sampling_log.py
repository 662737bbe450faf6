"""Log how far each SSB (and SSB-BoT) block's learned sampling is from uniform while training.

:func:`sampling_statistics_logged` puts forward hooks on a model's saliency samplers for
the duration of a ``with`` block; each training-mode forward then adds ``ssb/<block>/kl``
and ``ssb/<block>/density_ratio`` (batch means, see :mod:`ssb_det.layers.sampling_stats`)
to the current ``EventStorage``, from where Detectron2's writers put them in
``metrics.json`` and TensorBoard. Detection training uses it through
:class:`SamplingStatsHook`, classification pretraining around its loop. Nothing is written
onto the model; samplers in eval mode (evaluation during training) are not logged.
"""
import contextlib

import torch
from detectron2.engine import HookBase
from detectron2.utils.events import get_event_storage

from ..layers.sampling_stats import separable_statistics
from ..modeling.blocks import learned_ssb_blocks
from ..modeling.bot_blocks import learned_ssb_bot_blocks

__all__ = ["sampling_statistics_logged", "SamplingStatsHook"]


@contextlib.contextmanager
def sampling_statistics_logged(model: torch.nn.Module):
    """Within the block, training forwards of ``model`` log its sampling statistics."""
    blocks = {**learned_ssb_blocks(model), **learned_ssb_bot_blocks(model)}
    handles = [block.sampler.register_forward_hook(_logger(name))
               for name, block in blocks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


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


class SamplingStatsHook(HookBase):
    """Detectron2 training hook: :func:`sampling_statistics_logged` for the whole training."""

    def __init__(self):
        self._logging = contextlib.ExitStack()

    def before_train(self):
        self._logging.enter_context(sampling_statistics_logged(self.trainer.model))

    def after_train(self):
        self._logging.close()
