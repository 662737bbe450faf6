"""Why does a learned saliency stay near uniform? Two measurements.

1. :func:`logit_scale_response`: how far from uniform the Recasens map moves for saliency
   logits of a given spread, for a feature map of a given size and a given kernel width
   (pure maths; no model). It says how large the saliency conv's outputs must grow before
   sampling changes at all.
2. :func:`block_diagnosis`: on a (trained or initial) detector and a training batch, per SSB
   block: the saliency conv's weight norm, the spread of its pooled logits, the resulting
   sampling statistics, the sampling density at the centres of the batch's ground-truth boxes
   (does the map look at the objects?), and the gradient the loss sends to the saliency conv
   relative to the gradient of the block's first conv (per weight, RMS).
"""
import json
import math
import os
import random
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ssb_det.layers import recasens_knots_1d
from ssb_det.layers.sampling_stats import density_at, separable_statistics
from ssb_det.modeling.blocks import ssb_blocks

__all__ = ["logit_scale_response", "block_diagnosis", "format_markdown", "main"]


def _knots_of_logits(logits: torch.Tensor, grid_size: int, padding: int, sigma: float):
    """Separable knots of ``(N, 1, H, W)`` per-pixel logits, as the sampler builds them."""
    pooled = F.adaptive_avg_pool2d(logits.double(), (grid_size, grid_size)).flatten(1)
    saliency = torch.softmax(pooled, dim=1).view(-1, grid_size, grid_size)
    return (recasens_knots_1d(saliency.sum(dim=2), padding, sigma),
            recasens_knots_1d(saliency.sum(dim=1), padding, sigma))


def logit_scale_response(stds: Sequence[float], sigmas: Sequence[float], *,
                         map_size: Tuple[int, int] = (16, 20), grid_size: int = 31,
                         padding: int = 30, draws: int = 32, seed: int = 0) -> List[dict]:
    """Sampling statistics of random per-pixel logits of standard deviation ``std``.

    Two logit patterns on a ``map_size`` map: ``"noise"``, i.i.d. Gaussian per pixel; and
    ``"object"``, a 3x3-pixel blob of height ``std`` at a random place (a small object).

    Returns:
        list[dict]: one row per (pattern, sigma, std): median ``density_ratio`` and ``kl``
        over ``draws`` maps, and for "object" the median sampling density at the blob
        relative to uniform (``zoom``).
    """
    gen = torch.Generator().manual_seed(seed)
    h, w = map_size
    rows = []
    for sigma in sigmas:
        for std in stds:
            noise = torch.randn(draws, 1, h, w, generator=gen, dtype=torch.float64) * std
            blob = torch.zeros(draws, 1, h, w, dtype=torch.float64)
            ys = torch.randint(1, h - 1, (draws,), generator=gen)
            xs = torch.randint(1, w - 1, (draws,), generator=gen)
            for i in range(draws):
                blob[i, 0, ys[i] - 1:ys[i] + 2, xs[i] - 1:xs[i] + 2] = std
            for pattern, logits in (("noise", noise), ("object", blob)):
                ky, kx = _knots_of_logits(logits, grid_size, padding, sigma)
                kl, ratio = separable_statistics(ky, kx)
                row = dict(pattern=pattern, sigma=sigma, std=std,
                           density_ratio=float(ratio.median()), kl=float(kl.median()))
                if pattern == "object":
                    # Density at the blob centre: 1 / (G * width of the cell holding it).
                    cy = ((ys.double() + 0.5) / h * grid_size).long()
                    cx = ((xs.double() + 0.5) / w * grid_size).long()
                    wy = ky.diff(dim=1).gather(1, cy[:, None])[:, 0]
                    wx = kx.diff(dim=1).gather(1, cx[:, None])[:, 0]
                    row["zoom"] = float((1.0 / (grid_size * wy) / (grid_size * wx)).median())
                rows.append(row)
    return rows


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().pow(2).mean().sqrt())


def block_diagnosis(model: torch.nn.Module, batch: List[dict]) -> Dict[str, dict]:
    """Per SSB block of a Detectron2 detector, on one training batch (one forward and backward
    in training mode; the parameters are left as they were and gradients are cleared, but
    BatchNorm running statistics take the batch's update: diagnose a copy to keep them).

    Returns:
        dict: ``{block: {weight_norm, logit_std, density_ratio, kl, zoom_at_boxes,
        grad_ratio}}`` where ``logit_std`` is the spread of the pooled saliency logits
        (``SaliencySampler.logits``, bounded if the sampler bounds them) over the grid cells
        (mean over images), ``zoom_at_boxes`` the 2-D sampling density at the
        ground-truth box centres relative to uniform (geometric mean over the boxes; 1: the
        map does not favour them) and ``grad_ratio`` the per-weight RMS gradient of the
        saliency conv over that of the block's ``conv1``. The statistics of the sampling are
        those of the grid the block samples with (an ``OracleSamplingRCNN``'s, say); a block
        without a saliency conv (uniform) has NaN for the three saliency-conv entries.
    """
    from detectron2.utils.events import EventStorage

    blocks = ssb_blocks(model)
    seen = {}

    def record(name):
        def hook(module, inputs, grid):
            logit_std = float("nan")
            if not module.uniform:
                with torch.no_grad():
                    logits = module.logits(*inputs)
                logit_std = float(logits.std(dim=1).mean())
            kl, ratio = separable_statistics(grid.knots_y.detach(), grid.knots_x.detach())
            seen[name] = dict(logit_std=logit_std,
                              density_ratio=float(ratio.mean()), kl=float(kl.mean()),
                              zoom_at_boxes=_zoom_at_boxes(grid, batch))
        return hook

    handles = [b.sampler.register_forward_hook(record(n)) for n, b in blocks.items()]
    was_training = model.training
    try:
        model.train()
        model.zero_grad(set_to_none=True)
        with EventStorage(0):
            losses = model(batch)
        sum(losses.values()).backward()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for name, block in blocks.items():
        out[name] = dict(seen[name], weight_norm=float("nan"), grad_ratio=float("nan"))
        if not block.sampler.uniform:
            weight = block.sampler.saliency_conv.weight
            out[name].update(weight_norm=float(weight.detach().norm()),
                             grad_ratio=_rms(weight.grad) / max(_rms(block.conv1.weight.grad), 1e-30))
    model.zero_grad(set_to_none=True)
    return out


def _zoom_at_boxes(grid, batch: List[dict]) -> float:
    """Geometric mean over the batch's ground-truth boxes of the 2-D sampling density at
    their centres relative to uniform (nan without boxes)."""
    logs = []
    with torch.no_grad():
        for i, x in enumerate(batch):
            inst = x["instances"]
            h, w = inst.image_size
            centres = inst.gt_boxes.get_centers().double()
            dy = density_at(grid.knots_y[i].detach(), centres[:, 1] / h)
            dx = density_at(grid.knots_x[i].detach(), centres[:, 0] / w)
            logs.append(torch.log(dy * dx))
    logs = torch.cat(logs) if logs else torch.zeros(0)
    return float(logs.mean().exp()) if logs.numel() else float("nan")


def _training_batch(cfg, images: int) -> List[dict]:
    from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
    from detectron2.data.samplers import TrainingSampler

    from ssb_det.data import FileNamingDatasetMapper

    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.IMS_PER_BATCH = images
    cfg.DATALOADER.NUM_WORKERS = 0
    # The same images and flips at every call: a seeded sampler (Detectron2's default draws
    # its seed at random) and the augmentations' global generators seeded, then restored.
    dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN)
    loader = build_detection_train_loader(cfg, mapper=FileNamingDatasetMapper(cfg, True),
                                          dataset=dataset,
                                          sampler=TrainingSampler(len(dataset), seed=0))
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        np.random.seed(0)
        random.seed(0)
        try:
            return next(iter(loader))
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


def _g3(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.3g}"  # NaN: the block has no saliency conv


def format_markdown(response: List[dict], blocks: Dict[str, Dict[str, dict]]) -> str:
    lines = ["| map | pattern | kernel sigma | logit scale (noise: std; object: blob height) | "
             "density max/min | KL | zoom at object |",
             "|---|---|---|---|---|---|---|"]
    for r in response:
        zoom = f"{r['zoom']:.3g}" if "zoom" in r else "-"
        lines.append(f"| {r['map']} | {r['pattern']} | {r['sigma']} | {r['std']} | "
                     f"{r['density_ratio']:.3g} | {r['kl']:.3g} | {zoom} |")
    for label, per_block in blocks.items():
        lines += ["", f"{label}:", "",
                  "| block | saliency weight norm | pooled logit std | density max/min | KL | "
                  "density at box centres | grad RMS saliency / conv1 |",
                  "|---|---|---|---|---|---|---|"]
        for name, d in per_block.items():
            conv = [_g3(d[k]) for k in ("weight_norm", "logit_std", "grad_ratio")]
            lines.append(f"| {name} | {conv[0]} | {conv[1]} | {d['density_ratio']:.4g} | "
                         f"{d['kl']:.3g} | {d['zoom_at_boxes']:.3g} | {conv[2]} |")
    return "\n".join(lines) + "\n"


def main(args) -> int:
    """``projects/SSBStudy/saliency_diagnosis.py`` from parsed arguments."""
    from detectron2.checkpoint import DetectionCheckpointer

    from ssb_det.analysis.models import build_detector

    from .config import load_study_cfg

    cfg = load_study_cfg(args.config_file, args.opts)
    stride_sizes = [(cfg.INPUT.MIN_SIZE_TEST // s, cfg.INPUT.MAX_SIZE_TEST // s) for s in (4, 16)]
    response = []
    for size in stride_sizes:
        for row in logit_scale_response([0.3, 1.0, 3.0, 10.0], [cfg.MODEL.SSB.KERNEL_SIGMA, 2.0],
                                        map_size=size, grid_size=cfg.MODEL.SSB.GRID_SIZE,
                                        padding=cfg.MODEL.SSB.GRID_PADDING):
            response.append(dict(row, map=f"{size[0]}x{size[1]}"))
    batch = _training_batch(cfg, args.images)
    blocks = {}
    model = build_detector(cfg)
    # At initialisation the saliency conv is zero; its gradient is what starts it moving.
    blocks["initialisation"] = block_diagnosis(model, batch)
    for path in args.weights:
        model = build_detector(cfg)
        DetectionCheckpointer(model).load(path)
        blocks[path] = block_diagnosis(model, batch)
    text = format_markdown(response, blocks)
    print(text)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output + ".md", "w") as f:
            f.write(text)
        with open(args.output + ".json", "w") as f:
            json.dump(dict(response=response, blocks=blocks), f, indent=1)
    return 0
