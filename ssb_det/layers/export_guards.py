"""The clear failure for the one export route an SSB sampler cannot take (issue 13).

The sampler computes its sampled size ``round(r * H)``, its pixel lattices and its image
regions from the feature map's size in Python, and returns grid objects. ``torch.export``
records that size arithmetic symbolically and ``torch.jit.trace`` records it as tensor ops
on the traced sizes (so both give programs for any input size, see ``ssb_det.export``);
``torch.jit.script`` cannot compile it, so :func:`refuse_scripting` fails at once with the
supported routes, instead of a type error deep in the sampler.
"""
__all__ = ["SUPPORTED_EXPORT_ROUTES", "refuse_scripting"]

SUPPORTED_EXPORT_ROUTES = (
    "torch.export.export with dynamic height/width (ssb_det.export.export_program); ONNX "
    "with dynamic height/width (ssb_det.export.export_onnx_dynamic); torch.jit.trace and "
    "ONNX through TorchScript (ssb_det.export.export_torchscript / export_onnx, backbones "
    "and detectors); all run at any input size, all through python tools/export_model.py "
    "(see docs/reliability.md, 'Export')"
)


def refuse_scripting(module) -> None:
    """Raise the error ``torch.jit.script`` gives for a module holding an SSB sampler."""
    raise RuntimeError(
        f"ssb_det: {type(module).__name__} (the SSB saliency sampler) cannot be compiled with "
        "torch.jit.script, which PyTorch deprecates: its sampled sizes and grids are computed "
        f"in Python. Supported routes: {SUPPORTED_EXPORT_ROUTES}."
    )
