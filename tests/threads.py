"""Shared check of the tests: a model shared by threads gives what sequential calls give."""
import threading

import torch


def assert_threads_match_sequential(model, inputs, repeats: int = 2):
    """Each input's outputs, computed ``repeats`` times in its own thread while the others
    run, equal (exactly) its output computed alone first."""
    with torch.no_grad():
        expected = [model(x) for x in inputs]
    results = [[] for _ in inputs]

    def run(i):
        with torch.no_grad():
            for _ in range(repeats):
                results[i].append(model(inputs[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for got, want in zip(results, expected):
        assert len(got) == repeats
        for out in got:
            assert all(torch.equal(out[k], want[k]) for k in want)
