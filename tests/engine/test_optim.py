"""SOLVER.SALIENCY_LR_FACTOR: the saliency convs step factor times as far, nothing else changes."""
import torch
from detectron2.config import get_cfg
from detectron2.solver import build_lr_scheduler

from ssb_det.config import add_ssb_config
from ssb_det.engine import Trainer
from ssb_det.engine.optim import saliency_parameters
from ssb_det.layers import SaliencySampler


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 1)
        self.sampler = SaliencySampler(4, 0.5, grid_size=5, padding=4, sigma=1.0)
        self.norm = torch.nn.BatchNorm2d(4)

    def forward(self, x):
        a = self.norm(self.conv(x))
        return self.sampler(a).sample(a).square().mean() + a.mean()


def _cfg(factor):
    cfg = add_ssb_config(get_cfg())
    cfg.SOLVER.BASE_LR, cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY = 0.1, 0.0, 0.0
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.SALIENCY_LR_FACTOR = 0, factor
    return cfg


def _one_step(factor):
    torch.manual_seed(0)
    model = _Tiny()
    with torch.no_grad():
        model.sampler.saliency_conv.weight.normal_()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = _cfg(factor)
    optimizer = Trainer.build_optimizer(cfg, model)
    build_lr_scheduler(cfg, optimizer)
    model(torch.randn(2, 4, 12, 16)).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    optimizer.step()
    return optimizer, {n: before[n] - p.detach() for n, p in model.named_parameters()}, grads


def test_saliency_weights_step_factor_times_the_base_rate_others_unchanged():
    optimizer, step, grads = _one_step(10.0)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == 5  # every parameter once
    for name, delta in step.items():
        lr = 1.0 if name == "sampler.saliency_conv.weight" else 0.1  # plain SGD: lr * grad
        torch.testing.assert_close(delta, lr * grads[name], rtol=1e-5, atol=1e-7)


def test_factor_one_leaves_detectron2s_optimizer_alone():
    optimizer, step, grads = _one_step(1.0)
    for name, delta in step.items():
        torch.testing.assert_close(delta, 0.1 * grads[name], rtol=1e-5, atol=1e-7)


def test_uniform_samplers_have_no_saliency_parameters():
    assert saliency_parameters(SaliencySampler(4, 0.5, uniform=True)) == []
