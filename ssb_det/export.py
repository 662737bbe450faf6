"""Export SSB-ResNet backbones and detectors (torch.export, TorchScript trace, ONNX), with
parity checks.

Detectron2 v0.6 cannot import ``detectron2.export`` (it needs caffe2), so this module uses
PyTorch's own exporters around two thin wrappers: :class:`BackboneExport` (features as a
tuple) and :class:`DetectorExport` (a ``GeneralizedRCNN`` on one image -> boxes, scores,
classes[, masks]).

Any input size: :func:`export_program` (``torch.export.export`` with dynamic height and
width) records the sampled size ``round(r * H)`` and the sampling lattices as functions of
the input size, so one program serves every size in its range (the backbone: SSB-ResNet
and its FPN). :func:`export_onnx_dynamic` turns that program into ONNX with dynamic height
and width (``torch.onnx.export(dynamo=True)``, which needs ``onnxscript``), with one export
rule, :func:`onnx_dynamic_rules` (adaptive pooling windows from the runtime size).

Backbones and detectors: ``torch.jit.trace`` (:func:`export_torchscript`) and the
TorchScript-based ``torch.onnx.export`` (``dynamo=False``, :func:`export_onnx`, dynamic
height and width). Under tracing every size is a traced value, and the sampler computes
its sampled size, lattices and image regions from it with tensor ops, so the trace
computes at any input size what eager PyTorch computes there, as Detectron2's own traced
models do (its ``GeneralizedRCNN`` traces are size-generic too).

ONNX through TorchScript (opset >= 16, for ScatterND's ``reduction`` and LessOrEqual on all
types). PyTorch's exporter lacks, gets wrong, or onnxruntime lacks kernels for, four
operations the sampler uses; :func:`onnx_symbolics` adds export rules for the *standard*
ATen ops while exporting, without touching the sampler's code:

- ``aten::searchsorted`` (inverse of the separable map): not exportable; written as a count
  of knots ``<=`` (``right=True``) or ``<`` each query, which equals searchsorted on sorted
  knots.
- ``aten::adaptive_avg_pool2d`` (saliency pooled to ``G x G``): exportable only when ``G``
  divides the input size; written as two averaging matrices, ``P_h @ x @ P_w^T``, built in
  the graph from the runtime size (PyTorch's exact adaptive bins).
- ``aten::index_put`` with ``accumulate=True`` (the sampler's Recasens matrices are built
  with it, in the graph while tracing): PyTorch exports it as a ScatterND that keeps one of
  several writes to the same index instead of summing them; written with opset 16's
  ``reduction="add"``.
- ``aten::_convolution`` on float64: valid ONNX, but onnxruntime's CPU kernel is
  float32-only; run in float32 between two Casts (parity ~1e-6 relative).

``python tools/export_model.py --help`` is the command line; docs/reliability.md lists what
was verified.
"""
import contextlib
import functools
import logging
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple
from unittest import mock

import numpy as np
import torch
from torch import nn

from .checkpoint import SSBCheckpointer, atomic_path

__all__ = [
    "export_main",
    "export_program",
    "dynamic_size_dims",
    "export_parser",
    "EXPORT_FORMATS",
    "BACKBONE_ONLY_FORMATS",
    "MIN_OPSET",
    "DEFAULT_OPSET",
    "BackboneExport",
    "DetectorExport",
    "onnx_symbolics",
    "export_torchscript",
    "export_onnx",
    "export_onnx_dynamic",
    "DYNAMIC_ONNX_OPSET",
    "onnx_dynamic_rules",
    "run_onnx",
    "max_abs_diffs",
    "export_from_config",
]

logger = logging.getLogger(__name__)

MIN_OPSET = 16  # LessOrEqual on all types
DEFAULT_OPSET = 17

# Formats of export_from_config / tools/export_model.py; every one serves any input size.
EXPORT_FORMATS = ("export", "onnx-dynamic", "torchscript", "onnx")
# Those built on torch.export, which does not capture a GeneralizedRCNN: the backbone only.
BACKBONE_ONLY_FORMATS = ("export", "onnx-dynamic")


# ------------------------------------------------------------------------------------ wrappers


class BackboneExport(nn.Module):
    """A Detectron2 backbone returning its features as a tuple (exporters need tensors).

    Args:
        backbone (Backbone): e.g. an SSB-ResNet or its FPN.

    Attributes:
        output_names (list[str]): feature names, in output order (increasing stride).
    """

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        shapes = backbone.output_shape()
        self.output_names = sorted(shapes, key=lambda k: (shapes[k].stride, k))

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        features = self.backbone(images)
        return tuple(features[name] for name in self.output_names)


# Detectron2 modules that split per-image outputs with ``len(instances)``: an int at trace
# time, so a trace would replay the traced image's detection counts on every image (wrong
# boxes, or a crash). ``obj.__len__()`` keeps the traced size computation; this is what
# ``detectron2.export.torchscript_patch.patch_builtin_len`` does in Detectron2 versions
# whose ``detectron2.export`` imports.
_LEN_PATCHED_MODULES = (
    "detectron2.modeling.roi_heads.fast_rcnn",
    "detectron2.modeling.roi_heads.mask_head",
    "detectron2.modeling.roi_heads.keypoint_head",
)


@contextlib.contextmanager
def _trace_friendly_len():
    with contextlib.ExitStack() as stack:
        for module in _LEN_PATCHED_MODULES:
            stack.enter_context(mock.patch(module + ".len", side_effect=lambda obj: obj.__len__(),
                                           create=True))
        yield


class DetectorExport(nn.Module):
    """A ``GeneralizedRCNN`` (Faster/Mask R-CNN) on one image, returning plain tensors.

    The input is one ``(C, H, W)`` float image in the model's ``INPUT.FORMAT`` and pixel
    range (what ``DefaultPredictor`` feeds after resizing). Outputs are in that image's
    coordinates (no rescaling to an original size): ``boxes (R, 4)`` XYXY, ``scores (R,)``,
    ``classes (R,)`` and, with a mask head, ``masks (R, 1, M, M)`` mask probabilities.

    Args:
        model (GeneralizedRCNN): in eval mode.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        from detectron2.modeling import GeneralizedRCNN

        if not isinstance(model, GeneralizedRCNN):
            raise TypeError(
                f"DetectorExport wraps a GeneralizedRCNN (Faster/Mask R-CNN); got "
                f"{type(model).__name__}. Export its backbone with BackboneExport instead."
            )
        self.model = model
        self.mask_on = bool(getattr(model.roi_heads, "mask_on", False))
        self.output_names = ["boxes", "scores", "classes"] + (["masks"] if self.mask_on else [])

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        with _trace_friendly_len():
            instances = self.model.inference([{"image": image}], do_postprocess=False)[0]
        out = (instances.pred_boxes.tensor, instances.scores, instances.pred_classes)
        if self.mask_on:
            out = out + (instances.pred_masks,)
        return out


# ------------------------------------------------------------------------------- ONNX rules


def _symbolic_searchsorted(g, sorted_sequence, values, out_int32, right, side, sorter):
    from torch.onnx import symbolic_helper as sh

    if not sh._is_none(sorter):
        raise RuntimeError("ssb_det ONNX export: searchsorted with a sorter is not supported")
    right = bool(sh._maybe_get_const(right, "b"))
    if not sh._is_none(side):
        right = sh._maybe_get_const(side, "s") == "right"
    knots = sh._unsqueeze_helper(g, sorted_sequence, [-2])  # (..., 1, K)
    queries = sh._unsqueeze_helper(g, values, [-1])  # (..., L, 1)
    below = g.op("LessOrEqual" if right else "Less", knots, queries)  # (..., L, K)
    index = g.op("ReduceSum", g.op("Cast", below, to_i=7),  # int64
                 g.op("Constant", value_t=torch.tensor([-1], dtype=torch.long)), keepdims_i=0)
    if sh._maybe_get_const(out_int32, "b"):
        index = g.op("Cast", index, to_i=6)  # int32
    return index


# ONNX TensorProto element types of the floating-point dtypes pooling may see.
_ONNX_FLOAT_TYPES = {"Float": 1, "Half": 10, "Double": 11, "BFloat16": 16}


def _adaptive_bins(g, x, axis: int, bins: int):
    """``(bins, L)`` averaging matrix of PyTorch's adaptive pooling along ``axis`` of ``x``:
    bin ``i`` averages ``[floor(i L / bins), ceil((i + 1) L / bins))``."""
    def const(v):
        return g.op("Constant", value_t=torch.tensor(v, dtype=torch.long))

    length = g.op("Gather", g.op("Shape", x), const(axis), axis_i=0)  # scalar int64
    i = const(list(range(bins)))
    start = g.op("Div", g.op("Mul", i, length), const(bins))
    end = g.op("Div", g.op("Add", g.op("Mul", g.op("Add", i, const(1)), length), const(bins - 1)),
               const(bins))
    j = g.op("Unsqueeze", g.op("Range", const(0), length, const(1)), const([0]))  # (1, L)
    start, end = g.op("Unsqueeze", start, const([1])), g.op("Unsqueeze", end, const([1]))
    inside = g.op("And", g.op("GreaterOrEqual", j, start), g.op("Less", j, end))  # (bins, L)
    to = _ONNX_FLOAT_TYPES[x.type().scalarType()]
    return g.op("Div", g.op("Cast", inside, to_i=to), g.op("Cast", g.op("Sub", end, start), to_i=to))


def _symbolic_adaptive_avg_pool2d(g, x, output_size):
    from torch.onnx import symbolic_helper as sh

    gh, gw = sh._maybe_get_const(output_size, "is")
    pool_h = _adaptive_bins(g, x, -2, gh)  # (gh, H)
    pool_w = _adaptive_bins(g, x, -1, gw)  # (gw, W)
    return g.op("MatMul", g.op("MatMul", pool_h, x), g.op("Transpose", pool_w, perm_i=[1, 0]))


def _is_double(value) -> bool:
    return value.type().scalarType() == "Double"


def _symbolic_convolution(g, input, weight, bias, *args):
    from torch.onnx import symbolic_helper as sh
    from torch.onnx import symbolic_opset9

    if not _is_double(input):
        return symbolic_opset9._convolution(g, input, weight, bias, *args)

    def to_float(v):
        return v if sh._is_none(v) else g.op("Cast", v, to_i=1)

    out = symbolic_opset9._convolution(g, to_float(input), to_float(weight), to_float(bias), *args)
    return g.op("Cast", out, to_i=11)  # back to float64


def _symbolic_index_put(g, self, indices, values, accumulate=False):
    from torch.onnx import symbolic_helper as sh
    from torch.onnx import symbolic_opset11

    out = symbolic_opset11.index_put(g, self, indices, values, accumulate)
    if sh._parse_arg(accumulate, "b"):
        # PyTorch writes accumulate=True as Add(self, ScatterND(zeros, index, values)):
        # without a reduction ScatterND keeps one of several writes to the same index, where
        # index_put sums them. Opset 16 added reduction="add"; set it.
        scatter = out.node().inputsAt(1).node()
        if scatter.kind() != "onnx::ScatterND":
            raise RuntimeError("ssb_det ONNX export: unexpected graph for index_put(accumulate=True)")
        scatter.s_("reduction", "add")
    return out


_SYMBOLICS = {
    "aten::searchsorted": _symbolic_searchsorted,
    "aten::index_put": _symbolic_index_put,
    "aten::adaptive_avg_pool2d": _symbolic_adaptive_avg_pool2d,
    "aten::_convolution": _symbolic_convolution,
}


@contextlib.contextmanager
def onnx_symbolics(opset: int):
    """Register this module's ONNX export rules for ``opset`` while in the context.

    Registered at the target opset itself, so they take precedence over PyTorch's rules for
    that opset, and removed afterwards (the registry is global).
    """
    from torch.onnx import register_custom_op_symbolic, unregister_custom_op_symbolic

    for name, fn in _SYMBOLICS.items():
        register_custom_op_symbolic(name, fn, opset)
    try:
        yield
    finally:
        for name in _SYMBOLICS:
            unregister_custom_op_symbolic(name, opset)


# ------------------------------------------------------------------------------ exporting


def _as_tuple(outputs) -> Tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def export_torchscript(wrapper: nn.Module, example: torch.Tensor, path: Optional[str] = None):
    """Trace ``wrapper`` on ``example`` (``torch.jit.trace``); the trace runs at any input
    size (see the module's docstring).

    Args:
        wrapper (nn.Module): :class:`BackboneExport` or :class:`DetectorExport`, in eval mode.
        example (Tensor): the example input.
        path (str or None): where to save the ``.pt`` file (``torch.jit.save``).

    Returns:
        torch.jit.ScriptModule: the trace.
    """
    # Inference, as Detectron2 traces; the grids' chunked CPU paths, which write into slices
    # of an output (not recordable), are off while tracing.
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
    if path:
        with atomic_path(path) as tmp:  # no truncated file if interrupted
            traced.save(tmp)
    return traced


def dynamic_size_dims(divisor: int = 1, min_size: int = 128, max_size: int = 2048):
    """``(Dim, Dim)`` for height and width of a ``torch.export`` input: multiples of
    ``divisor`` in ``[min_size, max_size]``.

    Args:
        divisor (int): the backbone's ``size_divisibility`` (32 for an FPN, whose top-down
            additions need sizes divisible by its largest stride); 0 or 1: any size.
        min_size, max_size (int): the range, multiples of ``divisor``.
    """
    from torch.export import Dim

    divisor = max(int(divisor), 1)
    if not (0 < min_size <= max_size) or min_size % divisor or max_size % divisor:
        raise ValueError(f"the size range [{min_size}, {max_size}] must be non-empty, positive "
                         f"and in multiples of {divisor}")
    if divisor == 1:
        return tuple(Dim(n, min=min_size, max=max_size) for n in ("height", "width"))
    return tuple(divisor * Dim(n, min=min_size // divisor, max=max_size // divisor)
                 for n in ("height_div", "width_div"))


def _backbone_size_dims(wrapper: nn.Module, example: torch.Tensor, min_size: int, max_size: int,
                        route: str):
    """Dynamic height/width dims for a backbone export; refuses detectors and bad examples."""
    if not isinstance(wrapper, BackboneExport):
        raise TypeError(f"{route} exports a BackboneExport (the backbone, FPN included) with "
                        f"dynamic height/width; got {type(wrapper).__name__}. Export detectors "
                        "with export_torchscript or export_onnx (also any input size).")
    # Multiples of 32, the ResNet's largest stride: every stage's size is then an exact
    # H / stride, which torch.export's symbolic shapes can prove consistent (at other sizes
    # it stops on unprovable guards such as (H - 1) % 4 != 0 from the strided convs).
    divisor = math.lcm(32, int(getattr(wrapper.backbone, "size_divisibility", 0) or 1))
    dims = dynamic_size_dims(divisor, min_size, max_size)
    h, w = int(example.shape[-2]), int(example.shape[-1])
    if h % divisor or w % divisor or not all(min_size <= v <= max_size for v in (h, w)):
        raise ValueError(f"example size {h}x{w} must lie in [{min_size}, {max_size}] in "
                         f"multiples of {divisor}")
    return {2: dims[0], 3: dims[1]}


def export_program(wrapper: nn.Module, example: torch.Tensor, path: Optional[str] = None, *,
                   min_size: int = 128, max_size: int = 2048):
    """``torch.export.export`` of a :class:`BackboneExport` with dynamic height and width.

    The program computes what eager PyTorch computes at every size in the range, in
    multiples of 32 and of the backbone's ``size_divisibility`` (Detectron2 pads batches to
    it; an FPN fails at other sizes, eager or not). A size outside the range fails
    ``torch.export``'s input check (``Guard failed: x.size()[2] >= 64``). It is exported
    under ``no_grad`` (inference).

    Args:
        wrapper (BackboneExport): in eval mode.
        example (Tensor): ``(N, 3, H, W)``, a size inside the range.
        path (str or None): where to save the ``.pt2`` file (``torch.export.save``).
        min_size, max_size (int): range of height and width. The default minimum, 128,
            leaves an FPN's stride-64 level (p6) at least 2 pixels: a program exported at a
            larger size refuses a 1-pixel p6 (``Guard failed: ... // 64 != 1``). A
            bottom-up SSB-ResNet also exports with 64.

    Returns:
        torch.export.ExportedProgram: call ``.module()`` on it to run it.
    """
    dims = _backbone_size_dims(wrapper, example, min_size, max_size, "export_program")
    with torch.no_grad():
        program = torch.export.export(wrapper, (example,), dynamic_shapes=(dims,))
    if path:
        with atomic_path(path) as tmp:
            torch.export.save(program, tmp)
    return program


def export_onnx(wrapper: nn.Module, example: torch.Tensor, path: str, opset: int = DEFAULT_OPSET,
                input_name: str = "images") -> str:
    """Export ``wrapper`` to ONNX (TorchScript-based exporter) with dynamic height and width.

    The graph computes the sampled sizes, lattices and image regions from the runtime size
    (see the module's docstring), so onnxruntime runs it at any size.

    Args:
        wrapper (nn.Module): :class:`BackboneExport` or :class:`DetectorExport`, in eval mode.
        example (Tensor): the example input.
        path (str): the ``.onnx`` file to write.
        opset (int): ONNX opset, at least :data:`MIN_OPSET`.
        input_name (str): name of the graph input.

    Returns:
        str: ``path``.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"ONNX export of SSB models needs opset >= {MIN_OPSET}; "
                         f"got {opset}")
    with atomic_path(path) as tmp, onnx_symbolics(opset), torch.no_grad():
        torch.onnx.export(wrapper, (example,), tmp, opset_version=opset, dynamo=False,
                          input_names=[input_name], output_names=list(wrapper.output_names),
                          dynamic_axes={input_name: {example.dim() - 2: "height",
                                                     example.dim() - 1: "width"}})
    return path


# ---------------------------------------------------------- ONNX with dynamic height/width

# The dynamo exporter's operator library (onnxscript's torchlib) is written for opset 18; a
# lower opset would go through ONNX's version converter.
DYNAMIC_ONNX_OPSET = 18


def _onnxscript_adaptive_bins(op, x, axis: int, bins: int):
    """``(bins, L)`` averaging matrix of PyTorch's adaptive pooling along ``axis`` (-2 or -1)
    of ``x``, built from the runtime length ``L`` (see :func:`_adaptive_bins`)."""
    length = op.Shape(x, start=axis, end=axis + 1) if axis != -1 else op.Shape(x, start=-1)  # (1,)
    i = op.Constant(value_ints=list(range(bins)))
    n = op.Constant(value_ints=[bins])
    start = op.Div(op.Mul(i, length), n)
    end = op.Div(op.Add(op.Mul(op.Add(i, op.Constant(value_ints=[1])), length),
                        op.Constant(value_ints=[bins - 1])), n)
    j = op.Range(op.Constant(value_int=0), op.Squeeze(length), op.Constant(value_int=1))
    j = op.Unsqueeze(j, op.Constant(value_ints=[0]))  # (1, L)
    start = op.Unsqueeze(start, op.Constant(value_ints=[1]))
    end = op.Unsqueeze(end, op.Constant(value_ints=[1]))
    inside = op.And(op.GreaterOrEqual(j, start), op.Less(j, end))  # (bins, L)
    return op.Div(op.CastLike(inside, x), op.CastLike(op.Sub(end, start), x))


def _onnxscript_adaptive_avg_pool2d(x, output_size):
    # Why: without a rule, the exporter decomposes adaptive pooling with PyTorch's
    # decomposition, which branches on the example's size (divisible or not, window
    # lengths) and so fixes the pooling windows to it: a pooling-only graph exported at
    # 64x96 was off by 0.08 on randn at 128x192, and gathered out of bounds at 1024x64.
    # Two averaging matrices built from the runtime size give PyTorch's exact bins at every
    # size.
    from onnxscript import opset18 as op

    gh, gw = output_size
    pool_h = _onnxscript_adaptive_bins(op, x, -2, gh)
    pool_w = _onnxscript_adaptive_bins(op, x, -1, gw)
    return op.MatMul(op.MatMul(pool_h, x), op.Transpose(pool_w, perm=[1, 0]))


def onnx_dynamic_rules() -> Dict:
    """``custom_translation_table`` of ``torch.onnx.export(dynamo=True)`` for a graph with
    dynamic height/width: adaptive average pooling with size-generic windows."""
    return {torch.ops.aten.adaptive_avg_pool2d.default: _onnxscript_adaptive_avg_pool2d,
            torch.ops.aten._adaptive_avg_pool2d.default: _onnxscript_adaptive_avg_pool2d}


def export_onnx_dynamic(wrapper: nn.Module, example: torch.Tensor, path: str, *,
                        min_size: int = 128, max_size: int = 2048,
                        opset: int = DYNAMIC_ONNX_OPSET, input_name: str = "images") -> str:
    """ONNX of a :class:`BackboneExport` with dynamic height and width (one graph for every
    size in the range), through ``torch.onnx.export(dynamo=True)``.

    The graph is made from :func:`export_program`'s program (same sizes: multiples of 32 and
    of the backbone's ``size_divisibility`` in ``[min_size, max_size]``), so it computes the
    sampled sizes and lattices from the runtime input size. Needs ``onnxscript`` (installed
    by install.sh). onnxruntime's CPU convolutions are float32-only: export in float32.

    Args:
        wrapper (BackboneExport): in eval mode, float32.
        example (Tensor): ``(N, 3, H, W)``, a size inside the range.
        path (str): the ``.onnx`` file to write (weights inside, no external data file).
        min_size, max_size (int): range of height and width (see :func:`export_program`).
        opset (int): ONNX opset, at least :data:`DYNAMIC_ONNX_OPSET`.
        input_name (str): name of the graph input.

    Returns:
        str: ``path``.
    """
    dims = _backbone_size_dims(wrapper, example, min_size, max_size, "export_onnx_dynamic")
    if opset < DYNAMIC_ONNX_OPSET:
        raise ValueError(f"ONNX with dynamic height/width is exported at opset >= "
                         f"{DYNAMIC_ONNX_OPSET} (the dynamo exporter's); got {opset}")
    try:
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError("ONNX export with dynamic height/width needs onnxscript (torch.onnx's "
                          "dynamo exporter): run `bash install.sh` or `pip install "
                          "onnxscript==0.7.2`") from e
    # onnx_ir warns once per empty attribute list ("Defaulted to INTS", the right type),
    # hundreds of lines that would bury the parity report.
    ir_logger = logging.getLogger("onnx_ir._convenience")
    level = ir_logger.level
    ir_logger.setLevel(logging.ERROR)
    try:
        with atomic_path(path) as tmp, torch.no_grad():
            torch.onnx.export(wrapper, (example,), tmp, dynamo=True, opset_version=opset,
                              dynamic_shapes=(dims,), custom_translation_table=onnx_dynamic_rules(),
                              input_names=[input_name], output_names=list(wrapper.output_names),
                              external_data=False, verbose=False)
    finally:
        ir_logger.setLevel(level)
    return path


def run_onnx(path: str, example: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Run an exported graph with onnxruntime (CPU) on ``example``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return tuple(torch.from_numpy(np.asarray(o)) for o in session.run(None, {name: example.numpy()}))


def max_abs_diffs(reference: Sequence[torch.Tensor], other: Sequence[torch.Tensor]) -> List[float]:
    """Max absolute difference per output; ``inf`` where the shapes differ (e.g. another
    number of detections)."""
    if len(reference) != len(other):
        raise ValueError(f"{len(reference)} reference outputs but {len(other)} to compare")
    diffs = []
    for ref, out in zip(reference, other):
        if tuple(ref.shape) != tuple(out.shape):
            diffs.append(math.inf)
        elif ref.numel() == 0:
            diffs.append(0.0)
        else:
            diffs.append((ref.double() - out.double()).abs().max().item())
    return diffs


# ------------------------------------------------------------------------- from a config


def _example_input(cfg, model, what: str, size: Sequence[int], batch: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    h, w = int(size[0]), int(size[1])
    if what == "backbone":
        div = max(int(model.backbone.size_divisibility), 1)
        h, w = math.ceil(h / div) * div, math.ceil(w / div) * div  # FPN needs divisible sizes
        image = torch.rand(batch, 3, h, w, generator=gen) * 255
        return (image - model.pixel_mean) / model.pixel_std  # what the backbone sees
    return torch.rand(3, h, w, generator=gen) * 255


def export_from_config(cfg, output_dir: str, *, what: Sequence[str] = ("backbone", "detector"),
                       formats: Sequence[str] = ("torchscript", "onnx"),
                       input_size: Sequence[int] = (320, 448), batch: int = 1,
                       opset: Optional[int] = None, seed: int = 0,
                       size_range: Sequence[int] = (128, 2048)) -> List[Dict]:
    """Build the model of ``cfg`` (weights from ``MODEL.WEIGHTS``), export it, check parity.

    Args:
        cfg (CfgNode): a detector config (``MODEL.SSB`` present); ``MODEL.DEVICE`` should be
            ``cpu``.
        output_dir (str): where ``backbone.pt2``, ``backbone_dynamic.onnx``, ``backbone.pt``,
            ``backbone.onnx``, ``detector.pt``, ``detector.onnx`` are written.
        what (Sequence[str]): ``"backbone"`` (the model's backbone, FPN included) and/or
            ``"detector"`` (Faster/Mask R-CNN, batch 1).
        formats (Sequence[str]): ``"export"`` (``torch.export``, ``backbone.pt2``) and
            ``"onnx-dynamic"`` (ONNX through ``torch.export``, ``backbone_dynamic.onnx``):
            backbone only; ``"torchscript"`` (``.pt``) and ``"onnx"`` (``.onnx``, through
            TorchScript): backbone and detector. All take any input size (the ``torch.export``
            ones within ``size_range``); each is checked at the example and a larger size.
        input_size (Sequence[int]): ``(H, W)`` of the example; rounded up to the backbone's
            size divisibility for ``"backbone"``.
        batch (int): batch size of the backbone example.
        opset (int or None): ONNX opset; None: :data:`DEFAULT_OPSET` for ``"onnx"``,
            :data:`DYNAMIC_ONNX_OPSET` for ``"onnx-dynamic"``.
        seed (int): seed of the random example image (and of the weights' initialisation).
        size_range (Sequence[int]): ``(min, max)`` height and width of the ``"export"``
            program and the ``"onnx-dynamic"`` graph (see :func:`export_program`).

    Returns:
        list[dict]: one row per export and checked input: ``what``, ``format``, ``path``,
        ``outputs`` (names), ``input_shape``, ``max_abs_diff`` (per output, vs eager
        PyTorch) and ``max_abs_ref`` (per output).
    """
    from detectron2.modeling import build_model

    unknown = set(what) - {"backbone", "detector"} | set(formats) - set(EXPORT_FORMATS)
    if unknown:
        raise ValueError(f"unknown export targets/formats: {sorted(unknown)}")
    backbone_only = [f for f in formats if f in BACKBONE_ONLY_FORMATS]
    if backbone_only and "detector" in what:
        raise ValueError(f"format(s) {backbone_only} (built on torch.export) cover the backbone "
                         "only; export the detector with 'torchscript' or 'onnx' (any size too)")
    # Seeded like the example image, so that a report on random weights is reproducible
    # (whether a random detector keeps any box depends on its initialisation).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        SSBCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    rows = []
    for target in what:
        wrapper = BackboneExport(model.backbone) if target == "backbone" else DetectorExport(model)
        wrapper.eval()
        example = _example_input(cfg, model, target, input_size, batch, seed)
        # Also checked at a larger size: one export serves every input size. The eager
        # references are computed once, for every format.
        h, w = example.shape[-2:]
        other = _example_input(cfg, model, target, (h + 32, w + 64), batch, seed + 1)
        with torch.no_grad():
            checks = [(x, _as_tuple(wrapper(x))) for x in (example, other)]
        for fmt in formats:
            if fmt == "export":
                path = os.path.join(output_dir, f"{target}.pt2")
                run = export_program(wrapper, example, path, min_size=size_range[0],
                                     max_size=size_range[1]).module()
            elif fmt == "onnx-dynamic":
                path = export_onnx_dynamic(
                    wrapper, example, os.path.join(output_dir, f"{target}_dynamic.onnx"),
                    min_size=size_range[0], max_size=size_range[1],
                    opset=DYNAMIC_ONNX_OPSET if opset is None else opset)
                run = functools.partial(run_onnx, path)
            elif fmt == "torchscript":
                path = os.path.join(output_dir, f"{target}.pt")
                run = export_torchscript(wrapper, example, path)
            else:
                path = export_onnx(wrapper, example, os.path.join(output_dir, f"{target}.onnx"),
                                   DEFAULT_OPSET if opset is None else opset)
                run = functools.partial(run_onnx, path)
            for x, ref in checks:
                with torch.no_grad():
                    out = _as_tuple(run(x))
                rows.append(_parity_row(target, fmt, path, wrapper, x, ref, out))
    return rows


def _parity_row(target, fmt, path, wrapper, example, reference, outputs) -> Dict:
    diffs = max_abs_diffs(reference, outputs)
    logger.info(f"exported {target} to {path}: max |diff| vs eager at {tuple(example.shape)} "
                + ", ".join(f"{n} {d:.3g}" for n, d in zip(wrapper.output_names, diffs)))
    return dict(what=target, format=fmt, path=path, outputs=list(wrapper.output_names),
                input_shape=tuple(example.shape), max_abs_diff=diffs,
                max_abs_ref=[r.abs().max().item() if r.numel() else 0.0 for r in reference])


def export_parser():
    import argparse

    parser = argparse.ArgumentParser(
        description="Export an SSB-ResNet backbone and/or detector to TorchScript and ONNX; "
                    "print parity vs eager.")
    parser.add_argument("--config-file", required=True, help="a detector config (YAML)")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--what", nargs="+", default=["backbone", "detector"],
                        choices=["backbone", "detector"])
    parser.add_argument("--format", nargs="+", default=["torchscript", "onnx"],
                        choices=list(EXPORT_FORMATS),
                        help="export: torch.export (backbone.pt2); onnx-dynamic: ONNX through "
                             "torch.export (backbone_dynamic.onnx); both backbone only; "
                             "torchscript, onnx: backbone and detector. Every format takes any "
                             "input size and is checked at two sizes")
    parser.add_argument("--input-size", type=int, nargs=2, default=[320, 448], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1, help="batch of the backbone export")
    parser.add_argument("--opset", type=int, default=None,
                        help=f"ONNX opset (default {DEFAULT_OPSET} for onnx, "
                             f"{DYNAMIC_ONNX_OPSET} for onnx-dynamic)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random example image and of the random initialisation")
    parser.add_argument("--size-range", type=int, nargs=2, default=[128, 2048],
                        metavar=("MIN", "MAX"),
                        help="height/width range of the 'export' program and the "
                             "'onnx-dynamic' graph (multiples of 32)")
    parser.add_argument("--json", help="also write the parity table to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs")
    return parser


def export_main(argv=None) -> List[dict]:
    """``tools/export_model.py``: export, print the parity table, optionally write it as JSON.

    Args:
        argv (list[str] or None): command-line arguments (None: ``sys.argv[1:]``).
    """
    import json

    from .config import load_config

    args = export_parser().parse_args(argv)
    cfg = load_config(args.config_file, ["MODEL.DEVICE", "cpu"] + list(args.opts))
    cfg.freeze()
    rows = export_from_config(cfg, args.output, what=args.what, formats=args.format,
                              input_size=args.input_size, batch=args.batch, opset=args.opset,
                              seed=args.seed, size_range=args.size_range)
    for row in rows:
        diffs = ", ".join(f"{n} {d:.3g} (of max |x| {r:.3g})" for n, d, r in
                          zip(row["outputs"], row["max_abs_diff"], row["max_abs_ref"]))
        print(f"{row['what']:8s} {row['format']:12s} {row['path']}  input {row['input_shape']}\n"
              f"    max |exported - eager|: {diffs}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows
