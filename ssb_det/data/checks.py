"""Make the datasets a config names ready, or say clearly why they are not.

Detectron2 registers COCO and other public datasets under ``$DETECTRON2_DATASETS`` (default
``./datasets``, relative to the working directory) whether or not the files exist, and a
missing file then surfaces deep inside the data loader. :func:`check_datasets_available`
fails first, naming the paths it expected, the variable that moves them and the quickstart
that needs no download. It also validates each COCO-format annotation file
(:func:`ssb_det.data.validation.validate_coco_json`), so that a file that is not COCO is
refused before anything is built, naming the file and every problem.

:class:`FileNamingDatasetMapper` is Detectron2's ``DatasetMapper`` whose errors name the
image file they happened on (Detectron2's do not, for a truncated file, say).
"""
import os
from typing import Iterable, List

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog

from .shapes import get_shapes_split
from .validation import validate_coco_json

__all__ = ["DatasetNotFoundError", "DatasetItemError", "FileNamingDatasetMapper",
           "check_datasets_available", "prepare_dataset"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset named by the config has no files where Detectron2 looks for them."""


class DatasetItemError(RuntimeError):
    """Reading or transforming one dataset item failed; the message names its image file."""


class FileNamingDatasetMapper(DatasetMapper):
    """Detectron2's ``DatasetMapper``; an error while reading or transforming an item is
    re-raised as :class:`DatasetItemError` naming the image file (the original exception is
    chained). Constructed like ``DatasetMapper`` (``FileNamingDatasetMapper(cfg, is_train)``).
    """

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except Exception as e:
            raise DatasetItemError(
                f"{dataset_dict.get('file_name', '<no file_name>')}: {type(e).__name__}: {e}"
            ) from e


def prepare_dataset(dataset_name: str) -> None:
    """Generate an embedded (``ssb_shapes_*``) dataset's files if needed; no-op for others."""
    meta = MetadataCatalog.get(dataset_name)
    if meta.get("ssb_shapes_split") is not None:
        get_shapes_split(meta.ssb_shapes_split, meta.ssb_shapes_root)


def _missing_paths(dataset_name: str) -> List[str]:
    meta = MetadataCatalog.get(dataset_name)
    missing = []
    for key in ("json_file", "image_root", "sem_seg_root", "panoptic_root", "panoptic_json"):
        path = meta.get(key)
        if isinstance(path, str) and "://" not in path and not os.path.exists(path):
            missing.append(f"{key}: {os.path.abspath(path)}")
    return missing


def check_datasets_available(dataset_names: Iterable[str]) -> None:
    """Generate embedded datasets and check that every other one has its files.

    Args:
        dataset_names (Iterable[str]): registered dataset names (e.g. ``cfg.DATASETS.TRAIN``).

    Raises:
        KeyError: a name is not registered (Detectron2's own message, listing the known ones).
        DatasetNotFoundError: a registered dataset's annotation or image path does not exist.
        ssb_det.data.validation.InvalidDatasetError: a COCO-format dataset's annotation file
            is not valid COCO (the message names the file and lists the problems).
    """
    problems = []
    for name in dataset_names:
        if name not in DatasetCatalog.list():
            DatasetCatalog.get(name)  # raises Detectron2's KeyError naming the known datasets
        if MetadataCatalog.get(name).get("ssb_shapes_split") is not None:
            prepare_dataset(name)
            continue
        missing = _missing_paths(name)
        if missing:
            problems.append(f"dataset '{name}' not found; expected\n    " + "\n    ".join(missing))
            continue
        meta = MetadataCatalog.get(name)
        if meta.get("evaluator_type") == "coco" and isinstance(meta.get("json_file"), str):
            validate_coco_json(meta.json_file, meta.get("image_root"))
    if problems:
        root = os.environ.get("DETECTRON2_DATASETS")
        where = (f"DETECTRON2_DATASETS={root}" if root else
                 "DETECTRON2_DATASETS is not set, so Detectron2 looks in ./datasets under the "
                 f"current directory ({os.path.abspath('datasets')})")
        raise DatasetNotFoundError(
            "\n".join(problems) + "\n"
            f"Datasets are looked up under $DETECTRON2_DATASETS ({where}); COCO 2017 must be laid "
            "out as coco/train2017, coco/val2017 and coco/annotations/instances_{train,val}2017.json "
            "there (https://detectron2.readthedocs.io/en/latest/tutorials/builtin_datasets.html).\n"
            "No COCO at hand? `bash run_quickstart.sh` trains and evaluates the same pipeline on "
            "the embedded dataset (configs/quickstart/, datasets ssb_shapes_train/ssb_shapes_val)."
        )
