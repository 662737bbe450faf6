"""Where each SSB block looks: the sampling positions of every block drawn over the input
image, with the sampling density as a heat map, one PNG per block plus a montage.

With a zero-initialised (untrained) saliency, or ``MODEL.SSB.UNIFORM``, every block samples
a regular lattice (density 1 everywhere); trained weights show where each layer zooms in.
The figures say which of the two they show.
"""
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.data import transforms as T

from ..data.validation import read_image  # names the file; scales 16-bit images
from ..checkpoint import SSBCheckpointer
from ..layers import SaliencySampler
from ..modeling.blocks import SSBBottleneckBlock
from .models import build_detector

__all__ = ["BlockSampling", "sampling_state", "collect_sampling", "draw_block",
           "draw_montage", "visualize_sampling"]


@dataclass
class BlockSampling:
    """Sampling of one SSB block for one image.

    Attributes:
        name (str): module name, e.g. ``res2.1``.
        stride (int): feature stride of the block's stage (image pixels per feature pixel).
        feature_size (tuple[int, int]): ``(H, W)`` of the block's feature map.
        sampled_size (tuple[int, int]): ``(h, w)``.
        points (np.ndarray): ``(h * w, 2)`` sampled positions ``(x, y)`` in image pixels.
        rows (np.ndarray): ``(h,)`` sampled row positions.
        cols (np.ndarray): ``(w,)`` sampled column positions.
        density (np.ndarray): ``(H, W)`` sampling density relative to uniform sampling at
            the same ratio (1 everywhere for uniform sampling), from the slope of the inverse
            map.
    """

    name: str
    stride: int
    feature_size: tuple
    sampled_size: tuple
    points: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    density: np.ndarray


def sampling_state(model: torch.nn.Module) -> str:
    """``"uniform"`` (``MODEL.SSB.UNIFORM``), ``"untrained"`` (every saliency conv is zero,
    as initialised or loaded from weights without them: uniform sampling) or ``"trained"``
    (non-zero saliency convs, i.e. weights that learned where to sample)."""
    samplers = [m for m in model.modules() if isinstance(m, SaliencySampler)]
    if not samplers:
        raise ValueError("the model has no SSB blocks (is MODEL.SSB.ENABLED False?)")
    if all(s.uniform for s in samplers):
        return "uniform"
    learned = [s for s in samplers if not s.uniform]
    if all(torch.count_nonzero(s.saliency_conv.weight) == 0 for s in learned):
        return "untrained"
    return "trained"


STATE_TEXT = {
    "uniform": "uniform sampling (MODEL.SSB.UNIFORM)",
    "untrained": "untrained saliency (zero-initialised): uniform sampling",
    "trained": "learned (non-zero) saliency weights",
}


def _slope(values: np.ndarray, axis: int = 0) -> np.ndarray:
    if values.shape[axis] < 2:
        return np.ones_like(values)
    return np.gradient(values, axis=axis)


def _to_image(pos: np.ndarray, stride: int) -> np.ndarray:
    # feature pixel i covers image pixels [i*s, (i+1)*s): its centre is (i + 0.5) * s - 0.5
    return (pos + 0.5) * stride - 0.5


def collect_sampling(model: torch.nn.Module, image: torch.Tensor) -> List[BlockSampling]:
    """Run ``model``'s bottom-up network on one preprocessed image and record every SSB
    block's sampling grid.

    Args:
        model (nn.Module): a Detectron2 detector with an SSB backbone (eval mode).
        image (Tensor): ``(3, H, W)`` input as the detector receives it (0-255, its format).
    """
    backbone = model.backbone
    bottom_up = getattr(backbone, "bottom_up", backbone)
    x = (image.to(model.pixel_mean.device) - model.pixel_mean) / model.pixel_std
    # Not padded to size_divisibility: a padding-aware SSB block (MODEL.SSB.PADDING_AWARE)
    # samples an image within its own size anyway, and the bottom-up network takes any size.
    x = x[None]
    grids, handles = {}, []
    for name, module in bottom_up.named_modules():
        if isinstance(module, SSBBottleneckBlock):
            def hook(mod, args, output, name=name):
                grids[name] = output
            handles.append(module.sampler.register_forward_hook(hook))
    try:
        with torch.no_grad():
            bottom_up(x)
    finally:
        for h in handles:
            h.remove()
    stage_stride = {}
    stride = bottom_up.stem.stride
    for name, stage in zip(bottom_up.stage_names, bottom_up.stages):
        for block in stage:
            stride *= block.stride
        stage_stride[name] = stride
    out = []
    for name, grid in grids.items():
        s = stage_stride[name.split(".")[0]]
        (H, W), (h, w) = grid.in_size, grid.out_size
        ys, xs = (p[0].double().cpu().numpy() for p in grid.sampling_positions())
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        rows, cols = _to_image(ys, s), _to_image(xs, s)
        # Samples per full-size pixel = slope of the inverse map (sampled pixels per full
        # pixel), relative to the uniform slope h/H; the 2-D density is the product.
        iy, ix = (p[0].double().cpu().numpy() for p in grid.inverse_positions())
        density = np.outer(_slope(iy) * H / h, _slope(ix) * W / w)
        points = np.stack([_to_image(xx.ravel(), s), _to_image(yy.ravel(), s)], axis=1)
        out.append(BlockSampling(name, s, (H, W), (h, w), points, rows, cols, density))
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw(ax, rgb: np.ndarray, b: BlockSampling, max_lines: int = 24):
    ih, iw = rgb.shape[:2]
    ax.imshow(rgb)
    H, W = b.feature_size
    extent = (-0.5, W * b.stride - 0.5, H * b.stride - 0.5, -0.5)
    # Relative density on a log scale centred on 1 (uniform): red denser, blue sparser.
    dens = np.log2(np.clip(b.density, 1 / 16, 16))
    ax.imshow(dens, cmap="coolwarm", vmin=-2, vmax=2, alpha=0.45, extent=extent,
              interpolation="nearest")
    step_r = max(1, math.ceil(len(b.rows) / max_lines))
    step_c = max(1, math.ceil(len(b.cols) / max_lines))
    for y in b.rows[::step_r]:
        ax.axhline(y, color="yellow", lw=0.5, alpha=0.8)
    for x in b.cols[::step_c]:
        ax.axvline(x, color="yellow", lw=0.5, alpha=0.8)
    ax.set_xlim(-0.5, iw - 0.5)
    ax.set_ylim(ih - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    h, w = b.sampled_size
    ax.set_title(f"{b.name}: {H}x{W} -> {h}x{w}, density {b.density.min():.2f}-"
                 f"{b.density.max():.2f}", fontsize=8)


def _save(fig, path: str, dpi: int, palette: bool):
    fig.savefig(path, dpi=dpi)
    if palette:  # 256-colour PNG: a fraction of the size, for documentation
        from PIL import Image

        with Image.open(path) as img:
            img.convert("RGB").quantize(colors=256).save(path, optimize=True)


def draw_block(path: str, rgb: np.ndarray, b: BlockSampling, state: str, dpi: int = 100,
               palette: bool = False) -> str:
    """One block's sampling over the image: every k-th sampled row/column (yellow) and the
    relative sampling density (red: denser than uniform, blue: sparser; log scale)."""
    plt = _plt()
    ih, iw = rgb.shape[:2]
    fig, ax = plt.subplots(figsize=(6.4, 6.4 * ih / iw + 0.6))
    _draw(ax, rgb, b)
    fig.suptitle(STATE_TEXT[state], fontsize=9)
    fig.tight_layout()
    _save(fig, path, dpi, palette)
    plt.close(fig)
    return path


def draw_montage(path: str, rgb: np.ndarray, blocks: List[BlockSampling], state: str,
                 columns: int = 4, dpi: int = 90, palette: bool = False) -> str:
    """All blocks side by side: different layers sample different places."""
    plt = _plt()
    ih, iw = rgb.shape[:2]
    n = len(blocks)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.6 * rows * ih / iw + 0.7),
                             squeeze=False)
    for ax, b in zip(axes.ravel(), blocks):
        _draw(ax, rgb, b, max_lines=12)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(f"Sampling of every SSB block - {STATE_TEXT[state]} "
                 "(yellow: sampled rows/columns; red: denser, blue: sparser than uniform)",
                 fontsize=9)
    fig.tight_layout()
    _save(fig, path, dpi, palette)
    plt.close(fig)
    return path


def load_image(path: str, cfg) -> np.ndarray:
    """Read ``path`` in the model's input format and resize it as Detectron2's test-time
    augmentation does (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input image {path!r} does not exist")
    image = read_image(path, format=cfg.INPUT.FORMAT)
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST],
                               cfg.INPUT.MAX_SIZE_TEST)
    return aug.get_transform(image).apply_image(image)


def visualize_sampling(cfg, image_path: str, output_dir: str, weights: Optional[str] = None,
                       dpi: int = 100, palette: bool = False) -> Dict[str, object]:
    """Write ``sampling_<block>.png`` for every SSB block and ``sampling_montage.png``.

    Args:
        cfg: a config with an SSB backbone (:func:`ssb_det.analysis.load_cfg`).
        image_path (str): input image.
        output_dir (str): created if missing.
        weights (str or None): checkpoint to load (``.pth``/``.pkl``); None keeps the
            initialisation (zero saliency: uniform sampling).
        dpi (int): resolution of the per-block PNGs (the montage uses 0.9 x dpi).
        palette (bool): save 256-colour PNGs (much smaller files).

    Returns:
        dict: ``state`` (uniform/untrained/trained), ``files`` (written PNGs), ``blocks``
        (the :class:`BlockSampling` records).
    """
    model = build_detector(cfg)
    if weights:
        SSBCheckpointer(model).load(weights)
    model.eval()
    state = sampling_state(model)
    image = load_image(image_path, cfg)
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)), dtype=torch.float32)
    blocks = collect_sampling(model, tensor)
    rgb = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
    rgb = np.ascontiguousarray(rgb)
    os.makedirs(output_dir, exist_ok=True)
    files = [draw_block(os.path.join(output_dir, f"sampling_{b.name}.png"), rgb, b, state,
                        dpi=dpi, palette=palette) for b in blocks]
    files.append(draw_montage(os.path.join(output_dir, "sampling_montage.png"), rgb, blocks,
                              state, dpi=round(0.9 * dpi), palette=palette))
    return {"state": state, "files": files, "blocks": blocks}
