"""Datasets of ssb_det: the embedded ``ssb_shapes`` dataset and dataset availability checks.

Importing this package (``import ssb_det`` does) registers ``ssb_shapes_train`` and
``ssb_shapes_val`` in Detectron2's ``DatasetCatalog`` and ``MetadataCatalog``; their files are
generated on first use (loading the dataset, or reading the metadata's ``json_file``). The
tests register their own small splits (``ssb_shapes.TEST_SPLITS``, tests/conftest.py).
"""
from .checks import (
    DatasetItemError,
    DatasetNotFoundError,
    FileNamingDatasetMapper,
    check_datasets_available,
    prepare_dataset,
)
from .shapes import CATEGORIES, SPLITS, get_shapes_split, register_shapes_datasets

register_shapes_datasets()

__all__ = [
    "CATEGORIES",
    "SPLITS",
    "DatasetItemError",
    "DatasetNotFoundError",
    "FileNamingDatasetMapper",
    "check_datasets_available",
    "get_shapes_split",
    "prepare_dataset",
    "register_shapes_datasets",
]
