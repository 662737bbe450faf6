"""The A/B of the recycled outputs turns the reuse off for the "fresh" model only, and
restores it whatever happens."""
import pytest
import torch

from ssb_study.recycling_ab import NAMES, format_table, forward_step
from ssb_det.modeling import blocks


class _Probe(torch.nn.Module):
    def __init__(self, fail=False):
        super().__init__()
        self.seen, self.fail = [], fail

    def forward(self, x):
        self.seen.append(blocks.may_reuse_memory())
        if self.fail:
            raise RuntimeError("boom")
        return x


def test_the_fresh_step_runs_without_reuse_and_restores_it():
    probe, x = _Probe(), torch.zeros(1)
    forward_step(probe, x, recycle=True)()
    forward_step(probe, x, recycle=False)()
    assert probe.seen == [True, False]
    assert blocks.may_reuse_memory()
    failing = _Probe(fail=True)
    with pytest.raises(RuntimeError, match="boom"):
        forward_step(failing, x, recycle=False)()
    assert failing.seen == [False] and blocks.may_reuse_memory()


def test_table_ratios_by_hand():
    table = format_table([{"order": list(NAMES), NAMES[0]: 750.0, NAMES[1]: 800.0,
                           NAMES[2]: 1000.0}])
    assert table.splitlines()[-1].endswith("| 750 | 800 | 1000 | 0.750 | 0.800 | 0.938 |")
