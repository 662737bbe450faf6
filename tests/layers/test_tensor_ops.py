"""``sole_reference``: the check that lets a stage reuse a dead block output's memory must
say no whenever anything else can still reach the tensor or its memory."""
import weakref

import numpy as np
import pytest
import torch

from ssb_det.layers import sole_reference


def test_a_tensor_held_by_one_local_variable_alone_is_a_sole_reference():
    t = torch.randn(4, 5)
    assert sole_reference(t)
    u = torch.randn(3) * 2  # the result of an op, never named elsewhere
    assert sole_reference(u)


HOLDERS = {
    "a list": lambda t: [t],
    "a dict": lambda t: {"kept": t},
    "a closure": lambda t: (lambda: t),
    "a view": lambda t: t.view(2, 10),
    "a slice": lambda t: t[1:],
    "a detached alias": lambda t: t.detach(),
    "the storage object": lambda t: t.untyped_storage(),
    "a NumPy array": lambda t: t.numpy(),
    "a NumPy view of a NumPy array": lambda t: np.asarray(t.numpy())[2:],
    "a weak reference": lambda t: weakref.ref(t),
}


@pytest.mark.parametrize("holder", list(HOLDERS))
def test_anything_else_that_reaches_the_tensor_or_its_memory_makes_it_shared(holder):
    t = torch.randn(4, 5)
    kept = HOLDERS[holder](t)
    assert not sole_reference(t)
    del kept
    assert sole_reference(t)  # the same tensor once the holder is gone


def test_views_gradients_and_autograd_owners_are_never_sole_references():
    base = torch.randn(4, 5)
    view = base[1:]
    del base  # the view alone still shares a storage it does not own
    assert not sole_reference(view)
    leaf = torch.randn(3, requires_grad=True)
    assert not sole_reference(leaf)
    y = leaf.exp()  # exp saves its output for backward
    alias = y.detach()
    graph = y.sum()  # keeps exp's backward, and what it saved, alive
    del y
    assert not sole_reference(alias)
    del graph  # no graph left: the alias is the last owner
    assert sole_reference(alias)
    param = torch.nn.Parameter(torch.randn(3), requires_grad=False)  # a subclass
    assert not sole_reference(param)
