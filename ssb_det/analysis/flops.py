"""MAC and activation counting with fvcore, with every op of an SSB block accounted for.

fvcore's ``FlopCountAnalysis`` counts one fused multiply-add as one "flop", i.e. it counts
MACs. Out of the box it knows convolutions, matmuls, batch norm, pooling and bilinear
upsampling, and it *skips* every other op with a warning. SSB blocks run sampling ops it does
not know (``lerp``, ``gather``, ``grid_sampler`` with other modes, ``embedding_bag``,
``searchsorted``, ...), so counted naively the sampling would be free. This module adds:

* **interpolation handles**: an output element of a k-tap interpolation costs k MACs
  (1-D linear: 2, bilinear: 4 - fvcore's own rule for ``upsample_bilinear2d`` - bicubic: 16,
  a bag of k rows in ``embedding_bag``: k); a binary search costs ``ceil(log2 n)`` per query;
  average pooling and means cost one per input element, as fvcore counts adaptive pooling;
* **an explicit list of ops that cost no MACs**: elementwise arithmetic and activations
  (``add``, ``mul``, ``relu``, ``exp``, ...), max pooling, reductions used for the tiny
  saliency grid, indexing and data movement (``gather``, ``index_select``, padding, ...),
  and the detector's box bookkeeping (``nms``, ``topk``, ``sort``, ...). Neither fvcore nor
  Detectron2's flop counter counts these; listing them here makes "not counted" a decision
  instead of a silent skip.

Every op that has neither a handle nor a place in the list is reported by
:func:`count_model` (``unsupported``), so nothing disappears from a count unnoticed. On a
plain ResNet/FPN graph the added handles contribute exactly nothing, so the counts equal
fvcore's defaults there (tested).
"""
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, List, Sequence

import torch
from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis
from fvcore.nn.jit_handles import generic_activation_jit, get_shape
from torch import nn

__all__ = [
    "MAC_HANDLES",
    "ACTIVATION_HANDLES",
    "NOT_COUNTED_OPS",
    "NOT_COUNTED_FUNCTIONS",
    "CountResult",
    "mac_analysis",
    "activation_analysis",
    "count_model",
    "count_parameters",
]


def _numel(value) -> int:
    shape = get_shape(value)
    if shape is None:
        return 0
    return int(math.prod(shape))


def _taps_per_output(taps: int):
    """Handle: ``taps`` MACs per output element (a ``taps``-point interpolation)."""

    def handle(inputs: List[Any], outputs: List[Any]) -> int:
        return taps * _numel(outputs[0])

    return handle


# grid_sampler's interpolation_mode argument: 0 bilinear, 1 nearest, 2 bicubic.
_GRID_SAMPLER_TAPS = {0: 4, 1: 0, 2: 16}


def _grid_sampler_macs(inputs: List[Any], outputs: List[Any]) -> int:
    mode = inputs[2].toIValue() if len(inputs) > 2 else 0
    return _GRID_SAMPLER_TAPS.get(mode, 4) * _numel(outputs[0])


def _embedding_bag_macs(inputs: List[Any], outputs: List[Any]) -> int:
    # embedding_bag(weight, indices, offsets, ...): with 2-D indices (bags, k) every output
    # row is a weighted sum of k table rows; with 1-D indices + offsets, indices/bags rows.
    idx_shape = get_shape(inputs[1])
    out_shape = get_shape(outputs[0])
    if idx_shape is None or out_shape is None:
        return 0
    rows_summed = math.prod(idx_shape)
    return int(rows_summed * out_shape[-1])


def _searchsorted_ops(inputs: List[Any], outputs: List[Any]) -> int:
    sorted_shape = get_shape(inputs[0])
    n = sorted_shape[-1] if sorted_shape else 1
    return _numel(outputs[0]) * max(1, math.ceil(math.log2(max(n, 2))))


def _per_input_element(inputs: List[Any], outputs: List[Any]) -> int:
    return _numel(inputs[0])


def _roi_align_macs(inputs: List[Any], outputs: List[Any]) -> int:
    # torchvision::roi_align(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio,
    # aligned): each bin averages sampling_ratio^2 bilinear samples. sampling_ratio <= 0 is
    # adaptive (data dependent); it is counted as one sample per bin, a lower bound.
    ratio = inputs[5].toIValue() if len(inputs) > 5 else 0
    samples = max(int(ratio or 0), 1) ** 2
    return 4 * samples * _numel(outputs[0])


# Ops with a MAC handle beyond fvcore's defaults (which stay in force: conv, matmul, linear,
# einsum, batch_norm, group/layer/instance norm, upsample_{nearest,bilinear}2d,
# adaptive_avg_pool2d and grid_sampler).
MAC_HANDLES = {
    # sampling: k-tap interpolations
    "aten::lerp": _taps_per_output(2),
    "aten::lerp_": _taps_per_output(2),
    "aten::grid_sampler": _grid_sampler_macs,
    "aten::grid_sampler_2d": _grid_sampler_macs,
    "aten::upsample_linear1d": _taps_per_output(2),
    "aten::upsample_bicubic2d": _taps_per_output(16),
    "aten::embedding_bag": _embedding_bag_macs,
    "aten::_embedding_bag": _embedding_bag_macs,
    "aten::searchsorted": _searchsorted_ops,
    # averaging (ResNet-D avg-down shortcut, SE squeeze), like fvcore's adaptive pooling
    "aten::avg_pool2d": _per_input_element,
    "aten::mean": _per_input_element,
    # detector heads
    "torchvision::roi_align": _roi_align_macs,
}

# Ops that cost no MACs by this module's convention (see the module docstring).
NOT_COUNTED_OPS = (
    # elementwise arithmetic and activations
    "aten::add", "aten::add_", "aten::sub", "aten::sub_", "aten::rsub", "aten::mul",
    "aten::mul_", "aten::div", "aten::div_", "aten::neg", "aten::reciprocal", "aten::pow",
    "aten::exp", "aten::exp_", "aten::log", "aten::log2", "aten::sqrt", "aten::rsqrt",
    "aten::sigmoid", "aten::sigmoid_", "aten::tanh", "aten::abs", "aten::clamp_min",
    "aten::clamp_min_", "aten::clamp_max", "aten::maximum", "aten::minimum", "aten::ceil",
    "aten::round", "aten::relu6", "aten::addcmul", "aten::square", "aten::diff",
    "aten::hardtanh", "aten::hardtanh_", "aten::silu", "aten::silu_", "aten::gelu",
    # comparisons and logic
    "aten::lt", "aten::le", "aten::ne", "aten::logical_and", "aten::logical_or",
    "aten::where", "aten::all", "aten::any", "aten::isfinite", "aten::nan_to_num",
    # max pooling and reductions (saliency grid: G x G values)
    "aten::max_pool2d", "aten::sum", "aten::softmax", "aten::_softmax", "aten::log_softmax",
    "aten::min", "aten::amax", "aten::argmax", "aten::cumsum", "aten::prod",
    # indexing and data movement
    "aten::gather", "aten::index_select", "aten::index", "aten::index_add",
    "aten::index_add_", "aten::scatter", "aten::scatter_add", "aten::masked_select",
    "aten::pad", "aten::replication_pad1d", "aten::replication_pad2d",
    "aten::reflection_pad2d", "aten::repeat", "aten::repeat_interleave", "aten::expand_as",
    "aten::view_as", "aten::flip", "aten::meshgrid", "aten::linspace", "aten::eye",
    "aten::clone",
    "aten::contiguous", "aten::lift_fresh", "aten::alias", "aten::fill_", "aten::zero_",
    "aten::new_ones", "aten::ones_like", "aten::empty_like", "aten::detach_",
    "aten::masked_fill_", "aten::clamp_", "aten::floor_", "aten::numel", "aten::dim",
    "aten::item", "aten::_assert_async", "aten::sym_size", "aten::type_as", "aten::to",
    "aten::resolve_conj", "aten::resolve_neg", "aten::_shape_as_tensor",
    "aten::__getitem__", "aten::append", "aten::einsum_", "aten::unflatten",
    "aten::split_with_sizes", "aten::tensor_split", "aten::chunk",
    # detector bookkeeping: proposal selection, box decoding, NMS
    "aten::topk", "aten::sort", "aten::argsort", "aten::nonzero", "aten::nonzero_numpy",
    "aten::unique_dim", "aten::_unique2", "torchvision::nms",
    "aten::bitwise_and", "aten::bitwise_or", "aten::log1p", "aten::expm1",
)

# Activation handles beyond fvcore's defaults (outputs of conv/linear/matmul/einsum/bmm):
# the output of every interpolation, i.e. each sampled or restored feature map.
ACTIVATION_HANDLES = {
    name: generic_activation_jit()
    for name in (
        "aten::mm", "aten::lerp", "aten::lerp_", "aten::grid_sampler", "aten::grid_sampler_2d", "aten::embedding_bag",
        "aten::_embedding_bag", "aten::upsample_linear1d", "aten::upsample_bilinear2d",
        "aten::upsample_bicubic2d", "aten::upsample_nearest2d",
    )
}


# Scripted functions a traced model calls (``prim::CallFunction``) hide their ops from the
# tracer. These are known to cost no MACs (torchvision's batched NMS, used by the detector).
NOT_COUNTED_FUNCTIONS = ("_batched_nms_coordinate_trick", "_batched_nms_vanilla", "batched_nms")


def _call_function_handle(unknown: Counter):
    """Handle for ``prim::CallFunction``: 0 for :data:`NOT_COUNTED_FUNCTIONS`, anything else
    is recorded in ``unknown`` (and so reported as unsupported)."""

    def handle(inputs: List[Any], outputs: List[Any]) -> int:
        name = str(inputs[0].type()).rsplit(".", 1)[-1]
        if name not in NOT_COUNTED_FUNCTIONS:
            unknown["prim::CallFunction " + name] += 1
        return 0

    return handle


def _silence(analysis):
    # Unsupported ops are reported by count_model instead of printed as warnings.
    return (analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            .tracer_warnings("none"))


def mac_analysis(model: nn.Module, inputs) -> FlopCountAnalysis:
    """fvcore ``FlopCountAnalysis`` (it counts MACs) with the sampling handles installed.

    Args:
        model (nn.Module): the module to trace (put it in the mode you want counted).
        inputs (tuple): positional inputs of ``model.forward``.
    """
    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle(**MAC_HANDLES)
    analysis.set_op_handle(**{name: None for name in NOT_COUNTED_OPS})
    # Scripted calls the handle cannot vouch for; count_model adds them to `unsupported`.
    analysis.unknown_calls = Counter()
    analysis.set_op_handle("prim::CallFunction", _call_function_handle(analysis.unknown_calls))
    return _silence(analysis)


def activation_analysis(model: nn.Module, inputs) -> ActivationCountAnalysis:
    """fvcore ``ActivationCountAnalysis`` counting conv/matmul outputs and every
    interpolation's output; all other ops are explicitly not counted."""
    analysis = ActivationCountAnalysis(model, inputs)
    analysis.set_op_handle(**ACTIVATION_HANDLES)
    uncounted = set(NOT_COUNTED_OPS) | set(MAC_HANDLES) | {"prim::CallFunction",
        "aten::batch_norm", "aten::group_norm", "aten::layer_norm", "aten::instance_norm",
        "aten::adaptive_avg_pool2d", "aten::upsample_nearest2d",
    }
    uncounted -= set(ACTIVATION_HANDLES)
    analysis.set_op_handle(**{name: None for name in uncounted})
    return _silence(analysis)


@dataclass
class CountResult:
    """MACs, activations and parameters of one module for one input.

    Attributes:
        macs (int): multiply-accumulates (fvcore "flops").
        activations (int): output elements of convs, matmuls and interpolations.
        params (int): parameters (all, trainable or not).
        macs_by_operator (Counter): MACs per op kind (``conv``, ``lerp``, ...).
        unsupported (Counter): ops traced without a handle nor a place in
            :data:`NOT_COUNTED_OPS`, with their number of calls; empty when the count is
            complete.
    """

    macs: int
    activations: int
    params: int
    macs_by_operator: Counter = field(default_factory=Counter)
    unsupported: Counter = field(default_factory=Counter)


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def count_model(model: nn.Module, inputs: Sequence[Any]) -> CountResult:
    """Count MACs, activations and parameters of ``model`` on ``inputs``.

    Traces twice (MACs, activations) under ``torch.no_grad()``; the model's train/eval mode
    is left as it is.

    Args:
        model (nn.Module): module to count.
        inputs (Sequence): positional inputs of ``model.forward``.

    Returns:
        CountResult: the counts, and any op that could not be accounted for.
    """
    inputs = tuple(inputs)
    with torch.no_grad():
        macs = mac_analysis(model, inputs)
        acts = activation_analysis(model, inputs)
        total_macs = int(macs.total())
        total_acts = int(acts.total())
        # Both analyses know the same op names (see activation_analysis), so the MAC
        # trace's unsupported ops are the complete list.
        unsupported = Counter(macs.unsupported_ops())
        unsupported.update(macs.unknown_calls)
        by_op = Counter(macs.by_operator())
    return CountResult(macs=total_macs, activations=total_acts, params=count_parameters(model),
                       macs_by_operator=by_op, unsupported=unsupported)

