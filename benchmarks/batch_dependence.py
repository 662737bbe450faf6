"""How much an image's features and detections depend on its batch-mates: SSB vs plain ResNet.

Detectron2 pads every image of a batch (``ImageList.from_tensors``) to the largest image,
rounded up to ``size_divisibility`` (32 with FPN). A plain ResNet sees that padding only
through the receptive field of pixels near the image's bottom/right border. An SSB block
pools its saliency over the *whole padded* map and spans its sampling map over it, so the
grid that samples the real image changes with the size of the padding, i.e. with the other
images of the batch.

Since ``MODEL.SSB.PADDING_AWARE`` (default True) each SSB block samples an image within its
own size, so its sampling no longer depends on the padding; ``--compare-padding-unaware``
adds the same models without it.

This script builds a Faster R-CNN R50-FPN with the same seed as a plain ResNet
(``MODEL.SSB.ENABLED False``) and as SSB-ResNet in several saliency states: zero saliency
convs (the initialisation: uniform sampling) and random saliency convs scaled so that each
block's pooled logits have standard deviation ``--logit-std`` on the lone image (a stand-in
for a trained model's non-uniform saliency), or all from ``--weights``. It runs image A
alone and in a batch with a larger image B and prints the relative L2 change of A's FPN
features on A's valid region, of the box head's outputs on fixed boxes in A (a detection
proxy free of the ranking noise of random-weight proposals), and of the SSB sampling rate
over A's rows and columns.

    .venv/bin/python benchmarks/batch_dependence.py            # defaults: A 320x448, B 640x896
    .venv/bin/python benchmarks/batch_dependence.py --weights output/model_final.pth

Numbers measured on a shared CPU are exact (no timing involved), but depend on the random
weights; use ``--seed`` to see the spread.
"""
import argparse
import math

import torch
import torch.nn.functional as F
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes

import ssb_det
from ssb_det.layers import SaliencySampler
from ssb_det.checkpoint import SSBCheckpointer


def build_cfg(ssb_enabled: bool, padding_aware: bool = True):
    cfg = get_cfg()
    ssb_det.add_ssb_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.BACKBONE.NAME = "build_ssb_resnet_fpn_backbone"
    cfg.MODEL.SSB.ENABLED = ssb_enabled
    cfg.MODEL.SSB.PADDING_AWARE = padding_aware
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 100
    return cfg


def smooth_image(h: int, w: int, generator: torch.Generator) -> torch.Tensor:
    """A natural-looking (low-frequency) random image, (3, h, w), values 0..255."""
    coarse = torch.rand(1, 3, max(2, h // 16), max(2, w // 16), generator=generator)
    fine = torch.rand(1, 3, h, w, generator=generator)
    img = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False) * 0.8 + fine * 0.2
    return (img[0].clamp(0, 1) * 255).round()


def randomise_saliency(model, image, logit_std: float, generator: torch.Generator):
    """Random saliency convs, each rescaled so its pooled logits have std ``logit_std`` on ``image``.

    Returns the number of SSB blocks changed.
    """
    samplers = [m for m in model.modules() if isinstance(m, SaliencySampler)]
    stats = {}

    def hook(sampler):
        def fn(module, inputs):
            # The pooled logits, computed as the sampler does (pool, then the 1x1 conv).
            pooled = F.adaptive_avg_pool2d(inputs[0].float(), sampler.grid_size)
            stats[sampler] = F.conv2d(pooled, sampler.saliency_conv.weight.float()).std().item()
        return fn

    handles = []
    for s in samplers:
        if s.uniform:
            continue
        w = s.saliency_conv.weight
        w.data.copy_(torch.randn(w.shape, generator=generator))
        handles.append(s.register_forward_pre_hook(hook(s)))
    # Calibrate block by block: rescaling an earlier block changes later blocks' inputs.
    for s in samplers:
        if s.uniform:
            continue
        with torch.no_grad():
            model([{"image": image}])
        std = stats[s]
        if std > 0 and math.isfinite(std):
            s.saliency_conv.weight.data.mul_(logit_std / std)
    for h in handles:
        h.remove()
    return len(handles)


def fixed_boxes(h: int, w: int) -> Boxes:
    """A fixed set of boxes inside an ``h x w`` image: 4 sizes on a 4x4 grid of centres."""
    boxes = []
    for frac in (0.1, 0.2, 0.35, 0.5):
        bh, bw = frac * h, frac * w
        for cy in torch.linspace(bh / 2, h - bh / 2, 4):
            for cx in torch.linspace(bw / 2, w - bw / 2, 4):
                boxes.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
    return Boxes(torch.tensor(boxes))


@torch.no_grad()
def first_image_outputs(model, images):
    """FPN features and box-head outputs of ``images[0]`` when run in a batch with ``images``.

    The box head runs on fixed boxes (not on the model's own proposals), so the numbers
    measure how the features change, without the ranking noise of random-weight proposals.
    """
    batched = model.preprocess_image([{"image": im} for im in images])
    grids = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: grids.append(out))
             for m in model.modules() if isinstance(m, SaliencySampler)]
    features = model.backbone(batched.tensor)
    for hook in hooks:
        hook.remove()
    first = {k: v[:1] for k, v in features.items()}
    heads = model.roi_heads
    pooled = heads.box_pooler([first[f] for f in heads.box_in_features],
                              [fixed_boxes(*images[0].shape[-2:])])
    logits, deltas = heads.box_predictor(heads.box_head(pooled))
    return first, torch.cat([logits, deltas], dim=1), grids


def relative_change(ref, other):
    return ((other - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def measure(model, img_a, img_b):
    """Relative change of A's features (per level, on A's valid region) and box-head
    outputs, alone vs batched with B."""
    feats_alone, head_alone, grids_alone = first_image_outputs(model, [img_a])
    feats_batch, head_batch, grids_batch = first_image_outputs(model, [img_a, img_b])
    h, w = img_a.shape[-2:]
    change = {}
    for name, f_alone in feats_alone.items():
        stride = model.backbone.output_shape()[name].stride
        hh, ww = math.ceil(h / stride), math.ceil(w / stride)
        change[name] = relative_change(f_alone[0, :, :hh, :ww], feats_batch[name][0, :, :hh, :ww])
    change["box head"] = relative_change(head_alone, head_batch)
    change["grid rate"] = grid_rate_change(grids_alone, grids_batch)
    return change


def grid_rate_change(grids_alone, grids_batch):
    """Mean relative change of the sampling rate over image A's rows and columns, over all
    SSB blocks (0 for a plain ResNet, which has none).

    The rate of a full-size row is the derivative of its position in the sampled map
    (``inverse_positions``); uniform sampling has rate ``r`` everywhere. A's valid region
    is the top-left part of each map, of the size the stride gives.
    """
    if not grids_alone:
        return 0.0
    changes = []
    for ga, gb in zip(grids_alone, grids_batch):
        for axis in (0, 1):
            pa = ga.inverse_positions()[axis][0]
            pb = gb.inverse_positions()[axis][0]
            # A fills its lone map when its size is a multiple of 32; else this includes
            # the few padded rows/columns of the lone map.
            n_valid = min(pa.shape[0], pb.shape[0])
            ra, rb = pa[:n_valid].diff(), pb[:n_valid].diff()
            if ra.numel():
                changes.append(((rb - ra).abs().mean() / ra.abs().mean()).item())
    return sum(changes) / len(changes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-a", type=int, nargs=2, default=[320, 448], metavar=("H", "W"))
    parser.add_argument("--size-b", type=int, nargs=2, default=[640, 896], metavar=("H", "W"))
    parser.add_argument("--logit-std", type=float, nargs="+", default=[1.0, 3.0],
                        help="std of each SSB block's pooled saliency logits (random saliency)")
    parser.add_argument("--weights", default="", help="a trained checkpoint for both models "
                        "(loaded non-strictly; the saliency then comes from the file)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-padding-unaware", action="store_true",
                        help="also run each SSB model with MODEL.SSB.PADDING_AWARE False")
    args = parser.parse_args(argv)

    gen = torch.Generator().manual_seed(args.seed)
    img_a = smooth_image(*args.size_a, gen)
    img_b = smooth_image(*args.size_b, gen)
    awareness = (True, False) if args.compare_padding_unaware else (True,)
    if args.weights:
        variants = [("plain ResNet-50", False, None, True)]
        variants += [(f"SSB-ResNet-50 (file){'' if aware else ', unaware'}", True, None, aware)
                     for aware in awareness]
    else:
        variants = [("plain ResNet-50", False, None, True),
                    ("SSB, uniform saliency (init)", True, None, True)]
        variants += [(f"SSB, random saliency, std {std:g}{'' if aware else ', unaware'}", True,
                      std, aware) for std in args.logit_std for aware in awareness]
    rows = []
    for label, enabled, logit_std, aware in variants:
        torch.manual_seed(args.seed)
        model = build_model(build_cfg(enabled, aware)).eval()
        if args.weights:
            SSBCheckpointer(model).load(args.weights)
        elif logit_std is not None:
            randomise_saliency(model, img_a, logit_std, torch.Generator().manual_seed(args.seed + 1))
        rows.append((label, measure(model, img_a, img_b)))

    pad = tuple(math.ceil(s / 32) * 32 for s in args.size_b)
    print(f"Image A {tuple(args.size_a)} alone vs batched with B {tuple(args.size_b)} "
          f"(A padded to {pad}); seed {args.seed}, weights {args.weights or 'random'}")
    print("relative L2 change of A's FPN features on its valid region, of the box head's outputs "
          "(class logits + box deltas) on 64 fixed boxes in A, and of the SSB sampling rate over A")
    columns = list(rows[0][1])
    print(f"{'model':40s}" + "".join(f"{c:>10s}" for c in columns))
    for label, change in rows:
        print(f"{label:40s}" + "".join(f"{change[c]:10.2e}" for c in columns))
    plain = rows[0][1]
    for label, change in rows[1:]:
        ratios = ", ".join(f"{c} {change[c] / max(plain[c], 1e-12):.2f}x" for c in columns
                           if c != "grid rate")
        print(f"{label} / plain: {ratios}")


if __name__ == "__main__":
    main()
