"""Make the datasets a config names ready, or say clearly why they are not.

Detectron2 registers COCO and other public datasets under ``$DETECTRON2_DATASETS`` (default
``./datasets``, relative to the working directory) whether or not the files exist, and a
missing file then surfaces deep inside the data loader. :func:`check_datasets_available`
fails first, naming the paths it expected, the variable that moves them and the quickstart
that needs no download.
"""
import os
from typing import Iterable, List

from detectron2.data import DatasetCatalog, MetadataCatalog

from .shapes import get_shapes_split

__all__ = ["DatasetNotFoundError", "check_datasets_available", "prepare_dataset"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset named by the config has no files where Detectron2 looks for them."""


def prepare_dataset(dataset_name: str) -> None:
    """Generate an embedded (``ssb_shapes_*``) dataset's files if needed; no-op for others."""
    split = MetadataCatalog.get(dataset_name).get("ssb_shapes_split")
    if split is not None:
        get_shapes_split(split, os.path.dirname(os.path.dirname(
            MetadataCatalog.get(dataset_name).json_file)))


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
