"""Training and evaluation: Detectron2's ``DefaultTrainer`` flow with SSB configs.

``tools/train_net.py`` is ``launch(main, ...)`` over the functions here, exactly as
Detectron2's own ``tools/train_net.py``: the same flags (``--eval-only``, ``--resume``,
``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``, ``KEY VALUE`` opts),
multi-GPU and multi-machine through Detectron2's ``launch`` (PyTorch DDP), Detectron2's hooks
and writers (periodic checkpoints, ``metrics.json``, TensorBoard events, progress with ETA).
What differs: every checkpoint goes through :class:`ssb_det.checkpoint.SSBCheckpointer`,
evaluation uses pycocotools' COCOeval (:func:`ssb_det.compat.coco_evaluator`), datasets are
checked (or generated) before anything is built, and the AP dict is also written to
``OUTPUT_DIR/inference/eval_results.json``.
"""
import json
import logging
import os
from collections import OrderedDict
from typing import Callable, Optional

from detectron2.config import get_cfg
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer, default_setup, hooks
from detectron2.evaluation import DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import SSBCheckpointer, atomic_write_text, load_checkpoint_file
from ..compat import coco_evaluator
from ..config import add_ssb_config, load_config
from ..convert import conventions_mismatch
from ..data import FileNamingDatasetMapper, check_datasets_available, prepare_dataset
from .compile import compile_bottom_up
from .optim import saliency_parameters, scale_learning_rate
from .sampling_log import SamplingStatsHook, insert_before_writer

__all__ = ["Trainer", "setup", "main", "check_weights_conventions", "WeightsConventionError",
           "EVAL_RESULTS_FILE"]

logger = logging.getLogger(__name__)

# Written under OUTPUT_DIR/inference/ after every evaluation: {dataset: {task: {metric: value}}}.
EVAL_RESULTS_FILE = "eval_results.json"


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with ``SSBCheckpointer`` and the pycocotools COCO evaluator.

    Args:
        cfg (CfgNode): a config from :func:`setup` (``MODEL.SSB`` present).
    """

    def build_hooks(self):
        # DefaultTrainer.__init__ creates a DetectionCheckpointer and then calls build_hooks(),
        # whose PeriodicCheckpointer saves through self.checkpointer: swap it here, keeping the
        # same model, directory and checkpointables (the trainer, for iteration/optimizer/
        # scheduler state), so saving, resuming and MODEL.WEIGHTS loading all use safe I/O.
        if not isinstance(self.checkpointer, SSBCheckpointer):
            old = self.checkpointer
            self.checkpointer = SSBCheckpointer(
                old.model, old.save_dir, save_to_disk=old.save_to_disk, **old.checkpointables
            )
        # The sampling statistics are read from the device once per writing period, just
        # before the writer writes that step.
        hook_list = super().build_hooks()
        writer = next((h for h in hook_list if isinstance(h, hooks.PeriodicWriter)), None)
        stats_hook = SamplingStatsHook(period=writer._period if writer is not None else 20)
        return insert_before_writer(hook_list, stats_hook)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """Detectron2's optimizer, the saliency convs' learning rate times
        ``SOLVER.SALIENCY_LR_FACTOR``."""
        optimizer = super().build_optimizer(cfg, model)
        if cfg.SOLVER.SALIENCY_LR_FACTOR != 1.0:
            scale_learning_rate(optimizer, saliency_parameters(model),
                                cfg.SOLVER.SALIENCY_LR_FACTOR)
        return optimizer

    def state_dict(self):
        # Checkpoints hold the optimizer (momentum buffers) so --resume continues the same
        # run. Current Detectron2's DefaultTrainer stores it under "_trainer"; v0.6's stores
        # only the iteration and hook states. setdefault keeps whichever the parent wrote.
        ret = super().state_dict()
        ret.setdefault("_trainer", self._trainer.state_dict())
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:  # idempotent where the parent already loaded it
            self._trainer.load_state_dict(state_dict["_trainer"])

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's train loader; errors of an item name its image file."""
        return build_detection_train_loader(cfg, mapper=FileNamingDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Detectron2's test loader; errors of an item name its image file."""
        return build_detection_test_loader(cfg, dataset_name,
                                           mapper=FileNamingDatasetMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """COCO evaluation (boxes, and masks if the model predicts them) with pycocotools.

        Args:
            cfg (CfgNode): the config.
            dataset_name (str): a registered dataset whose ``evaluator_type`` is ``"coco"``.
            output_folder (str or None): where ``coco_instances_results.json`` goes; default
                ``OUTPUT_DIR/inference/<dataset_name>``.
        """
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
        if evaluator_type not in ("coco", "lvis"):
            raise NotImplementedError(
                f"no evaluator for dataset '{dataset_name}' (evaluator_type={evaluator_type!r}); "
                "ssb_det evaluates COCO-format detection/instance-segmentation datasets"
            )
        prepare_dataset(dataset_name)  # the evaluator reads the embedded dataset's JSON
        return DatasetEvaluators([coco_evaluator(dataset_name, output_folder)])

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate on ``cfg.DATASETS.TEST``; also writes the results to ``eval_results.json``.

        Returns:
            OrderedDict: ``{dataset: {"bbox": {"AP": ..., "AP50": ..., "AP-<class>": ...},
            "segm": {...}}}``, or for a single dataset the inner dict (Detectron2's convention).
        """
        check_datasets_available(cfg.DATASETS.TEST)
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and cfg.OUTPUT_DIR and results:
            # Detectron2 unwraps the dict of a single dataset; the file always has the level.
            by_dataset = {cfg.DATASETS.TEST[0]: results} if len(cfg.DATASETS.TEST) == 1 else results
            path = os.path.join(cfg.OUTPUT_DIR, "inference", EVAL_RESULTS_FILE)
            atomic_write_text(json.dumps(by_dataset, indent=1, default=float), path)
            logger.info(f"Evaluation results written to {path}")
        return results


class WeightsConventionError(ValueError):
    """``MODEL.WEIGHTS`` records input conventions that the config contradicts."""


def check_weights_conventions(cfg) -> None:
    """Refuse ``MODEL.WEIGHTS`` whose recorded input conventions the config contradicts.

    Files written by ``tools/convert_weights.py`` and ``tools/pretrain_cls.py --export-d2``
    record the config keys their network expects (``conventions``: input format, pixel
    mean/std, stride placement, host). Feeding RGB weights BGR images, say, trains and
    evaluates without any error, only worse; this makes it an error instead. Files without
    the record (Detectron2's MSRA ``.pkl``, remote ``detectron2://`` URLs, training
    checkpoints of this pipeline) are not checked.

    Args:
        cfg (CfgNode): the run's config.

    Raises:
        WeightsConventionError: listing each contradicted key and the override that fixes it.
    """
    path = cfg.MODEL.WEIGHTS
    if not path or "://" in path or path.endswith(".pkl") or not os.path.isfile(path):
        return
    data = load_checkpoint_file(path)
    conventions = data.get("conventions") if isinstance(data, dict) else None
    if not conventions:
        return
    problems = conventions_mismatch(cfg, conventions)
    if problems:
        fix = " ".join(f"{k} {json.dumps(v) if isinstance(v, (list, str)) else v}"
                       for k, v in conventions.items())
        raise WeightsConventionError(
            f"MODEL.WEIGHTS {path} was made for other input conventions than the config's:\n  "
            + "\n  ".join(problems)
            + f"\nAppend to the command line: {fix}  (see docs/pipeline.md, MODEL.WEIGHTS)"
        )


def setup(args, add_config: Optional[Callable] = None):
    """Build the frozen config of a run and set up logging, seeding and ``OUTPUT_DIR``.

    Args:
        args (argparse.Namespace): from ``detectron2.engine.default_argument_parser()``:
            ``config_file`` and ``opts`` (``KEY VALUE`` pairs) are merged in that order.
            Unknown keys raise Detectron2's ``KeyError``.
        add_config (callable or None): adds a project's own keys to the defaults (as
            ``add_tridentnet_config`` in Detectron2's projects), called with the config
            that ``add_ssb_config`` made, before the file is merged.

    Returns:
        CfgNode: the frozen config.
    """
    defaults = add_ssb_config(get_cfg())
    if add_config is not None:
        add_config(defaults)
    cfg = load_config(args.config_file, args.opts, cfg=defaults)
    cfg.freeze()
    default_setup(cfg, args)
    # ssb_det's own messages (dataset generation, warnings) in the console and log.txt.
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ssb_det")
    return cfg


def main(args, add_config: Optional[Callable] = None):
    """Train (then evaluate), or with ``args.eval_only`` evaluate ``MODEL.WEIGHTS``.

    Args:
        args (argparse.Namespace): from ``default_argument_parser()`` (``tools/train_net.py``
            adds ``--compile``: the bottom-up compiled, see :mod:`ssb_det.engine.compile`).
        add_config (callable or None): a project's config keys (see :func:`setup`).

    Returns:
        The evaluation results (see :meth:`Trainer.test`); for a training run, those of the
        final evaluation (empty if ``cfg.DATASETS.TEST`` is empty).

    Raises:
        ssb_det.data.DatasetNotFoundError: a dataset of the config has no files.
        WeightsConventionError: see :func:`check_weights_conventions`.
    """
    cfg = setup(args, add_config)
    if not args.resume:  # a resumed run loads its own checkpoint, not MODEL.WEIGHTS
        check_weights_conventions(cfg)
    if args.eval_only:
        check_datasets_available(cfg.DATASETS.TEST)
        model = Trainer.build_model(cfg)
        SSBCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        if getattr(args, "compile", False):
            compile_bottom_up(model)
        return Trainer.test(cfg, model)

    check_datasets_available(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    if not cfg.MODEL.WEIGHTS and cfg.MODEL.RESNETS.NORM == "FrozenBN" and not args.resume:
        # FrozenBN is an affine map fixed at its initial value: fine over pretrained weights,
        # a silent handicap from scratch (e.g. a ResNet-RS config run without its weights).
        logger.warning(
            "Training from scratch (MODEL.WEIGHTS is empty) with MODEL.RESNETS.NORM FrozenBN: "
            "the backbone's normalisation will not learn. Set MODEL.WEIGHTS to ImageNet "
            "weights (docs/pipeline.md) or use a trainable norm (BN, SyncBN, GN)."
        )
    trainer = Trainer(cfg)
    if getattr(args, "compile", False):
        compile_bottom_up(trainer.model)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    return results if results is not None else OrderedDict()
