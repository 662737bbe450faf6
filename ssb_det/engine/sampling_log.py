"""Log how far each SSB (and SSB-BoT) block's learned sampling is from uniform while training.

:func:`sampling_statistics_logged` puts forward hooks on a model's saliency samplers for
the duration of a ``with`` block; each training-mode forward adds each block's ``kl`` and
``density_ratio`` (batch means, see :mod:`ssb_det.layers.sampling_stats`) to running sums
that stay on the model's device: reading them would make the host wait for the device
(one sync per block and iteration). :meth:`SamplingStatistics.put` reads them all at once,
once per logging period, and puts the means of the period's forwards into the current
``EventStorage`` as ``ssb/<block>/kl`` and ``ssb/<block>/density_ratio``, from where
Detectron2's writers put them in ``metrics.json`` and TensorBoard. Detection training uses it
through :class:`SamplingStatsHook`, classification pretraining at its logging steps. Nothing
is written onto the model; samplers in eval mode (evaluation during training) are not logged.
"""
import contextlib
import threading

import torch
from detectron2.engine import HookBase, hooks
from detectron2.utils.events import get_event_storage

from ..layers.sampling_stats import separable_statistics
from ..modeling.blocks import learned_ssb_blocks
from ..modeling.bot_blocks import learned_ssb_bot_blocks

__all__ = ["sampling_statistics_logged", "SamplingStatistics", "SamplingStatsHook",
           "insert_before_writer"]


class SamplingStatistics:
    """Running sums of the sampling statistics of the training forwards since the last
    :meth:`put`, kept on the device."""

    def __init__(self):
        self._sums = {}  # name -> (2,) tensor: kl and density ratio summed over forwards
        self._counts = {}
        self._lock = threading.Lock()  # forwards of a model may run in several threads

    def add(self, name: str, grid) -> None:
        with torch.no_grad():
            kl, ratio = separable_statistics(grid.knots_y.detach(), grid.knots_x.detach())
            value = torch.stack([kl.mean(), ratio.mean()])
        with self._lock:
            self._sums[name] = self._sums[name] + value if name in self._sums else value
            self._counts[name] = self._counts.get(name, 0) + 1

    def put(self, storage=None) -> None:
        """Put the means since the last call into ``storage`` (the current ``EventStorage``
        by default), reading the device once; nothing if no training forward ran."""
        with self._lock:
            sums, counts = self._sums, self._counts
            self._sums, self._counts = {}, {}
        if not sums:
            return
        names = list(sums)
        values = torch.stack([sums[n] for n in names]).double().cpu().tolist()  # the one sync
        storage = storage if storage is not None else get_event_storage()
        scalars = {}
        for name, (kl, ratio) in zip(names, values):
            scalars[f"ssb/{name}/kl"] = kl / counts[name]
            scalars[f"ssb/{name}/density_ratio"] = ratio / counts[name]
        storage.put_scalars(**scalars, smoothing_hint=False)


@contextlib.contextmanager
def sampling_statistics_logged(model: torch.nn.Module):
    """Within the block, training forwards of ``model`` add their sampling statistics to the
    :class:`SamplingStatistics` it yields; call its ``put`` at each logging step."""
    stats = SamplingStatistics()
    blocks = {**learned_ssb_blocks(model), **learned_ssb_bot_blocks(model)}
    handles = [block.sampler.register_forward_hook(_recorder(stats, name))
               for name, block in blocks.items()]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def _recorder(stats: SamplingStatistics, name: str):
    def record(module, inputs, grid):
        if module.training:
            stats.add(name, grid)
    return record


class SamplingStatsHook(HookBase):
    """Detectron2 training hook: :func:`sampling_statistics_logged` for the whole training,
    the means put into the storage at the steps Detectron2's ``PeriodicWriter`` writes (place
    this hook before it: see :meth:`~ssb_det.engine.train.Trainer.build_hooks`).

    Args:
        period (int): logging period in iterations (Detectron2's writers: 20).
    """

    def __init__(self, period: int = 20):
        self._period = int(period)
        self._logging = contextlib.ExitStack()
        self._stats = None

    def before_train(self):
        self._stats = self._logging.enter_context(sampling_statistics_logged(self.trainer.model))

    def after_step(self):
        done = self.trainer.iter + 1
        if done % self._period == 0 or done == self.trainer.max_iter:
            self._stats.put()

    def after_train(self):
        self._logging.close()


def insert_before_writer(hook_list, hook: HookBase):
    """``hook_list`` with ``hook`` placed just before Detectron2's ``PeriodicWriter`` (so what
    it puts at a writing step is written at that step), or at the end if there is none."""
    for i, h in enumerate(hook_list):
        if isinstance(h, hooks.PeriodicWriter):
            return hook_list[:i] + [hook] + hook_list[i:]
    return hook_list + [hook]
