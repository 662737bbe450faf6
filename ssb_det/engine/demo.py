"""Run a trained detector on image files: PNGs with the detections drawn, and a JSON of them.

``tools/demo.py`` is a thin command line over :func:`demo_main`. Inputs are image paths,
folders (their image files, sorted) or glob patterns. An image that cannot be read is
skipped with a warning naming it; the others proceed.
"""
import argparse
import glob
import json
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

from ..data.validation import read_image  # names the file; scales 16-bit images
from ..checkpoint import SSBCheckpointer, atomic_write_text
from ..config import load_config
from .train import check_weights_conventions

__all__ = [
    "IMAGE_EXTENSIONS",
    "PREDICTIONS_FILE",
    "SSBPredictor",
    "collect_inputs",
    "get_demo_parser",
    "demo_main",
    "run_demo",
    "setup_demo_cfg",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PREDICTIONS_FILE = "predictions.json"


class SSBPredictor(DefaultPredictor):
    """Detectron2's ``DefaultPredictor`` (same ``__call__``) loading weights with ``SSBCheckpointer``.

    Args:
        cfg (CfgNode): a config with ``MODEL.WEIGHTS`` set.
    """

    def __init__(self, cfg: CfgNode):  # noqa: D107 - replaces, not extends, the parent's
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        SSBCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={self.input_format!r}: the demo reads RGB or BGR")


def setup_demo_cfg(config_file: str, opts: Sequence[str], confidence_threshold: float) -> CfgNode:
    """The frozen config of a demo run: file, then ``opts``, then the score threshold.

    Args:
        config_file (str): a config file.
        opts (Sequence[str]): ``KEY VALUE`` pairs, e.g. ``["MODEL.WEIGHTS", "model.pth"]``.
        confidence_threshold (float): minimum score of a drawn/listed detection.
    """
    if not 0.0 <= confidence_threshold <= 1.0:
        raise ValueError(f"--confidence-threshold {confidence_threshold}: must be in [0, 1]")
    cfg = load_config(config_file, opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = confidence_threshold
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = confidence_threshold
    cfg.freeze()
    check_weights_conventions(cfg)
    return cfg


def collect_inputs(inputs: Sequence[str]) -> List[str]:
    """Expand folders (their image files) and glob patterns; keep plain paths as given.

    A plain path that does not exist is kept, so that it is reported as unreadable rather
    than silently dropped. A pattern matching nothing raises.

    Args:
        inputs (Sequence[str]): paths, folders or glob patterns.

    Returns:
        list[str]: the files, in the order given (folders and patterns sorted).
    """
    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                logger.warning(f"demo: no image files ({', '.join(IMAGE_EXTENSIONS)}) in {item}")
            files += found
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise FileNotFoundError(f"demo: the pattern {item!r} matches no file")
            files += found
        else:
            files.append(item)
    return files


def _output_names(files: Sequence[str]) -> List[str]:
    # Same base name from two folders: add _1, _2, ... so no PNG overwrites another.
    seen: Dict[str, int] = {}
    names = []
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(f"{stem}.png" if count == 0 else f"{stem}_{count}.png")
    return names


def _instances_to_json(instances, class_names: Optional[List[str]]) -> List[dict]:
    boxes = instances.pred_boxes.tensor.tolist() if instances.has("pred_boxes") else []
    scores = instances.scores.tolist() if instances.has("scores") else []
    classes = instances.pred_classes.tolist() if instances.has("pred_classes") else []
    out = []
    for box, score, cls in zip(boxes, scores, classes):
        det = {"category_id": int(cls), "score": round(float(score), 5),
               "bbox_xyxy": [round(float(v), 2) for v in box]}
        if class_names and 0 <= cls < len(class_names):
            det["category_name"] = class_names[cls]
        out.append(det)
    return out


def run_demo(cfg: CfgNode, inputs: Sequence[str], output_dir: str,
             predictor: Optional[SSBPredictor] = None) -> dict:
    """Predict on every readable input; write ``<output_dir>/<name>.png`` and ``predictions.json``.

    Args:
        cfg (CfgNode): from :func:`setup_demo_cfg`.
        inputs (Sequence[str]): paths, folders or glob patterns (see :func:`collect_inputs`).
        output_dir (str): created if missing.
        predictor (SSBPredictor or None): reuse a predictor; built from ``cfg`` if None.

    Returns:
        dict: the JSON written: ``{"images": [{"file_name", "output", "height", "width",
        "instances": [{"category_id", "category_name", "score", "bbox_xyxy"}]}],
        "skipped": [{"file_name", "error"}], "confidence_threshold", "weights"}``.
    """
    files = collect_inputs(inputs)
    if not files:
        raise FileNotFoundError(f"demo: no input images in {list(inputs)}")
    predictor = predictor or SSBPredictor(cfg)
    metadata = getattr(predictor, "metadata", None) or MetadataCatalog.get("__unused")
    class_names = metadata.get("thing_classes")
    os.makedirs(output_dir, exist_ok=True)
    report = {"weights": cfg.MODEL.WEIGHTS,
              "confidence_threshold": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
              "images": [], "skipped": []}
    for path, name in zip(files, _output_names(files)):
        try:
            image = read_image(path, format="BGR")
        except Exception as e:  # PIL raises several types for missing, truncated, non-images
            logger.warning(f"demo: skipping unreadable image {path}: {type(e).__name__}: {e}")
            report["skipped"].append({"file_name": path, "error": f"{type(e).__name__}: {e}"})
            continue
        with torch.no_grad():
            instances = predictor(image)["instances"].to("cpu")
        # Visualizer draws on RGB.
        vis = Visualizer(image[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
        drawn = vis.draw_instance_predictions(instances).get_image()
        out_path = os.path.join(output_dir, name)
        _write_png(drawn, out_path)
        report["images"].append({
            "file_name": path, "output": out_path, "height": int(image.shape[0]),
            "width": int(image.shape[1]), "instances": _instances_to_json(instances, class_names),
        })
        logger.info(f"demo: {path}: {len(instances)} detections -> {out_path}")
    atomic_write_text(json.dumps(report, indent=1), os.path.join(output_dir, PREDICTIONS_FILE))
    return report


def _write_png(rgb: np.ndarray, path: str) -> None:
    import cv2

    if not cv2.imwrite(path, np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError(f"demo: could not write {path}")


def get_demo_parser() -> argparse.ArgumentParser:
    """The ``tools/demo.py`` command line."""
    parser = argparse.ArgumentParser(
        description="Detect objects in images with an ssb_det model: writes <output>/<image>.png "
                    f"with the detections drawn and <output>/{PREDICTIONS_FILE}.")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to config file")
    parser.add_argument("--input", nargs="+", required=True,
                        help="image files, folders or glob patterns (quote the pattern)")
    parser.add_argument("--output", default="output/demo", help="output folder (created)")
    parser.add_argument("--confidence-threshold", type=float, default=0.5,
                        help="minimum score of a detection to draw and list")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER,
                        help="config KEY VALUE pairs, e.g. --opts MODEL.WEIGHTS model_final.pth")
    return parser


def demo_main(argv: Optional[Sequence[str]] = None) -> dict:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run :func:`run_demo`."""
    args = get_demo_parser().parse_args(argv)
    for name in ("detectron2", "fvcore", "ssb_det"):
        setup_logger(name=name)
    cfg = setup_demo_cfg(args.config_file, args.opts, args.confidence_threshold)
    report = run_demo(cfg, args.input, args.output)
    logger.info(f"demo: {len(report['images'])} images written to {args.output}, "
                f"{len(report['skipped'])} skipped")
    return report
