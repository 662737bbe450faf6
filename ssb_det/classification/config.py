"""Config of classification pretraining: ``add_pretrain_config`` and ``get_pretrain_cfg``.

The backbone is described by the detection keys themselves (``MODEL.RESNETS``, ``MODEL.SSB``,
``MODEL.BACKBONE.FREEZE_AT``), and the optimisation by Detectron2's ``SOLVER`` / ``TEST`` /
``DATALOADER`` keys with their usual meaning, so a pretraining yaml reads like a
``train_net`` yaml. What only classification needs lives in the ``CLS`` node below.

Keys of the Detectron2 config that pretraining reads (and nothing else):
``MODEL.{RESNETS,SSB,BACKBONE.FREEZE_AT,PIXEL_MEAN,PIXEL_STD,DEVICE,WEIGHTS}``,
``INPUT.FORMAT``, ``SOLVER.{IMS_PER_BATCH,BASE_LR,MOMENTUM,NESTEROV,WEIGHT_DECAY,
WEIGHT_DECAY_NORM,WEIGHT_DECAY_BIAS,MAX_ITER,CHECKPOINT_PERIOD,AMP.ENABLED}`` and the
schedule keys Detectron2's ``build_lr_scheduler`` reads (``LR_SCHEDULER_NAME``, ``STEPS``,
``GAMMA``, ``WARMUP_ITERS``, ``WARMUP_FACTOR``, ``WARMUP_METHOD``; newer versions also
``BASE_LR_END``, ``RESCALE_INTERVAL``, ``NUM_DECAYS``), ``TEST.EVAL_PERIOD``,
``DATALOADER.NUM_WORKERS``, ``SEED``, ``OUTPUT_DIR``.
"""
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from ..config import add_ssb_config

__all__ = ["add_pretrain_config", "get_pretrain_cfg"]

# torchvision / timm ImageNet statistics in 0-255 RGB (what their released weights expect).
IMAGENET_RGB_MEAN = [123.675, 116.280, 103.530]
IMAGENET_RGB_STD = [58.395, 57.120, 57.375]


def add_pretrain_config(cfg):
    """Add the ``CLS`` node (classification pretraining) to ``cfg``. Idempotent.

    Args:
        cfg (CfgNode): a Detectron2 config with ``MODEL.SSB`` (see ``add_ssb_config``).

    Returns:
        CfgNode: ``cfg`` itself.
    """
    if "CLS" in cfg:
        return cfg
    _C = cfg
    _C.CLS = CN()
    # Number of classes of the FC layer. 0: the number of class folders of the training set.
    _C.CLS.NUM_CLASSES = 0
    # Zero-initialise the scale of the last BN of every residual branch, so each block starts
    # as the identity (ResNet-RS / TF ResNet "init_zero"; only trainable norms are changed).
    _C.CLS.ZERO_INIT_RESIDUAL = True
    # Dropout probability before the FC layer (ResNet-RS: 0.25).
    _C.CLS.DROPOUT = 0.25
    # Label smoothing of the cross-entropy loss (ResNet-RS: 0.1).
    _C.CLS.LABEL_SMOOTHING = 0.1
    # Training length in epochs over the training set; > 0 replaces SOLVER.MAX_ITER by
    # EPOCHS * (iterations per epoch). 0: train SOLVER.MAX_ITER iterations.
    _C.CLS.EPOCHS = 0
    # SOLVER.BASE_LR is the learning rate for this many images per step; the rate used is
    # BASE_LR * SOLVER.IMS_PER_BATCH / LR_REFERENCE_BATCH (ResNet-RS: 0.1 per 256 images).
    # 0: use SOLVER.BASE_LR as it is.
    _C.CLS.LR_REFERENCE_BATCH = 256
    # Iterations between two progress/log lines (rank 0), and between JSON/TensorBoard records.
    _C.CLS.LOG_PERIOD = 20
    # Training checkpoints kept in OUTPUT_DIR (the oldest are deleted); 0 keeps all.
    _C.CLS.KEEP_LAST_CHECKPOINTS = 2
    # Data type of automatic mixed precision when SOLVER.AMP.ENABLED: "bfloat16" (CPU and
    # recent GPUs) or "float16" (GPU only; uses a gradient scaler).
    _C.CLS.AMP_DTYPE = "bfloat16"
    # Run the model and its inputs in the channels_last memory format (faster convs on GPUs
    # with tensor cores and on some CPUs).
    _C.CLS.CHANNELS_LAST = False

    _C.CLS.DATA = CN()
    # Root of an ImageFolder / ImageNet layout (<ROOT>/<TRAIN_SPLIT>/<class>/<image>, same
    # for VAL_SPLIT). "": the embedded set (crops of the generated shapes detection dataset).
    _C.CLS.DATA.ROOT = ""
    # Sub-folder of ROOT with the training images (embedded set: the shapes split,
    # "train" or the tests' "mini_train").
    _C.CLS.DATA.TRAIN_SPLIT = "train"
    # Sub-folder of ROOT with the validation images (embedded set: "val" or "mini_val").
    _C.CLS.DATA.VAL_SPLIT = "val"
    # Where the embedded set's crops are written on first use; "": an "ssb_shapes_cls" folder
    # beside the shapes dataset's cache (ssb_det.data.shapes.default_root()).
    _C.CLS.DATA.EMBEDDED_ROOT = ""
    # Context added around each object box of the embedded set, as a fraction of the box
    # side on every side, before cropping.
    _C.CLS.DATA.EMBEDDED_CONTEXT = 0.15
    # Objects of the embedded set smaller than this (box side, pixels) are not cropped.
    _C.CLS.DATA.EMBEDDED_MIN_SIZE = 8
    # What one sample of the embedded set is: "box", each object cropped at its box (plus
    # EMBEDDED_CONTEXT); "image", each whole image, labelled by its one object (splits with
    # one object per image, e.g. "single_train": the classifier must find the object).
    _C.CLS.DATA.EMBEDDED_CROP = "box"
    # Images per process in evaluation.
    _C.CLS.DATA.EVAL_BATCH_SIZE = 32

    _C.CLS.INPUT = CN()
    # Side of the square training crop (ResNet-RS-50: 160; RS-101/152: 192; RS-200: 256).
    _C.CLS.INPUT.TRAIN_SIZE = 160
    # Side of the square evaluation crop.
    _C.CLS.INPUT.EVAL_SIZE = 160
    # Evaluation: resize the shorter side to EVAL_SIZE / EVAL_CROP_RATIO, then centre-crop.
    _C.CLS.INPUT.EVAL_CROP_RATIO = 0.875
    # Training: random-resized-crop area range, as fractions of the image ([min, max]).
    _C.CLS.INPUT.CROP_SCALE = [0.08, 1.0]
    # Training: random horizontal flip.
    _C.CLS.INPUT.HFLIP = True
    # Training: RandAugment (torchvision) number of ops per image; 0 disables RandAugment.
    _C.CLS.INPUT.RANDAUGMENT_OPS = 2
    # Training: RandAugment magnitude (0-30 scale of torchvision; ResNet-RS: 10-15 by size).
    _C.CLS.INPUT.RANDAUGMENT_MAGNITUDE = 10

    _C.CLS.EMA = CN()
    # Keep an exponential moving average of the weights (and BN statistics).
    _C.CLS.EMA.ENABLED = True
    # EMA decay per step. The decay used at step t is min(DECAY, (1 + t) / (10 + t)), so the
    # average follows the weights closely early in training (TensorFlow's num_updates rule).
    _C.CLS.EMA.DECAY = 0.9999
    # Export (--export-d2) the EMA weights instead of the raw weights, when there are any.
    _C.CLS.EMA.EXPORT = True
    return cfg


def get_pretrain_cfg():
    """Detectron2's default config + ``MODEL.SSB`` + ``CLS``, with ResNet-RS recipe defaults.

    Only keys whose Detectron2 default is meant for detection fine-tuning are changed here;
    each change says why. Model yaml files then state only what differs per model.

    Returns:
        CfgNode: a mutable config ready for ``merge_from_file`` / ``merge_from_list``.
    """
    cfg = add_pretrain_config(add_ssb_config(get_cfg()))
    # Pretraining trains every layer with batch statistics; detection fine-tunes with
    # FrozenBN and FREEZE_AT 2, which is why Detectron2's defaults differ.
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    # torchvision / ResNet-RS convention: the stride of a strided block sits on the 3x3 conv.
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    # Classification needs the last stage.
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    # RGB in 0-255, normalised by the ImageNet statistics (torchvision / timm convention);
    # detection configs using these weights must use the same three keys.
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.PIXEL_MEAN = list(IMAGENET_RGB_MEAN)
    cfg.MODEL.PIXEL_STD = list(IMAGENET_RGB_STD)
    # ResNet-RS recipe: SGD momentum 0.9, 0.1 per 256 images, cosine decay with warmup,
    # weight decay 4e-5, none on BN parameters and biases.
    cfg.SOLVER.IMS_PER_BATCH = 256
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.MOMENTUM = 0.9
    cfg.SOLVER.NESTEROV = False
    cfg.SOLVER.WEIGHT_DECAY = 4e-5
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.WEIGHT_DECAY_BIAS = 0.0
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"
    cfg.SOLVER.WARMUP_ITERS = 5000
    cfg.SOLVER.WARMUP_FACTOR = 0.001
    cfg.SOLVER.MAX_ITER = 100000
    cfg.SOLVER.CHECKPOINT_PERIOD = 5000
    cfg.TEST.EVAL_PERIOD = 5000
    cfg.OUTPUT_DIR = "./output/pretrain"
    cfg.SEED = 0
    return cfg
