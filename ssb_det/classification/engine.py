"""Training, evaluation, checkpoints and export of the classifier (one process of a DDP job).

The loop is iteration-based like Detectron2's trainers: ``SOLVER.MAX_ITER`` steps (or
``CLS.EPOCHS`` epochs), a checkpoint every ``SOLVER.CHECKPOINT_PERIOD`` steps, an evaluation
every ``TEST.EVAL_PERIOD`` steps and at the end. The LR follows Detectron2's
``build_lr_scheduler``; metrics go through Detectron2's ``EventStorage`` and writers (rank 0:
progress line, ``metrics.json``, TensorBoard events in ``OUTPUT_DIR``, where the checkpoints
go too). ``iteration`` in ``metrics.json`` and checkpoint names counts finished steps.

Determinism: the data order is a function of ``SEED`` and the step (see
:class:`InfiniteShardedSampler`), and the global RNG is reseeded from ``(SEED, step, rank)``
before every step, so with ``DATALOADER.NUM_WORKERS 0`` a resumed run continues exactly as an
uninterrupted one would (on the same machine and thread count).
"""
import glob
import json
import logging
import os
import time
from typing import Dict, Optional

import torch
import torch.distributed as dist
from detectron2.solver import build_lr_scheduler
from detectron2.solver.build import get_default_optimizer_params
from detectron2.utils.events import (CommonMetricPrinter, EventStorage, JSONWriter,
                                     TensorboardXWriter)
from torch import nn
from torch.utils.data import DataLoader

from ..checkpoint import atomic_torch_save, atomic_write_text, load_pth
from ..convert import load_pretrained_backbone, save_d2_checkpoint
from ..engine.sampling_log import sampling_statistics_logged
from .data import InfiniteShardedSampler, ShardedEvalSampler, build_datasets
from .ema import ModelEMA
from .model import BACKBONE_PREFIX, SSBResNetClassifier, build_classifier

__all__ = [
    "ClassificationTrainer",
    "evaluate",
    "load_classifier_weights",
    "export_d2_backbone",
    "last_checkpoint",
]

logger = logging.getLogger(__name__)

def _world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_sum(values, device):
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if _world()[1] > 1:
        dist.all_reduce(t)
    return t.tolist()


def _autocast(cfg, device: torch.device):
    enabled = bool(cfg.SOLVER.AMP.ENABLED)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.CLS.AMP_DTYPE)
    if dtype is None:
        raise ValueError(f"CLS.AMP_DTYPE={cfg.CLS.AMP_DTYPE!r}: must be 'bfloat16' or 'float16'")
    if enabled and dtype is torch.float16 and device.type != "cuda":
        raise ValueError("CLS.AMP_DTYPE='float16' needs a GPU; use 'bfloat16' on the CPU")
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, cfg, device: Optional[torch.device] = None) -> Dict:
    """Top-1 / top-5 accuracy (%) over a dataset, sharded over the DDP ranks.

    Every image is evaluated exactly once over all ranks; the counts are summed.

    Args:
        model (nn.Module): the classifier (unwrapped).
        dataset: yields (image uint8 tensor, label).
        cfg (CfgNode): for ``CLS.DATA.EVAL_BATCH_SIZE``, AMP, workers, channels_last.
        device (torch.device or None): default ``cfg.MODEL.DEVICE``.

    Returns:
        dict: ``top1``, ``top5`` (top-k with ``k = min(5, classes)``: with 5 classes or fewer
        it is 100 by definition), ``top5_k``, ``loss`` (plain cross-entropy), ``num_samples``.
    """
    device = torch.device(device or cfg.MODEL.DEVICE)
    rank, world = _world()
    loader = DataLoader(dataset, batch_size=cfg.CLS.DATA.EVAL_BATCH_SIZE,
                        sampler=ShardedEvalSampler(len(dataset), rank=rank, world_size=world),
                        num_workers=cfg.DATALOADER.NUM_WORKERS)
    was_training = model.training
    model.eval()
    k = min(5, model.num_classes if hasattr(model, "num_classes") else 5)
    correct1 = correctk = count = loss_sum = 0.0
    memory_format = torch.channels_last if cfg.CLS.CHANNELS_LAST else torch.contiguous_format
    try:
        for images, labels in loader:
            images = images.to(device, memory_format=memory_format)
            labels = labels.to(device)
            with _autocast(cfg, device):
                logits = model(images)
            logits = logits.float()
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            topk = logits.topk(k, dim=1).indices
            hits = topk == labels[:, None]
            correct1 += hits[:, 0].sum().item()
            correctk += hits.any(dim=1).sum().item()
            count += labels.numel()
    finally:
        model.train(was_training)
    correct1, correctk, count, loss_sum = _all_reduce_sum([correct1, correctk, count, loss_sum],
                                                          device)
    if count == 0:
        raise ValueError("the evaluation set is empty")
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correctk / count, "top5_k": k,
            "loss": loss_sum / count, "num_samples": int(count)}


def load_classifier_weights(model: SSBResNetClassifier, path: str):
    """Initialise a classifier from any checkpoint ``ssb_det.convert`` reads.

    torchvision / timm resnetrs / MSRA ``.pkl`` / Detectron2-named files (including
    ``--export-d2`` outputs and ``pretrain_cls`` checkpoints) are converted on the fly. The
    backbone must match completely (saliency convs absent from the source stay zero); the FC
    layer is loaded when the file has one of the same shape, else it keeps its
    initialisation.

    Args:
        model (SSBResNetClassifier): the classifier.
        path (str): the checkpoint.

    Returns:
        tuple: (ConversionReport, bool): the report, and whether the FC layer was loaded.
    """
    report, head = load_pretrained_backbone(model.backbone, path)
    head_loaded = (set(head) == {"weight", "bias"}
                   and head["weight"].shape == model.fc.weight.shape
                   and head["bias"].shape == model.fc.bias.shape)
    if head_loaded:
        model.fc.load_state_dict({k: v.to(model.fc.weight.dtype) for k, v in head.items()})
    return report, head_loaded


def backbone_conventions(cfg) -> dict:
    """The config keys an exported backbone was trained under (recorded in the export)."""
    r, s = cfg.MODEL.RESNETS, cfg.MODEL.SSB
    return {
        "MODEL.SSB.HOST": s.HOST, "MODEL.SSB.ENABLED": bool(s.ENABLED),
        "MODEL.SSB.RATIOS": list(s.RATIOS), "MODEL.SSB.UNIFORM": bool(s.UNIFORM),
        "MODEL.SSB.SALIENCY_BOUND": float(s.SALIENCY_BOUND),
        "MODEL.SSB.INVERSE_POSITION": s.INVERSE_POSITION,
        "MODEL.RESNETS.DEPTH": int(r.DEPTH), "MODEL.RESNETS.STRIDE_IN_1X1": bool(r.STRIDE_IN_1X1),
        "MODEL.RESNETS.NUM_GROUPS": int(r.NUM_GROUPS),
        "MODEL.RESNETS.WIDTH_PER_GROUP": int(r.WIDTH_PER_GROUP),
        "INPUT.FORMAT": cfg.INPUT.FORMAT, "MODEL.PIXEL_MEAN": [float(v) for v in cfg.MODEL.PIXEL_MEAN],
        "MODEL.PIXEL_STD": [float(v) for v in cfg.MODEL.PIXEL_STD],
    }


def export_d2_backbone(state: Dict[str, torch.Tensor], path: str, cfg) -> int:
    """Write the backbone of a classifier state dict as a Detectron2 ``MODEL.WEIGHTS`` file.

    Keys are Detectron2's ResNet names (the classifier's ``backbone.`` prefix stripped) with
    ``matching_heuristics: True``, so the checkpointer finds them under
    ``backbone.bottom_up.`` of an FPN model (or ``backbone.`` / ``roi_heads.res5.`` of a C4
    one). BN statistics are included (FrozenBN / BN both read them).

    Args:
        state (dict): a :class:`SSBResNetClassifier` state dict.
        path (str): output ``.pth``.
        cfg (CfgNode): the pretraining config (its conventions are recorded).

    Returns:
        int: number of backbone tensors written.
    """
    backbone = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items()
                if k.startswith(BACKBONE_PREFIX) and not k.endswith("num_batches_tracked")}
    if not backbone:
        raise ValueError("the state dict has no 'backbone.' tensors: not a classifier state")
    save_d2_checkpoint(path, backbone, author="ssb_det.pretrain_cls",
                       head={"weight": state["fc.weight"], "bias": state["fc.bias"]},
                       conventions=backbone_conventions(cfg))
    return len(backbone)


def last_checkpoint(output_dir: str) -> Optional[str]:
    """Path named by ``<output_dir>/last_checkpoint``, or None."""
    tag = os.path.join(output_dir, "last_checkpoint")
    if not os.path.isfile(tag):
        return None
    with open(tag) as f:
        name = f.read().strip()
    path = os.path.join(output_dir, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{tag} names {name}, which does not exist in {output_dir}")
    return path


class ClassificationTrainer:
    """Pretrains an SSB-ResNet(-RS) classifier with the ResNet-RS recipe (one DDP rank).

    Args:
        cfg (CfgNode): a frozen pretraining config (see :func:`get_pretrain_cfg`).
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self.rank, self.world_size = _world()
        self.device = torch.device(cfg.MODEL.DEVICE)
        self.train_set, self.val_set, self.classes = build_datasets(cfg)
        num_classes = cfg.CLS.NUM_CLASSES or len(self.classes)
        if num_classes != len(self.classes):
            raise ValueError(f"CLS.NUM_CLASSES={cfg.CLS.NUM_CLASSES} but the training set has "
                             f"{len(self.classes)} classes")
        if cfg.SOLVER.IMS_PER_BATCH % self.world_size:
            raise ValueError(f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} is not divisible "
                             f"by the {self.world_size} processes")
        self.batch_size = cfg.SOLVER.IMS_PER_BATCH // self.world_size
        self.seed = cfg.SEED if cfg.SEED >= 0 else int(_all_reduce_sum(
            [torch.randint(0, 2 ** 31, ()).item() if self.rank == 0 else 0], self.device)[0])
        steps_per_epoch = len(self.train_set) // cfg.SOLVER.IMS_PER_BATCH
        self.max_iter = cfg.CLS.EPOCHS * steps_per_epoch if cfg.CLS.EPOCHS > 0 else cfg.SOLVER.MAX_ITER
        if self.max_iter <= 0:
            raise ValueError(f"nothing to train: {self.max_iter} iterations (SOLVER.MAX_ITER / "
                             "CLS.EPOCHS)")
        ref = cfg.CLS.LR_REFERENCE_BATCH
        self.base_lr = cfg.SOLVER.BASE_LR * (cfg.SOLVER.IMS_PER_BATCH / ref if ref > 0 else 1.0)

        torch.manual_seed(self.seed)  # the same initial weights on every rank
        model = build_classifier(cfg, num_classes).to(self.device)
        self.memory_format = (torch.channels_last if cfg.CLS.CHANNELS_LAST
                              else torch.contiguous_format)
        model = model.to(memory_format=self.memory_format)
        self.model = model
        params = get_default_optimizer_params(
            model, base_lr=self.base_lr, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS)
        self.optimizer = torch.optim.SGD(params, lr=self.base_lr, momentum=cfg.SOLVER.MOMENTUM,
                                         nesterov=cfg.SOLVER.NESTEROV)
        # Detectron2's scheduler (fvcore warm-up + cosine / multi-step schedule) over max_iter,
        # which CLS.EPOCHS may have set; it sets the optimizer's LR to that of step 0.
        schedule_cfg = cfg.clone()
        schedule_cfg.defrost()
        schedule_cfg.SOLVER.MAX_ITER = self.max_iter
        self.scheduler = build_lr_scheduler(schedule_cfg, self.optimizer)
        self.ema = ModelEMA(model, cfg.CLS.EMA.DECAY) if cfg.CLS.EMA.ENABLED else None
        use_scaler = (cfg.SOLVER.AMP.ENABLED and cfg.CLS.AMP_DTYPE == "float16"
                      and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.CLS.LABEL_SMOOTHING)
        if self.world_size > 1:
            self.ddp_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        else:
            self.ddp_model = model
        self.start_iter = 0
        self.samples_seen = 0
        self.output_dir = cfg.OUTPUT_DIR
        if self.rank == 0:
            os.makedirs(self.output_dir, exist_ok=True)

    # ----------------------------------------------------------------- checkpoints

    def resume_or_load(self, resume: bool = True) -> None:
        """Continue from ``OUTPUT_DIR``'s last checkpoint (``resume``), else load MODEL.WEIGHTS.

        Args:
            resume (bool): look for ``OUTPUT_DIR/last_checkpoint`` first.
        """
        path = last_checkpoint(self.output_dir) if resume else None
        if path is not None:
            ckpt = load_pth(path)
            if list(ckpt.get("classes", [])) != list(self.classes):
                raise ValueError(f"{path} was trained on classes {ckpt.get('classes')}, the data "
                                 f"has {self.classes}")
            self.model.load_state_dict(ckpt["model"], strict=True)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.ema is not None:
                if ckpt.get("ema") is None:
                    raise ValueError(f"{path} has no EMA weights but CLS.EMA.ENABLED is True")
                self.ema.load_state_dict(ckpt["ema"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
            self.start_iter = int(ckpt["iteration"])
            self.samples_seen = int(ckpt["samples_seen"])
            # The schedule is a function of the iteration alone (fvcore schedules keep no state),
            # so it is placed at the checkpoint's iteration instead of being checkpointed; this
            # also gives the next step the LR an uninterrupted run would use.
            self.scheduler.last_epoch = self.start_iter
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_lr()):
                group["lr"] = lr
            logger.info(f"resumed from {path} at iteration {self.start_iter}")
        elif self.cfg.MODEL.WEIGHTS:
            report, head_loaded = load_classifier_weights(self.model, self.cfg.MODEL.WEIGHTS)
            logger.info(f"initialised from {self.cfg.MODEL.WEIGHTS}:\n{report.summary()}\n"
                        f"FC layer {'loaded' if head_loaded else 'kept at its initialisation'}")
            if self.ema is not None:
                self.ema = ModelEMA(self.model, self.cfg.CLS.EMA.DECAY)

    def state_dict(self, step: int) -> Dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "iteration": step,
            "samples_seen": self.samples_seen,
            "classes": list(self.classes),
        }

    def save_checkpoint(self, step: int, name: str) -> None:
        if self.rank != 0:
            return
        path = os.path.join(self.output_dir, f"{name}.pth")
        atomic_torch_save(self.state_dict(step), path)
        atomic_write_text(os.path.basename(path), os.path.join(self.output_dir, "last_checkpoint"))
        keep = self.cfg.CLS.KEEP_LAST_CHECKPOINTS
        if keep > 0:
            periodic = sorted(glob.glob(os.path.join(self.output_dir, "model_[0-9]*.pth")))
            for old in periodic[:-keep]:
                if old != path:
                    os.remove(old)
        logger.info(f"saved {path}")

    def exported_state(self) -> Dict[str, torch.Tensor]:
        """The weights ``--export-d2`` writes: EMA ones if kept and ``CLS.EMA.EXPORT``."""
        if self.ema is not None and self.cfg.CLS.EMA.EXPORT:
            return self.ema.module.state_dict()
        return self.model.state_dict()

    # ----------------------------------------------------------------- loop

    def evaluate(self) -> Dict:
        """Top-1/top-5 of the weights and, if kept, of their EMA (keys ``ema_*``)."""
        result = evaluate(self.model, self.val_set, self.cfg, self.device)
        if self.ema is not None:
            result.update({f"ema_{k}": v for k, v in
                           evaluate(self.ema.module, self.val_set, self.cfg, self.device).items()})
        return result

    def build_writers(self):
        """Detectron2's writers of rank 0: progress line, ``metrics.json``, TensorBoard."""
        if self.rank != 0:
            return []
        return [
            # storage.iter counts finished steps (as metrics.json and checkpoint names always
            # have); the printer counts from 0, hence max_iter + 1 for its ETA and last line.
            # Window 1: the scalars are already means over the log period and the processes.
            CommonMetricPrinter(self.max_iter + 1, window_size=1),
            JSONWriter(os.path.join(self.output_dir, "metrics.json")),
            TensorboardXWriter(self.output_dir),
        ]

    def train(self) -> Dict:
        """Run from ``start_iter`` to the last iteration; returns the final evaluation."""
        cfg = self.cfg
        sampler = InfiniteShardedSampler(len(self.train_set), self.batch_size, rank=self.rank,
                                         world_size=self.world_size, seed=self.seed,
                                         start_step=self.start_iter)
        loader = DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler,
                            num_workers=cfg.DATALOADER.NUM_WORKERS, drop_last=True,
                            pin_memory=self.device.type == "cuda",
                            persistent_workers=cfg.DATALOADER.NUM_WORKERS > 0)
        data = iter(loader)
        self.model.train()
        logger.info(f"training {self.max_iter} iterations from {self.start_iter}: "
                    f"{self.world_size} process(es) x {self.batch_size} images, "
                    f"lr {self.base_lr:.4g}, {len(self.train_set)} training images")
        writers = self.build_writers()
        try:
            with EventStorage(self.start_iter) as storage:
                # ssb/<block>/kl, density_ratio: read from the device at logging steps only
                with sampling_statistics_logged(self.model) as sampling_stats:
                    self._train_steps(data, storage, writers, sampling_stats)
                if self.start_iter >= self.max_iter:
                    logger.info(f"nothing to train: the checkpoint is at iteration "
                                f"{self.start_iter} of {self.max_iter}")
                else:
                    self.save_checkpoint(self.max_iter, "model_final")
                result = self.evaluate()
                # Onto the last step's line: storage.iter is still max_iter, and Detectron2's
                # writers write an iteration once.
                storage.put_scalars(**{f"val/{k}": v for k, v in result.items()},
                                    smoothing_hint=False)
                for writer in writers:
                    writer.write()
        finally:
            for writer in writers:
                writer.close()
        result["samples_seen"] = self.samples_seen
        if self.rank == 0:
            logger.info(f"final evaluation: {json.dumps(result)}")
        return result

    def _train_steps(self, data, storage: EventStorage, writers, sampling_stats=None) -> None:
        cfg = self.cfg
        start_time, start_step = time.perf_counter(), self.start_iter
        local_samples, losses = 0, []
        step_time = data_time = 0.0
        timed_steps = 0
        for step in range(self.start_iter, self.max_iter):
            step_start = time.perf_counter()
            # Before the forward: the sampling statistics it logs belong to this step's line.
            storage.iter = step + 1
            # Reseed per step: dropout, stochastic depth and (with workers=0) augmentation
            # depend only on (SEED, step, rank), so a resumed run retraces the same steps.
            torch.manual_seed((self.seed * 1_000_003 + step) * 1009 + self.rank)
            images, labels = next(data)
            data_time += time.perf_counter() - step_start
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            labels = labels.to(self.device, non_blocking=True)
            lr = self.optimizer.param_groups[0]["lr"]  # every group has the same LR
            with _autocast(cfg, self.device):
                logits = self.ddp_model(images)
            loss = self.criterion(logits.float(), labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at iteration {step + 1}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
            local_samples += labels.numel()
            losses.append(loss.item())
            step_time += time.perf_counter() - step_start
            timed_steps += 1
            done = step + 1
            last = done == self.max_iter
            log_now = done % cfg.CLS.LOG_PERIOD == 0 or last
            ckpt_now = done % cfg.SOLVER.CHECKPOINT_PERIOD == 0 and not last
            eval_now = cfg.TEST.EVAL_PERIOD > 0 and done % cfg.TEST.EVAL_PERIOD == 0 and not last
            if not (log_now or ckpt_now or eval_now):
                continue
            loss_sum, n_losses, new_samples = _all_reduce_sum(
                [sum(losses), len(losses), local_samples], self.device)
            self.samples_seen += int(new_samples)
            local_samples, losses = 0, []
            if log_now:
                if sampling_stats is not None:
                    sampling_stats.put(storage)
                elapsed = time.perf_counter() - start_time
                storage.put_scalars(
                    loss=loss_sum / n_losses, lr=lr, samples_seen=self.samples_seen,
                    images_per_s=(done - start_step) * cfg.SOLVER.IMS_PER_BATCH / elapsed,
                    time=step_time / timed_steps, data_time=data_time / timed_steps,
                    smoothing_hint=False)
                step_time = data_time = 0.0
                timed_steps = 0
            if eval_now:
                result = self.evaluate()
                storage.put_scalars(**{f"val/{k}": v for k, v in result.items()},
                                    smoothing_hint=False)
                if self.rank == 0:
                    logger.info(f"iteration {done}: {json.dumps(result)}")
            if ckpt_now:
                self.save_checkpoint(done, f"model_{done:07d}")
            if (log_now or eval_now) and not last:  # the last line waits for the final evaluation
                for writer in writers:
                    writer.write()
