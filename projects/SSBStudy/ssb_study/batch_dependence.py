"""How much an image's features and detections depend on its batch-mates: SSB vs plain ResNet.

Detectron2 pads every image of a batch (``ImageList.from_tensors``) to the largest image,
rounded up to ``size_divisibility`` (32 with FPN). A plain ResNet sees that padding only
through the receptive field of pixels near the image's bottom/right border. An SSB block that
pooled its saliency over the whole padded map would sample the real image differently with
every batch; ``MODEL.SSB.PADDING_AWARE`` (the default) samples each image within its own size.

:func:`batch_dependence` runs image A alone and batched with a larger image B and measures the
relative L2 change of A's FPN features on its valid region, of the box head's outputs on fixed
boxes in A (a detection proxy free of the ranking noise of random-weight proposals) and of the
SSB sampling rate over A's rows and columns. ``projects/SSBStudy/batch_dependence.py`` is
its command line.
"""
import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes

from ssb_det.checkpoint import SSBCheckpointer
from ssb_det.layers import SaliencySampler
from ssb_det.analysis.models import build_detector, cfg_label

from .config import load_study_cfg

__all__ = ["smooth_image", "randomise_saliency", "fixed_boxes", "relative_change",
           "grid_rate_change", "measure", "batch_dependence", "format_report"]

Row = Tuple[str, Dict[str, float]]


def smooth_image(h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """A natural-looking (low-frequency) random image, ``(3, h, w)``, values 0..255."""
    coarse = torch.rand(1, 3, max(2, h // 16), max(2, w // 16), generator=generator)
    fine = torch.rand(1, 3, h, w, generator=generator)
    img = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False) * 0.8 + fine * 0.2
    return (img[0].clamp(0, 1) * 255).round()


def randomise_saliency(model, image: torch.Tensor, logit_std: float,
                       generator: torch.Generator) -> int:
    """Give every learned SSB block random saliency weights, each rescaled so that its pooled
    logits have standard deviation ``logit_std`` over the grid on ``image`` run alone: a
    stand-in for a trained model's non-uniform saliency. Returns the number of blocks changed.
    """
    learned = [m for m in model.modules() if isinstance(m, SaliencySampler) and not m.uniform]
    stds = {}

    def record(sampler, args):
        stds[sampler] = sampler.logits(*args).std().item()

    handles = [s.register_forward_pre_hook(record) for s in learned]
    try:
        for s in learned:
            w = s.saliency_conv.weight
            with torch.no_grad():
                w.copy_(torch.randn(w.shape, generator=generator))
        # Block by block: rescaling a block changes the inputs of the blocks after it. The
        # samplers are all in the backbone: the heads need not run.
        batched = model.preprocess_image([{"image": image}]).tensor
        for s in learned:
            with torch.no_grad():
                model.backbone(batched)
                std = stds[s]
                if std > 0 and math.isfinite(std):
                    s.saliency_conv.weight.mul_(logit_std / std)
    finally:
        for h in handles:
            h.remove()
    return len(learned)


def fixed_boxes(h: int, w: int) -> Boxes:
    """64 boxes inside an ``h x w`` image: 4 sizes (0.1-0.5 of each side) on a 4x4 grid of
    centres."""
    boxes = []
    for frac in (0.1, 0.2, 0.35, 0.5):
        bh, bw = frac * h, frac * w
        for cy in torch.linspace(bh / 2, h - bh / 2, 4):
            for cx in torch.linspace(bw / 2, w - bw / 2, 4):
                boxes.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
    return Boxes(torch.tensor(boxes))


@torch.no_grad()
def _first_image_outputs(model, images):
    """FPN features and box-head outputs of ``images[0]`` run in a batch with ``images``, and
    the grids of every SSB block."""
    batched = model.preprocess_image([{"image": im} for im in images])
    grids = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: grids.append(out))
             for m in model.modules() if isinstance(m, SaliencySampler)]
    try:
        features = model.backbone(batched.tensor)
    finally:
        for hook in hooks:
            hook.remove()
    first = {k: v[:1] for k, v in features.items()}
    heads = model.roi_heads
    pooled = heads.box_pooler([first[f] for f in heads.box_in_features],
                              [fixed_boxes(*images[0].shape[-2:])])
    logits, deltas = heads.box_predictor(heads.box_head(pooled))
    return first, torch.cat([logits, deltas], dim=1), grids


def relative_change(ref: torch.Tensor, other: torch.Tensor) -> float:
    """``|other - ref| / |ref|`` (L2 norms)."""
    return ((other - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def grid_rate_change(grids_alone, grids_batch) -> float:
    """Mean relative change of the first image's sampling rate over its rows and columns, over
    all SSB blocks (0 for a plain ResNet, which has none).

    The rate of a full-size row is the derivative of its position in the sampled map
    (``inverse_positions``). The first image's region is the top-left part of each map.
    """
    if not grids_alone:
        return 0.0
    changes = []
    for ga, gb in zip(grids_alone, grids_batch):
        for axis in (0, 1):
            pa = ga.inverse_positions()[axis][0]
            pb = gb.inverse_positions()[axis][0]
            # The lone map is the image rounded up to the stride; compare what both cover.
            n_valid = min(pa.shape[0], pb.shape[0])
            ra, rb = pa[:n_valid].diff(), pb[:n_valid].diff()
            if ra.numel():
                changes.append(((rb - ra).abs().mean() / ra.abs().mean()).item())
    return sum(changes) / len(changes)


def measure(model, img_a: torch.Tensor, img_b: torch.Tensor) -> Dict[str, float]:
    """Relative change of A's outputs, alone vs batched with B: per FPN level (on A's valid
    region), ``"box head"`` and ``"grid rate"``."""
    feats_alone, head_alone, grids_alone = _first_image_outputs(model, [img_a])
    feats_batch, head_batch, grids_batch = _first_image_outputs(model, [img_a, img_b])
    h, w = img_a.shape[-2:]
    change = {}
    for name, f_alone in feats_alone.items():
        stride = model.backbone.output_shape()[name].stride
        hh, ww = math.ceil(h / stride), math.ceil(w / stride)
        change[name] = relative_change(f_alone[0, :, :hh, :ww], feats_batch[name][0, :, :hh, :ww])
    change["box head"] = relative_change(head_alone, head_batch)
    change["grid rate"] = grid_rate_change(grids_alone, grids_batch)
    return change


def batch_dependence(size_a: Sequence[int] = (320, 448), size_b: Sequence[int] = (640, 896), *,
                     logit_stds: Sequence[float] = (1.0, 3.0), weights: str = "", seed: int = 0,
                     compare_padding_unaware: bool = False, config_file=None,
                     opts: Sequence[str] = ()) -> List[Row]:
    """``[(label, change)]``: :func:`measure` for the plain twin first, then SSB models.

    Without ``weights`` the SSB models are the initialisation (zero saliency: uniform
    sampling) and one random saliency per ``logit_stds`` (:func:`randomise_saliency`); with
    them, the file's weights in each model. Every model is built with ``seed``.

    Args:
        config_file, opts: the SSB detector (:func:`~ssb_det.analysis.models.load_cfg`:
            default Faster R-CNN with the SSB-R50-FPN backbone).
        compare_padding_unaware: also run each SSB model with ``MODEL.SSB.PADDING_AWARE False``.
    """
    gen = torch.Generator().manual_seed(seed)
    img_a = smooth_image(*size_a, gen)
    img_b = smooth_image(*size_b, gen)
    awareness = (True, False) if compare_padding_unaware else (True,)
    unaware = {True: "", False: ", unaware"}
    if weights:
        models = [("SSB (file)" + unaware[a], True, None, a) for a in awareness]
    else:
        models = [("SSB, uniform saliency (init)", True, None, True)]
        models += [(f"SSB, random saliency, std {std:g}{unaware[a]}", True, std, a)
                   for std in logit_stds for a in awareness]
    rows = []
    for label, enabled, logit_std, aware in [(None, False, None, True)] + models:
        cfg = load_study_cfg(config_file, list(opts) + [
            "MODEL.SSB.ENABLED", str(enabled), "MODEL.SSB.PADDING_AWARE", str(aware)])
        label = label or f"plain {cfg_label(cfg)}"
        model = build_detector(cfg, seed)
        if weights:
            SSBCheckpointer(model).load(weights)
        elif logit_std is not None:
            randomise_saliency(model, img_a, logit_std, torch.Generator().manual_seed(seed + 1))
        rows.append((label, measure(model, img_a, img_b)))
    return rows


def format_report(rows: List[Row], size_a, size_b, seed: int = 0, weights: str = "") -> str:
    """The table :func:`batch_dependence`'s rows print as, and each SSB row over the plain one."""
    pad = tuple(math.ceil(s / 32) * 32 for s in size_b)
    lines = [
        f"Image A {tuple(size_a)} alone vs batched with B {tuple(size_b)} (A padded to {pad}); "
        f"seed {seed}, weights {weights or 'random'}",
        "relative L2 change of A's FPN features on its valid region, of the box head's outputs "
        "(class logits + box deltas) on 64 fixed boxes in A, and of the SSB sampling rate over A",
    ]
    columns = list(rows[0][1])
    lines.append(f"{'model':40s}" + "".join(f"{c:>10s}" for c in columns))
    for label, change in rows:
        lines.append(f"{label:40s}" + "".join(f"{change[c]:10.2e}" for c in columns))
    plain = rows[0][1]
    for label, change in rows[1:]:
        ratios = ", ".join(f"{c} {change[c] / max(plain[c], 1e-12):.2f}x" for c in columns
                           if c != "grid rate")
        lines.append(f"{label} / plain: {ratios}")
    return "\n".join(lines)
