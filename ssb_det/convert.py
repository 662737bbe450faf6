"""Weight conversion: ImageNet checkpoints -> SSB-ResNet(-RS) initialisations for Detectron2.

In the spirit of Detectron2's ``tools/convert-torchvision-to-d2.py``: tensors are renamed to
Detectron2's ResNet names (``stem.conv1.weight``, ``res2.0.conv1.norm.running_mean``, ...) and
written with ``matching_heuristics: True``, so ``MODEL.WEIGHTS`` finds them under
``backbone.bottom_up.`` (FPN), ``backbone.`` (C4 / DC5) or ``roi_heads.res5`` alike.

Sources (the format is detected from the keys of SRC):

- ``torchvision``: ``torchvision.models.resnet50/101/152`` state dicts (also timm's plain
  ``resnet*``, which share the layout); ResNeXt / wide variants work too (groups and width
  are read from the weights).
- ``timm-resnetrs``: timm ``resnetrs50/101/152/200`` checkpoints (deep stem, ResNet-D
  shortcut, squeeze-excitation), for the ``resnet-rs`` host.
- ``msra``: Detectron2's MSRA ImageNet ``R-50.pkl`` / ``R-101.pkl`` (Caffe2 blob names, BGR,
  stride in the 1x1).
- ``detectron2``: tensors already named as Detectron2's ResNet (e.g. the output of
  ``convert-torchvision-to-d2.py``, a file written by this module or by
  ``pretrain_cls.py --export-d2``, or a ``pretrain_cls.py`` training checkpoint).

The output holds every tensor of the target SSB-ResNet: each converted tensor equals its
source tensor; the saliency convs, which no ImageNet ResNet has, are zero, so every SSB block
starts as uniform sampling. A source tensor whose shape differs from the target's is refused,
as is a target tensor the source lacks (other than the saliency convs).
"""
import argparse
import dataclasses
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .checkpoint import atomic_torch_save, load_checkpoint_file
from .config import HOSTS
from .modeling import BLOCKS_PER_STAGE, ssb_resnet

__all__ = [
    "SOURCE_FORMATS",
    "CONVENTIONS",
    "ConversionError",
    "ConversionReport",
    "read_state_dict",
    "detect_source_format",
    "to_detectron2_names",
    "infer_architecture",
    "match_to_target",
    "convert_weights",
    "load_pretrained_backbone",
    "save_d2_checkpoint",
    "conventions_mismatch",
    "main",
]

SOURCE_FORMATS = ("torchvision", "timm-resnetrs", "msra", "detectron2")

_TV_MEAN, _TV_STD = [123.675, 116.280, 103.530], [58.395, 57.120, 57.375]
# The config a network trained in each source convention needs to see the inputs it was
# trained on (keys of the Detectron2 config).
CONVENTIONS = {
    "torchvision": {"MODEL.SSB.HOST": "resnet", "MODEL.RESNETS.STRIDE_IN_1X1": False,
                    "INPUT.FORMAT": "RGB", "MODEL.PIXEL_MEAN": _TV_MEAN,
                    "MODEL.PIXEL_STD": _TV_STD},
    "timm-resnetrs": {"MODEL.SSB.HOST": "resnet-rs", "MODEL.RESNETS.STRIDE_IN_1X1": False,
                      "INPUT.FORMAT": "RGB", "MODEL.PIXEL_MEAN": _TV_MEAN,
                      "MODEL.PIXEL_STD": _TV_STD},
    "msra": {"MODEL.SSB.HOST": "resnet", "MODEL.RESNETS.STRIDE_IN_1X1": True,
             "INPUT.FORMAT": "BGR", "MODEL.PIXEL_MEAN": [103.530, 116.280, 123.675],
             "MODEL.PIXEL_STD": [1.0, 1.0, 1.0]},
}

# MSRA's ImageNet models store only BN scale and bias (Caffe2 AffineChannel). The missing
# statistics get the values Detectron2's FrozenBatchNorm2d fills in when it loads such a
# file (mean 0, var 1), so a converted MSRA file gives exactly what MODEL.WEIGHTS R-50.pkl gives.
_AFFINE_ONLY_BN_STATS = {"running_mean": 0.0, "running_var": 1.0}

_NORM_FIELDS = "weight|bias|running_mean|running_var"
_SALIENCY = re.compile(r"\.sampler\.saliency_conv\.weight$")


class ConversionError(ValueError):
    """The source cannot become the requested target; the message says why."""


@dataclasses.dataclass
class ConversionReport:
    """What a conversion did.

    Attributes:
        source (str): the source file.
        source_format (str): one of :data:`SOURCE_FORMATS`.
        host (str): target host, ``"resnet"`` or ``"resnet-rs"``.
        architecture (dict): ``depth``, ``num_groups``, ``width_per_group`` read from the
            weights.
        matched (dict): target key -> source key, each copied unchanged.
        head (dict): ``"weight"`` / ``"bias"`` -> source key of the classification layer
            (kept beside the backbone for the classifier; not part of the backbone).
        initialised (dict): target key -> how it was initialised (zero saliency conv, or
            identity BN statistics for MSRA's affine-only BN).
        unexpected (list): source keys not used (BN counters, optimiser extras, ...).
        conventions (dict): config keys the weights imply (see :data:`CONVENTIONS`).
    """

    source: str
    source_format: str
    host: str
    architecture: dict
    matched: Dict[str, str]
    head: Dict[str, str]
    initialised: Dict[str, str]
    unexpected: List[str]
    conventions: dict

    def summary(self) -> str:
        lines = [
            f"source: {self.source} (format: {self.source_format})",
            f"target: SSB-ResNet host={self.host} {self.architecture}",
            f"matched: {len(self.matched)} tensors copied unchanged",
            f"classification head: {sorted(self.head) or 'none'}",
            f"missing from the source, initialised: {len(self.initialised)}",
        ]
        kinds = sorted(set(self.initialised.values()))
        for kind in kinds:
            keys = [k for k, v in self.initialised.items() if v == kind]
            lines.append(f"  {len(keys)} x {kind}: {keys[0]}" + (", ..." if len(keys) > 1 else ""))
        lines.append(f"unexpected (not converted): {len(self.unexpected)}"
                     + (f": {self.unexpected[:8]}" + (" ..." if len(self.unexpected) > 8 else "")
                        if self.unexpected else ""))
        if self.conventions:
            lines.append("config the weights imply:")
            lines += [f"  {k} {v}" for k, v in self.conventions.items()]
        return "\n".join(lines)


# ------------------------------------------------------------------------------- reading


def read_state_dict(obj_or_path) -> Tuple[Dict[str, torch.Tensor], dict, List[str]]:
    """Load (if a path) and unwrap a checkpoint into a flat ``{name: tensor}`` dict.

    Accepts plain state dicts and the usual wrappers (``model``, ``state_dict``,
    ``model_state``, Caffe2 ``blobs``); numpy arrays become tensors; a ``module.`` prefix
    (DataParallel) is stripped. ``.pth`` files are read with ``weights_only=True`` and
    ``.pkl`` files with the restricted unpickler (:mod:`ssb_det.checkpoint`).

    Args:
        obj_or_path: a path, or an already loaded checkpoint object.

    Returns:
        tuple: (tensors, meta, skipped): ``meta`` holds the wrapper's other entries (e.g.
        ``conventions``, ``classifier_head``), ``skipped`` the names of non-tensor entries.
    """
    source = obj_or_path if isinstance(obj_or_path, str) else "<state dict>"
    obj = load_checkpoint_file(obj_or_path) if isinstance(obj_or_path, str) else obj_or_path
    if not isinstance(obj, dict):
        raise ConversionError(f"{source}: expected a state dict (a dict of tensors), got "
                              f"{type(obj).__name__}")
    meta = {}
    for wrapper in ("model", "state_dict", "model_state"):  # Detectron2/ours, timm, pycls
        if isinstance(obj.get(wrapper), dict):
            meta = {k: v for k, v in obj.items() if k != wrapper}
            obj = obj[wrapper]
            break
    if isinstance(obj.get("blobs"), dict):  # Caffe2 / Detectron1 detection pickles
        obj = obj["blobs"]
    tensors, skipped = {}, []
    for key, value in obj.items():
        if isinstance(value, np.ndarray) and value.dtype != object:
            value = torch.from_numpy(np.ascontiguousarray(value))
        if isinstance(value, torch.Tensor):
            tensors[key[len("module."):] if key.startswith("module.") else key] = value
        else:
            skipped.append(key)
    if not tensors:
        raise ConversionError(f"{source}: no tensors found (top-level keys: {list(obj)[:10]})")
    return tensors, meta, skipped


def detect_source_format(keys) -> str:
    """Which of :data:`SOURCE_FORMATS` a set of state-dict keys comes from."""
    keys = set(keys)
    if "conv1_w" in keys or any(re.match(r"res\d_\d+_branch", k) for k in keys):
        return "msra"
    if "conv1.0.weight" in keys and "maxpool.0.weight" in keys:
        return "timm-resnetrs"
    if "conv1.weight" in keys and "layer1.0.conv1.weight" in keys:
        return "torchvision"
    if any(k.startswith(("stem.", "backbone.stem.")) for k in keys):
        return "detectron2"
    raise ConversionError(
        "cannot tell the format of the weights: expected torchvision ('conv1.weight', "
        "'layer1.0.conv1.weight'), timm resnetrs ('conv1.0.weight', 'maxpool.0.weight'), "
        "MSRA Caffe2 ('conv1_w', 'res2_0_branch2a_w') or Detectron2 ('stem.conv1.weight') "
        f"names; the file has e.g. {sorted(keys)[:8]}"
    )


def _block_rules():
    # Names inside a bottleneck shared by torchvision and timm: conv{i}, bn{i}, se.fc{i}.
    return [
        (rf"layer(\d)\.(\d+)\.conv([123])\.weight", lambda m: f"{_res(m)}.conv{m[3]}.weight"),
        (rf"layer(\d)\.(\d+)\.bn([123])\.({_NORM_FIELDS})",
         lambda m: f"{_res(m)}.conv{m[3]}.norm.{m[4]}"),
        (r"layer(\d)\.(\d+)\.se\.fc([12])\.(weight|bias)", lambda m: f"{_res(m)}.se.fc{m[3]}.{m[4]}"),
    ]


def _res(m) -> str:
    return f"res{int(m[1]) + 1}.{m[2]}"


def _shortcut_rules(conv: int):
    """Projection shortcut ``downsample`` = ``Sequential(..., conv, bn)`` with the conv at
    index ``conv`` (timm's ResNet-D puts an average pool first)."""
    return [
        (rf"layer(\d)\.(\d+)\.downsample\.{conv}\.weight", lambda m: f"{_res(m)}.shortcut.weight"),
        (rf"layer(\d)\.(\d+)\.downsample\.{conv + 1}\.({_NORM_FIELDS})",
         lambda m: f"{_res(m)}.shortcut.norm.{m[3]}"),
    ]


_RULES = {
    "torchvision": [
        (r"conv1\.weight", lambda m: "stem.conv1.weight"),
        (rf"bn1\.({_NORM_FIELDS})", lambda m: f"stem.conv1.norm.{m[1]}"),
        *_block_rules(),
        *_shortcut_rules(conv=0),
    ],
    # timm ResNet(stem_type="deep", replace_stem_pool=True, avg_down=True, SE): the stem is
    # conv1 = Sequential(conv, bn, act, conv, bn, act, conv), bn1, and maxpool =
    # Sequential(conv, bn, act); the shortcut is Sequential(avgpool, conv, bn).
    "timm-resnetrs": [
        (r"conv1\.0\.weight", lambda m: "stem.conv1.weight"),
        (rf"conv1\.1\.({_NORM_FIELDS})", lambda m: f"stem.conv1.norm.{m[1]}"),
        (r"conv1\.3\.weight", lambda m: "stem.conv2.weight"),
        (rf"conv1\.4\.({_NORM_FIELDS})", lambda m: f"stem.conv2.norm.{m[1]}"),
        (r"conv1\.6\.weight", lambda m: "stem.conv3.weight"),
        (rf"bn1\.({_NORM_FIELDS})", lambda m: f"stem.conv3.norm.{m[1]}"),
        (r"maxpool\.0\.weight", lambda m: "stem.conv4.weight"),
        (rf"maxpool\.1\.({_NORM_FIELDS})", lambda m: f"stem.conv4.norm.{m[1]}"),
        *_block_rules(),
        *_shortcut_rules(conv=1),
    ],
    # Caffe2 blob names, as Detectron2's convert_basic_c2_names reads them.
    "msra": [
        (r"conv1_w", lambda m: "stem.conv1.weight"),
        (r"res_conv1_bn_(s|b|rm|riv)", lambda m: f"stem.conv1.norm.{_C2_BN[m[1]]}"),
        (r"res(\d)_(\d+)_branch(1|2a|2b|2c)_w",
         lambda m: f"res{m[1]}.{m[2]}.{_C2_BRANCH[m[3]]}.weight"),
        (r"res(\d)_(\d+)_branch(1|2a|2b|2c)_bn_(s|b|rm|riv)",
         lambda m: f"res{m[1]}.{m[2]}.{_C2_BRANCH[m[3]]}.norm.{_C2_BN[m[4]]}"),
    ],
    "detectron2": [
        (rf"(stem\.conv[1-4]\.(?:weight|norm\.(?:{_NORM_FIELDS})))", lambda m: m[1]),
        (rf"(res[2-5]\.\d+\.(?:conv[123]|shortcut)\.(?:weight|norm\.(?:{_NORM_FIELDS})))",
         lambda m: m[1]),
        (r"(res[2-5]\.\d+\.se\.fc[12]\.(?:weight|bias))", lambda m: m[1]),
        (r"(res[2-5]\.\d+\.sampler\.saliency_conv\.weight)", lambda m: m[1]),
    ],
}
_C2_BN = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_C2_BRANCH = {"1": "shortcut", "2a": "conv1", "2b": "conv2", "2c": "conv3"}
_HEAD_KEYS = {
    "torchvision": {"fc.weight": "weight", "fc.bias": "bias"},
    "timm-resnetrs": {"fc.weight": "weight", "fc.bias": "bias"},
    "msra": {"fc1000_w": "weight", "fc1000_b": "bias"},
    "detectron2": {"fc.weight": "weight", "fc.bias": "bias"},  # a pretrain_cls checkpoint
}


def to_detectron2_names(keys: Sequence[str], fmt: str):
    """Map source keys to Detectron2 ResNet names.

    Args:
        keys (Sequence[str]): keys of a state dict (see :func:`read_state_dict`).
        fmt (str): one of :data:`SOURCE_FORMATS`.

    Returns:
        tuple: (backbone, head, unexpected): ``backbone`` maps Detectron2 name -> source key,
        ``head`` maps ``"weight"``/``"bias"`` -> source key, ``unexpected`` lists the source
        keys neither uses (BN ``num_batches_tracked`` counters are skipped silently).
    """
    if fmt not in _RULES:
        raise ConversionError(f"unknown source format {fmt!r}; known: {SOURCE_FORMATS}")
    rules = [(re.compile(p), f) for p, f in _RULES[fmt]]
    prefix = ""
    if fmt == "detectron2" and any(k.startswith("backbone.stem.") for k in keys):
        prefix = "backbone."  # a pretrain_cls classifier checkpoint
    backbone, head, unexpected = {}, {}, []
    for key in keys:
        if key.endswith("num_batches_tracked"):
            continue  # BN step counters carry no weights; FrozenBN has none
        if key in _HEAD_KEYS[fmt]:
            head[_HEAD_KEYS[fmt][key]] = key
            continue
        name = key[len(prefix):] if key.startswith(prefix) else None
        target = None
        if name is not None:
            for pattern, make in rules:
                m = pattern.fullmatch(name)
                if m:
                    target = make(m)
                    break
        if target is None:
            unexpected.append(key)
        elif target in backbone:
            raise ConversionError(f"source keys {backbone[target]!r} and {key!r} both map to "
                                  f"{target!r}")
        else:
            backbone[target] = key
    return backbone, head, sorted(unexpected)


def infer_architecture(shapes: Dict[str, torch.Size]) -> dict:
    """Depth, groups and width of a ResNet from its Detectron2-named tensor shapes.

    Args:
        shapes (dict): Detectron2 name -> shape.

    Returns:
        dict: ``depth``, ``num_groups``, ``width_per_group``, ``host`` (the host the stem
        implies: a 4-conv deep stem is ``resnet-rs``).
    """
    blocks = []
    for stage in range(2, 6):
        ids = {int(m[1]) for k in shapes for m in [re.match(rf"res{stage}\.(\d+)\.", k)] if m}
        blocks.append(max(ids) + 1 if ids else 0)
    if not any(k.endswith(".conv3.weight") for k in shapes):
        raise ConversionError(
            f"the source has no conv3 in its blocks (blocks per stage {blocks}): a basic-block "
            "ResNet (ResNet-18/34)? SSB-ResNet is a bottleneck network (depth 50/101/152/200)"
        )
    depth = next((d for d, b in BLOCKS_PER_STAGE.items() if b == blocks), None)
    if depth is None:
        raise ConversionError(
            f"the source has {blocks} blocks per stage (res2..res5); SSB-ResNet depths are "
            + ", ".join(f"{d}: {b}" for d, b in BLOCKS_PER_STAGE.items())
        )
    conv2 = shapes.get("res2.0.conv2.weight")
    if conv2 is None:
        raise ConversionError("the source has no res2.0 3x3 conv ('res2.0.conv2.weight')")
    bottleneck, per_group = int(conv2[0]), int(conv2[1])
    groups = bottleneck // per_group
    return {
        "depth": depth,
        "num_groups": groups,
        "width_per_group": bottleneck // groups,
        "host": "resnet-rs" if "stem.conv4.weight" in shapes else "resnet",
    }


def match_to_target(target_state: Dict[str, torch.Tensor], source: Dict[str, torch.Tensor],
                    backbone: Dict[str, str], *, affine_only_bn: bool = False,
                    describe_target: str = "the target"):
    """Fill a target backbone state dict from Detectron2-named source tensors.

    Every target tensor comes from the source unchanged, except the saliency convs (kept
    from ``target_state``: zero at initialisation, i.e. uniform sampling) and, with
    ``affine_only_bn``, the BN statistics a Caffe2 affine-only BN lacks (mean 0, var 1, as
    Detectron2's FrozenBN fills them in).
    BN step counters (``num_batches_tracked``) are kept from the target.

    Args:
        target_state (dict): the target backbone's state dict (names and shapes).
        source (dict): source tensors by source key.
        backbone (dict): Detectron2 name -> source key (see :func:`to_detectron2_names`).
        affine_only_bn (bool): synthesise missing ``running_mean`` / ``running_var``.
        describe_target (str): how error messages name the target.

    Returns:
        tuple: (state, matched, initialised, unexpected): the filled state dict; target key
        -> source key copied; target key -> how it was initialised; Detectron2 names of the
        source not in the target.

    Raises:
        ConversionError: a shape mismatch, or a target tensor the source lacks.
    """
    mismatched = [f"{name} (source {backbone[name]}): source {tuple(source[backbone[name]].shape)}"
                  f", target {tuple(target_state[name].shape)}"
                  for name in backbone if name in target_state
                  and source[backbone[name]].shape != target_state[name].shape]
    if mismatched:
        raise ConversionError(
            f"shape mismatch between the source and {describe_target} in {len(mismatched)} "
            "tensors (a different host, depth or width? a torchvision/MSRA ResNet converts to "
            "--host resnet, a timm resnetrs to --host resnet-rs):\n  " + "\n  ".join(mismatched[:12])
            + ("\n  ..." if len(mismatched) > 12 else "")
        )
    state, matched, initialised, lacking = {}, {}, {}, []
    for name, value in target_state.items():
        if name in backbone:
            state[name] = source[backbone[name]].detach().clone()
            matched[name] = backbone[name]
        elif _SALIENCY.search(name):
            state[name] = value.detach().clone()
            initialised[name] = "saliency conv = 0 (uniform sampling)"
        elif name.endswith("num_batches_tracked"):
            state[name] = value.detach().clone()
        elif affine_only_bn and name.endswith((".norm.running_mean", ".norm.running_var")):
            fill = _AFFINE_ONLY_BN_STATS[name.rsplit(".", 1)[1]]
            state[name] = torch.full_like(value, fill)
            initialised[name] = "BN statistics of an affine-only BN (mean 0, var 1)"
        else:
            lacking.append(name)
    if lacking:
        raise ConversionError(
            f"the source has no tensor for {len(lacking)} tensors of {describe_target}, e.g. "
            f"{lacking[:8]} (squeeze-excitation or deep-stem weights missing: a plain ResNet "
            "converted to --host resnet-rs?)"
        )
    unexpected = sorted(set(backbone) - set(target_state))
    return state, matched, initialised, unexpected


# ------------------------------------------------------------------------------- writing


def save_d2_checkpoint(path: str, backbone_state: Dict[str, torch.Tensor], *, author: str,
                       head: Optional[Dict[str, torch.Tensor]] = None,
                       conventions: Optional[dict] = None) -> None:
    """Write a Detectron2-loadable backbone checkpoint (atomically).

    ``{"model": {Detectron2 ResNet name: tensor}, "__author__": author,
    "matching_heuristics": True, "conventions": {...}, "classifier_head": {...}}``: the
    checkpointer matches ``res2.0.conv1.weight`` to ``backbone.bottom_up.res2.0.conv1.weight``
    by suffix; the two extra entries are ignored by Detectron2.

    Args:
        path (str): output ``.pth`` file.
        backbone_state (dict): Detectron2 ResNet names -> tensors.
        author (str): recorded as ``__author__``.
        head (dict or None): ``weight`` / ``bias`` of the classification layer.
        conventions (dict or None): config keys the weights imply.
    """
    if path.endswith(".pkl"):
        raise ValueError(f"{path}: write a .pth file; .pkl is read as a Caffe2/numpy pickle by "
                         "Detectron2 and ssb_det")
    obj = {
        "model": {k: v.detach().cpu().contiguous() for k, v in backbone_state.items()
                  if not k.endswith("num_batches_tracked")},
        "__author__": author,
        "matching_heuristics": True,
        "conventions": dict(conventions or {}),
    }
    if head:
        obj["classifier_head"] = {k: v.detach().cpu().contiguous() for k, v in head.items()}
    atomic_torch_save(obj, path)


def conventions_mismatch(cfg, conventions: dict) -> List[str]:
    """Config keys whose value differs from what a checkpoint's ``conventions`` say.

    Args:
        cfg (CfgNode): a detection or pretraining config.
        conventions (dict): e.g. ``{"INPUT.FORMAT": "RGB", ...}``.

    Returns:
        list[str]: one ``"KEY: config X, weights expect Y"`` line per difference.
    """
    out = []
    for key, expected in conventions.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        same = (node == expected if not isinstance(expected, (list, tuple))
                else len(node) == len(expected)
                and all(abs(float(a) - float(b)) < 1e-6 for a, b in zip(node, expected)))
        if not same:
            out.append(f"{key}: config {node}, weights expect {expected}")
    return out


# ------------------------------------------------------------------------------- API


def _prepare(src):
    tensors, meta, skipped = read_state_dict(src)
    fmt = detect_source_format(tensors)
    backbone, head, unexpected = to_detectron2_names(list(tensors), fmt)
    if fmt == "detectron2" and isinstance(meta.get("classifier_head"), dict) and not head:
        for k, v in meta["classifier_head"].items():
            tensors[f"classifier_head.{k}"] = v
            head[k] = f"classifier_head.{k}"
    if fmt == "detectron2":
        conventions = dict(meta.get("conventions") or {})
    else:
        conventions = dict(CONVENTIONS[fmt])
    return tensors, fmt, backbone, head, sorted(unexpected + skipped), conventions


def convert_weights(src, dst: Optional[str] = None, *, host: Optional[str] = None,
                    ratios: Optional[Sequence[float]] = None) -> ConversionReport:
    """Convert an ImageNet checkpoint into an SSB-ResNet(-RS) initialisation.

    Args:
        src: path of the source checkpoint (or a loaded state dict).
        dst (str or None): output ``.pth``; None converts without writing (a dry run).
        host (str or None): ``"resnet"`` or ``"resnet-rs"``; None: the host the weights are
            (a deep stem means ``resnet-rs``).
        ratios (Sequence[float] or None): ``MODEL.SSB.RATIOS`` of the target (which blocks get
            a saliency conv); None: the default.

    Returns:
        ConversionReport: matched / initialised / unexpected keys and the implied config.

    Raises:
        ConversionError: unknown format, unsupported depth, shape mismatch or missing tensors.
    """
    tensors, fmt, backbone, head, unexpected, conventions = _prepare(src)
    arch = infer_architecture({k: tensors[s].shape for k, s in backbone.items()})
    host = host or arch["host"]
    if host not in HOSTS:
        raise ConversionError(f"--host {host!r}: must be one of {HOSTS}")
    kwargs = dict(depth=arch["depth"], host=host, enabled=True, norm="FrozenBN",
                  num_groups=arch["num_groups"], width_per_group=arch["width_per_group"],
                  stride_in_1x1=bool(conventions.get("MODEL.RESNETS.STRIDE_IN_1X1", False))
                  and host == "resnet", out_features=["res5"])
    if ratios is not None:
        kwargs["ratios"] = list(ratios)
    target = ssb_resnet(**kwargs)
    state, matched, initialised, extra = match_to_target(
        target.state_dict(), tensors, backbone, affine_only_bn=fmt == "msra",
        describe_target=f"SSB-ResNet-{arch['depth']} (host {host})")
    conventions = dict(conventions, **{"MODEL.SSB.HOST": host,
                                       "MODEL.RESNETS.DEPTH": arch["depth"]})
    if arch["num_groups"] != 1 or arch["width_per_group"] != 64:
        conventions.update({"MODEL.RESNETS.NUM_GROUPS": arch["num_groups"],
                            "MODEL.RESNETS.WIDTH_PER_GROUP": arch["width_per_group"]})
    report = ConversionReport(
        source=src if isinstance(src, str) else "<state dict>", source_format=fmt, host=host,
        architecture={k: arch[k] for k in ("depth", "num_groups", "width_per_group")},
        matched={k: matched[k] for k in sorted(matched)}, head=head,
        initialised=initialised,
        unexpected=sorted(unexpected + [backbone[k] for k in extra]),
        conventions=conventions,
    )
    if dst is not None:
        save_d2_checkpoint(dst, state, author=f"ssb_det.convert ({fmt})",
                           head={k: tensors[s] for k, s in head.items()},
                           conventions=conventions)
    return report


def load_pretrained_backbone(backbone: torch.nn.Module, src):
    """Load any supported source checkpoint into a built backbone (by conversion).

    Args:
        backbone (nn.Module): a Detectron2 ``ResNet`` from :func:`ssb_det.modeling.ssb_resnet`.
        src: path or loaded checkpoint.

    Returns:
        tuple: (report, head): the :class:`ConversionReport` (its ``host`` and
        ``architecture`` are the backbone's) and the classification head tensors
        (``{"weight", "bias"}``, possibly empty).
    """
    tensors, fmt, mapping, head, unexpected, conventions = _prepare(src)
    target_state = backbone.state_dict()
    state, matched, initialised, extra = match_to_target(
        target_state, tensors, mapping, affine_only_bn=fmt == "msra",
        describe_target="the model's backbone")
    backbone.load_state_dict(state, strict=True)
    report = ConversionReport(
        source=src if isinstance(src, str) else "<state dict>", source_format=fmt,
        host="", architecture={}, matched=matched, head=head, initialised=initialised,
        unexpected=sorted(unexpected + [mapping[k] for k in extra]), conventions=conventions,
    )
    return report, {k: tensors[s] for k, s in head.items()}


def main(argv=None) -> int:
    """``tools/convert_weights.py SRC DST [--host resnet|resnet-rs] [--ratios ...]``."""
    parser = argparse.ArgumentParser(
        description="Convert torchvision / timm resnetrs / MSRA .pkl / Detectron2-named ResNet "
                    "weights into an SSB-ResNet(-RS) initialisation for MODEL.WEIGHTS.")
    parser.add_argument("src", help="source checkpoint (.pth/.pt/.pkl); format detected")
    parser.add_argument("dst", help="output .pth")
    parser.add_argument("--host", choices=HOSTS, default=None,
                        help="target host (default: the source's: resnet-rs for a deep stem)")
    parser.add_argument("--ratios", type=float, nargs=4, default=None, metavar="R",
                        help="MODEL.SSB.RATIOS of the target, res2..res5 (default 0.5 0.5 0.5 1)")
    args = parser.parse_args(argv)
    try:
        report = convert_weights(args.src, args.dst, host=args.host, ratios=args.ratios)
    except (ConversionError, FileNotFoundError) as e:
        print(f"convert_weights: error: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    print(f"wrote {args.dst}")
    return 0
