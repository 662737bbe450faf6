"""Command line of classification pretraining (``tools/pretrain_cls.py`` calls :func:`main`).

Same conventions as Detectron2's ``train_net.py``: ``--config-file``, ``--resume``,
``--eval-only`` and trailing ``KEY VALUE`` overrides. Multi-process training is launched with
``torchrun`` (the ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` variables it sets are read here):
gloo on the CPU, nccl on GPUs.
"""
import argparse
import json
import logging
import os
from typing import Dict, Optional

import torch
import torch.distributed as dist

from ..checkpoint import atomic_write_text, load_checkpoint_file
from ..config import load_config
from .config import get_pretrain_cfg
from .data import build_datasets
from .ema import ModelEMA
from .engine import (ClassificationTrainer, evaluate, export_d2_backbone, last_checkpoint,
                     load_classifier_weights)
from .model import build_classifier

__all__ = ["argument_parser", "setup", "main"]

logger = logging.getLogger(__name__)

_EPILOG = """examples:
  python tools/pretrain_cls.py --config-file configs/pretrain/ssb_r50_shapes.yaml
  torchrun --standalone --nproc_per_node 8 tools/pretrain_cls.py \\
      --config-file configs/pretrain/ssb_rs50_imagenet.yaml CLS.DATA.ROOT /data/imagenet
  python tools/pretrain_cls.py --config-file C.yaml --eval-only MODEL.WEIGHTS model_final.pth
  python tools/pretrain_cls.py --config-file C.yaml --resume --export-d2 ssb_r50_d2.pth
"""


def argument_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tools/pretrain_cls.py``."""
    parser = argparse.ArgumentParser(
        description="Pretrain an SSB-ResNet(-RS) classifier (or its plain host) with the "
                    "ResNet-RS recipe; export its backbone for Detectron2.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to a config file")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUTPUT_DIR/last_checkpoint if it exists (otherwise "
                             "start from MODEL.WEIGHTS)")
    parser.add_argument("--eval-only", action="store_true",
                        help="only evaluate top-1/top-5 (MODEL.WEIGHTS, or the last checkpoint "
                             "with --resume)")
    parser.add_argument("--export-d2", metavar="PATH", default=None,
                        help="after training (or evaluating, with --eval-only) write the "
                             "backbone as a Detectron2 MODEL.WEIGHTS file (.pth)")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="config overrides: KEY VALUE pairs, e.g. SOLVER.MAX_ITER 1000")
    return parser


def setup(args):
    """The frozen config of ``args`` (defaults <- config file <- KEY VALUE overrides)."""
    flags = [o for o in (args.opts or []) if o.startswith("--")]
    if flags:
        raise SystemExit(f"pretrain_cls: {flags} after the KEY VALUE overrides: put --options "
                         "before the overrides (as with Detectron2's train_net.py)")
    cfg = load_config(args.config_file, args.opts or [], cfg=get_pretrain_cfg())
    cfg.freeze()
    return cfg


def _init_distributed(device: str):
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    return True


def _device(cfg) -> str:
    device = cfg.MODEL.DEVICE
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def _evaluate_only(cfg, args, device) -> Dict:
    _, val_set, classes = build_datasets(cfg, train=False)
    num_classes = cfg.CLS.NUM_CLASSES or len(classes)
    path = last_checkpoint(cfg.OUTPUT_DIR) if args.resume else None
    path = path or cfg.MODEL.WEIGHTS
    if not path:
        raise ValueError("--eval-only needs weights: MODEL.WEIGHTS, or --resume with a "
                         "checkpoint in OUTPUT_DIR")
    model = build_classifier(cfg, num_classes).to(device)
    loaded = load_checkpoint_file(path)
    ema_model = None
    if isinstance(loaded, dict) and "classes" in loaded and "iteration" in loaded:
        # A pretrain_cls training checkpoint: the exact model (and its EMA).
        if list(loaded["classes"]) != list(classes):
            raise ValueError(f"{path} was trained on classes {loaded['classes']}, the "
                             f"validation data has {classes}")
        model.load_state_dict(loaded["model"], strict=True)
        if loaded.get("ema") is not None:
            ema_model = ModelEMA(model).module
            ema_model.load_state_dict(loaded["ema"]["module"], strict=True)
    else:
        report, head_loaded = load_classifier_weights(model, loaded)
        logger.info(f"loaded {path}:\n{report.summary()}")
        if not head_loaded:
            raise ValueError(f"{path} has no classification layer of shape "
                             f"{tuple(model.fc.weight.shape)}: nothing to evaluate")
    result = evaluate(model, val_set, cfg, device)
    if ema_model is not None:
        result.update({f"ema_{k}": v for k, v in evaluate(ema_model, val_set, cfg, device).items()})
    if args.export_d2:
        use_ema = ema_model is not None and cfg.CLS.EMA.EXPORT
        state = (ema_model if use_ema else model).state_dict()
        if not dist.is_initialized() or dist.get_rank() == 0:
            n = export_d2_backbone(state, args.export_d2, cfg)
            logger.info(f"exported {n} backbone tensors ({'EMA' if use_ema else 'raw'} "
                        f"weights) to {args.export_d2}")
    return result


def main(argv=None) -> Optional[Dict]:
    """Run ``tools/pretrain_cls.py`` with ``argv`` (default ``sys.argv[1:]``).

    Returns:
        dict: the final evaluation (top-1/top-5, and ``ema_*`` with EMA).
    """
    from detectron2.utils.logger import setup_logger

    args = argument_parser().parse_args(argv)
    cfg = setup(args)
    device = _device(cfg)
    created = _init_distributed(device)
    rank = dist.get_rank() if dist.is_initialized() else 0
    # Ours and Detectron2's (its CommonMetricPrinter prints the progress lines), as its
    # default_setup does. setup_logger adds handlers for each new OUTPUT_DIR; remove ours on
    # return, so repeated in-process runs (benchmark, tests) do not print every line once per
    # earlier run.
    loggers = [logging.getLogger(name) for name in ("ssb_det", "detectron2")]
    handlers_before = {log.name: list(log.handlers) for log in loggers}
    try:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        for log in loggers:
            # Past the lru_cache, which would skip re-adding the handlers removed below.
            getattr(setup_logger, "__wrapped__", setup_logger)(
                cfg.OUTPUT_DIR, distributed_rank=rank, name=log.name)
        if rank == 0:
            atomic_write_text(cfg.dump(), os.path.join(cfg.OUTPUT_DIR, "config.yaml"))
            logger.info(f"config:\n{cfg.dump()}")
        if args.eval_only:
            result = _evaluate_only(cfg, args, torch.device(device))
            if rank == 0:
                atomic_write_text(json.dumps(result, indent=1),
                                  os.path.join(cfg.OUTPUT_DIR, "eval_results.json"))
                logger.info(f"evaluation: {json.dumps(result)}")
            return result
        if device != cfg.MODEL.DEVICE:
            cfg.defrost()
            cfg.MODEL.DEVICE = device
            cfg.freeze()
        trainer = ClassificationTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        result = trainer.train()
        if args.export_d2 and rank == 0:
            n = export_d2_backbone(trainer.exported_state(), args.export_d2, cfg)
            logger.info(f"exported {n} backbone tensors to {args.export_d2}")
        return result
    finally:
        for log in loggers:
            for handler in log.handlers[:]:
                if handler not in handlers_before[log.name]:
                    # Not closed: Detectron2 caches the log file's stream for later runs.
                    log.removeHandler(handler)
        if created:
            dist.destroy_process_group()
