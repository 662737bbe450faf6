"""Config keys of SSB-ResNet: ``add_ssb_config(cfg)`` adds the ``MODEL.SSB`` node.

Every other backbone setting is read from Detectron2's own ``MODEL.RESNETS`` node and
``MODEL.BACKBONE.FREEZE_AT``, with the same meaning: each key that Detectron2 or its projects
define (``ssb_det.modeling.backbone.RESNETS_KEYS``, DEPTH ... DEFORM_*, and DeepLab's STEM_TYPE,
RES4_DILATION, RES5_MULTI_GRID) is honoured or refused with an error naming it; an unknown
key is refused too.
Keys marked *(choice)* are this project's reading of the paper; see README "Design".

Only what changes the model, or a trade-off that is the user's (``MEMORY_EFFICIENT`` trades
compute for memory, like activation checkpointing), is a key here. How the implementation
reaches the same values fastest is decided inside it.
"""
from typing import Optional, Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = ["add_ssb_config", "load_config", "HOSTS", "REMOVED_KEYS"]

HOSTS = ("resnet", "resnet-rs", "botnet")

# key -> (what became of it, what to do), for the error that a config setting it gets.
REMOVED_KEYS = {
    "MODEL.SSB.SEPARABLE": (
        "nothing (removed: the sampling map is always separable, with an exact inverse)",
        "delete MODEL.SSB.SEPARABLE from your config"),
}


def add_ssb_config(cfg):
    """Add the ``MODEL.SSB`` node to ``cfg`` (pretraining adds its ``CLS`` node with
    ``ssb_det.classification.add_pretrain_config``).

    Idempotent: calling it twice leaves the config as after the first call.

    Args:
        cfg (CfgNode): a Detectron2 config, usually ``detectron2.config.get_cfg()``.

    Returns:
        CfgNode: ``cfg`` itself, for chaining.
    """
    if "SSB" in cfg.MODEL:
        return cfg
    _C = cfg
    _C.MODEL.SSB = CN()
    # Use SSB blocks. False builds the plain host with the same builder, so a baseline
    # config differs from its SSB twin in this one key (and in nothing else).
    _C.MODEL.SSB.ENABLED = True
    # Host network: "resnet" (Detectron2's ResNet: 7x7 stem + max-pool, strided 1x1
    # shortcut) or "resnet-rs" (deep 3x3 stem with a stride-2 conv instead of the max-pool,
    # ResNet-D avg-pool shortcut, squeeze-excitation). ResNet-RS strides the 3x3 conv, so
    # it requires MODEL.RESNETS.STRIDE_IN_1X1 = False. "botnet": Detectron2's ResNet whose
    # res5 blocks are BoTNet's (global multi-head self-attention with relative position
    # logits in place of the 3x3; SSB-BoT blocks, sampled, where res5's ratio is < 1; the
    # BoTNet-S1 depths 59/77/110/128 with MODEL.RESNETS.RES5_DILATION 2, c5 at stride 16).
    _C.MODEL.SSB.HOST = "resnet"
    # Sampling ratio r per stage res2..res5: each stride-1 block of a stage with r < 1 runs
    # its 3x3 on a round(r*H) x round(r*W) map. r = 1 keeps ordinary blocks. *(choice)*
    _C.MODEL.SSB.RATIOS = [0.5, 0.5, 0.5, 1.0]
    # Side G of the pooled saliency grid the sampling map is computed on. *(choice; Recasens
    # et al. use 31)*
    _C.MODEL.SSB.GRID_SIZE = 31
    # Replicate padding P of the saliency grid, in cells; the Gaussian kernel spans 2P+1
    # cells. *(choice; Recasens: 30)*
    _C.MODEL.SSB.GRID_PADDING = 30
    # Standard deviation of the Gaussian kernel, in grid cells. *(choice; Recasens: FWHM of
    # 13 cells, i.e. sigma = 13 / 2.355 ~ 5.5)*
    _C.MODEL.SSB.KERNEL_SIGMA = 5.5
    # Hold the saliency constant: uniform sampling, the paper's ablation baseline. The
    # saliency convs are then not created.
    _C.MODEL.SSB.UNIFORM = False
    # Bound B of the pooled saliency logits: l -> B tanh(l / B), so one grid cell outweighs
    # another by at most exp(2B) and a fast-learning saliency cannot collapse the map onto a
    # few rows (projects/SSBStudy/docs/accuracy.md). 0: unbounded (the paper's softmax).
    # *(choice)*
    _C.MODEL.SSB.SALIENCY_BOUND = 0.0
    # Where the inverse sampling sits: "after_conv3" (conv3 runs on the small map, the
    # inverse restores 4f channels) or "before_conv3" (the inverse restores the f-channel 3x3
    # output, conv3 runs at full size). *(choice; default picked by benchmark)*
    _C.MODEL.SSB.INVERSE_POSITION = "after_conv3"
    # Largest number of rows or columns of a map the "botnet" host's attention runs on: its
    # relative position tables span this many offsets each way and are sliced for smaller
    # maps (128 at stride 16 covers 2048 px, before sampling). Larger maps are refused.
    _C.MODEL.SSB.ATTENTION_SPAN = 128
    # Squeeze-excitation ratio of the "resnet-rs" host (hidden = ratio * block output
    # channels); 0 disables. The plain "resnet" host has no SE and ignores it.
    _C.MODEL.SSB.SE_RATIO = 0.25
    # Width of the first two convs of the "resnet-rs" deep stem.
    _C.MODEL.SSB.STEM_WIDTH = 32
    # Stochastic depth: drop probability of the last block's residual branch, growing
    # linearly from 0 over the blocks. ResNet-RS uses 0.1 at depth >= 200; 0 disables.
    _C.MODEL.SSB.DROP_PATH_RATE = 0.0
    # Training memory: recompute the sampling passes and conv3 of SSB blocks in backward
    # instead of storing their outputs (same outputs and gradients, less peak memory).
    _C.MODEL.SSB.MEMORY_EFFICIENT = True
    # Sample each image of a padded batch within its own size, inferred from the zero
    # padding Detectron2 adds after normalisation: an image is then sampled as it would be
    # alone, whatever its batch-mates. False: saliency and sampling map span the padded batch.
    _C.MODEL.SSB.PADDING_AWARE = True
    # Training: learning rate of the saliency convs relative to SOLVER.BASE_LR. The convs
    # start at zero (uniform sampling) and the map moves only once the pooled logits
    # spread by several units (projects/SSBStudy/docs/accuracy.md); a factor > 1 lets them
    # get there sooner.
    _C.SOLVER.SALIENCY_LR_FACTOR = 1.0
    # Keys that no longer exist: a config that sets one is refused with what to do (by every
    # merge: merge_from_file, merge_from_list, load_config).
    for key, (what, fix) in REMOVED_KEYS.items():
        _C.register_renamed_key(key, (what, fix))
    return cfg


def load_config(config_file: Optional[str] = None, opts: Sequence[str] = (),
                cfg: Optional[CN] = None) -> CN:
    """The config loader of every entry point: defaults, then ``config_file``, then ``opts``.

    YAML is read with ``allow_unsafe=False``: Detectron2 would otherwise fall back to
    ``yaml.unsafe_load``, with which a config file (or its ``_BASE_``) can run code.

    Args:
        config_file (str or None): a YAML config; None: defaults only.
        opts (Sequence[str]): ``KEY VALUE`` overrides, as on Detectron2's command lines.
        cfg (CfgNode or None): the defaults; None: Detectron2's with ``MODEL.SSB``.

    Returns:
        CfgNode: mutable (the caller freezes it after its own settings).
    """
    if cfg is None:
        cfg = add_ssb_config(get_cfg())
    if config_file:
        cfg.merge_from_file(config_file, allow_unsafe=False)
    cfg.merge_from_list(list(opts))
    return cfg
