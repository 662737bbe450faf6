"""Stand-in for ``detectron2._C``, installed by ssb_det's offline Detectron2 fallback.

The PyPI sdist of Detectron2 v0.6 has no C++ sources, so the extension cannot be built.
Detectron2 imports ``_C`` at module level in a few places and asks it for its compiler and
CUDA versions in its environment report, so this module exists and answers those; every C++
operator raises a clear error instead of a confusing AttributeError.
"""

SSB_DET_STANDIN = True

_WHY = (
    "detectron2._C.{name} is a C++ operator, and this Detectron2 was installed by ssb_det's "
    "offline fallback (PyPI sdist pb1-detectron2==0.6) without its C++ extension. Deformable "
    "convolution, rotated boxes / ROIAlignRotated and the fast COCOeval need the official "
    "Detectron2: `pip install --no-build-isolation "
    "'git+https://github.com/facebookresearch/detectron2.git'`. For COCO evaluation use "
    "COCOEvaluator(..., use_fast_impl=False) (ssb_det.compat.coco_evaluator does)."
)

_CPP_OPS = (
    "deform_conv_forward", "deform_conv_backward_input", "deform_conv_backward_filter",
    "modulated_deform_conv_forward", "modulated_deform_conv_backward",
    "box_iou_rotated", "roi_align_rotated_forward", "roi_align_rotated_backward",
    "nms_rotated", "COCOevalAccumulate", "COCOevalEvaluateImages", "InstanceAnnotation",
    "ImageEvaluation",
)


class CppExtensionMissing(NotImplementedError):
    """A Detectron2 C++ operator was called, but the extension is not built."""


def _missing(name):
    def op(*args, **kwargs):
        raise CppExtensionMissing(_WHY.format(name=name))

    op.__name__ = name
    return op


for _name in _CPP_OPS:
    globals()[_name] = _missing(_name)


def get_compiler_version():
    return "none (Python-only Detectron2 installed by ssb_det; no C++ extension)"


def get_cuda_version():
    return "none (no C++ extension)"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(_WHY.format(name=name))
