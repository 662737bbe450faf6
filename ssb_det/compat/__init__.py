"""Every Detectron2-version compatibility measure of ssb_det, at run time.

The install-time measures (the offline fallback of Detectron2 v0.6 without its C++
extension) are in ``install_detectron2.py`` beside this file; together these two files are
the only places that know about Detectron2 version differences. Code elsewhere calls the
helpers below instead of testing versions itself.
"""
import importlib
import logging

import PIL.Image

__all__ = [
    "apply_runtime_patches",
    "coco_evaluator",
    "detectron2_has_cpp_extension",
    "detectron2_version",
]

logger = logging.getLogger(__name__)


def apply_runtime_patches():
    """Idempotent fixes that must run before ``detectron2.data`` is imported.

    - Pillow >= 10 removed ``Image.LINEAR`` (an alias of ``BILINEAR``), which Detectron2 v0.6
      uses as a default argument in ``detectron2/data/transforms/transform.py``. An official
      v0.6 install would fail to import with a new Pillow; restoring the alias fixes it.
    """
    if not hasattr(PIL.Image, "LINEAR"):
        PIL.Image.LINEAR = PIL.Image.BILINEAR


def detectron2_version() -> str:
    import detectron2

    return detectron2.__version__


def detectron2_has_cpp_extension() -> bool:
    """False for the Python-only fallback install (its ``_C`` is a stand-in) or a broken build."""
    try:
        c_ext = importlib.import_module("detectron2._C")
    except ImportError:
        return False
    return not getattr(c_ext, "SSB_DET_STANDIN", False)


def coco_evaluator(dataset_name, output_dir=None, *, tasks=None, distributed=True, **kwargs):
    """``COCOEvaluator`` using pycocotools' own COCOeval (``use_fast_impl=False``).

    The fast C++ COCOeval is not available in the Python-only install, and the two give the
    same numbers; ``use_fast_impl`` exists in v0.6 and in current Detectron2.

    Args:
        dataset_name (str): a registered dataset with COCO-format metadata.
        output_dir (str or None): where ``coco_instances_results.json`` is written.
        tasks (tuple[str] or None): e.g. ``("bbox", "segm")``; None infers from the config.
        distributed (bool): gather results from all workers.
        kwargs: other ``COCOEvaluator`` arguments.
    """
    from detectron2.evaluation import COCOEvaluator

    return COCOEvaluator(dataset_name, tasks=tasks, distributed=distributed,
                         output_dir=output_dir, use_fast_impl=False, **kwargs)
