"""Input validation for user data: COCO-format JSON files and image files.

Detectron2 reads a dataset lazily and trusts it: a JSON that is not COCO fails with a bare
``AssertionError``/``KeyError`` that does not name the file, a truncated JPEG fails with
``OSError: image file is truncated`` (no file name) hours into training, and a 16-bit PNG is
silently clipped to an almost white 8-bit image. The helpers here fail early and name the
file, or convert what has one sensible conversion:

- :func:`validate_coco_json`: every structural problem of a COCO instances file, listed
  with the file name. Zero-area boxes, boxes outside their image and images without
  annotations are *not* errors (Detectron2 drops such boxes, and such images unless
  ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is off) but are counted in the returned summary;
  a negative width or height is an error (Detectron2 would train on the mirrored box).
- :func:`load_coco_json_checked`: validate, then Detectron2's ``load_coco_json``.
- :func:`read_image`: Detectron2's ``read_image`` with errors naming the file, truncated
  files detected at read time, and 16-bit grayscale images scaled to 8 bits instead of
  clipped.

docs/reliability.md lists, per kind of bad input, what happens and which test checks it.
"""
import json
import math
import numbers
import os
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

__all__ = [
    "InvalidDatasetError",
    "ImageReadError",
    "validate_coco_json",
    "load_coco_json_checked",
    "read_image",
]

# Problems listed in one error message; the count of the rest is given.
MAX_LISTED_PROBLEMS = 20


class InvalidDatasetError(ValueError):
    """An annotation file is not a valid COCO instances file (the message lists why)."""


class ImageReadError(OSError):
    """An image file exists but cannot be decoded (corrupt, truncated, unsupported mode)."""


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_segmentation(segm, where: str, problems: List[str]) -> None:
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            problems.append(f"{where}: RLE segmentation needs 'counts' and 'size'")
    elif isinstance(segm, list):
        for poly in segm:
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                problems.append(f"{where}: a polygon must be a list of numbers")
                return
    else:
        problems.append(f"{where}: segmentation must be a list of polygons or an RLE dict")


def _objects(items, kind: str, problems: List[str]):
    """``(where, item)`` of each object (dict) of a JSON list; other items are reported."""
    for k, item in enumerate(items):
        where = f"{kind}[{k}]"
        if isinstance(item, dict):
            yield where, item
        else:
            problems.append(f"{where}: must be an object, got {type(item).__name__}")


def _check_images(images, problems: List[str]) -> set:
    ids = set()
    for where, img in _objects(images, "images", problems):
        if "id" not in img:
            problems.append(f"{where}: no 'id'")
        elif img["id"] in ids:
            problems.append(f"{where}: duplicate id {img['id']!r}")
        else:
            ids.add(img["id"])
        if not isinstance(img.get("file_name"), str) or not img.get("file_name"):
            problems.append(f"{where} (id {img.get('id')!r}): no 'file_name'")
        for key in ("height", "width"):
            v = img.get(key)
            if not (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0):
                problems.append(f"{where} (id {img.get('id')!r}): '{key}' must be a positive "
                                f"integer, got {v!r}")
    return ids


def _check_annotations(annotations, images, image_ids, category_ids, problems, summary) -> None:
    image_sizes = {img["id"]: (img.get("height"), img.get("width")) for img in images
                   if isinstance(img, dict) and "id" in img
                   and all(isinstance(img.get(k), numbers.Real) for k in ("height", "width"))}
    annotated = set()
    ids = set()
    for where, ann in _objects(annotations, "annotations", problems):
        where += f" (id {ann.get('id')!r})"
        if "id" in ann:
            if ann["id"] in ids:
                problems.append(f"{where}: duplicate annotation id")
            ids.add(ann["id"])
        if ann.get("image_id") not in image_ids:
            problems.append(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        else:
            annotated.add(ann["image_id"])
        if ann.get("category_id") not in category_ids:
            problems.append(f"{where}: category_id {ann.get('category_id')!r} is not in "
                            "'categories'")
        if ann.get("iscrowd", 0) not in (0, 1):
            problems.append(f"{where}: iscrowd must be 0 or 1, got {ann.get('iscrowd')!r}")
        if ann.get("ignore", 0):
            problems.append(f"{where}: 'ignore' annotations are not supported by Detectron2; "
                            "use iscrowd")
        if "bbox" not in ann:
            problems.append(f"{where}: no 'bbox'")
        else:
            box = ann["bbox"]
            if (not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box)):
                problems.append(f"{where}: bbox must be 4 numbers [x, y, w, h], got {box!r}")
            elif not all(math.isfinite(v) for v in box):
                problems.append(f"{where}: bbox has a non-finite value: {box!r}")
            elif box[2] < 0 or box[3] < 0:
                # Detectron2 would not drop it: its transforms re-sort the corners, so it
                # would silently train on the mirrored box.
                problems.append(f"{where}: bbox has a negative width or height: {box!r}")
            elif box[2] == 0 or box[3] == 0:
                summary["degenerate_boxes"] += 1  # dropped by Detectron2's mapper
            elif ann.get("image_id") in image_sizes:
                h, w = image_sizes[ann["image_id"]]
                if box[0] >= w or box[1] >= h or box[0] + box[2] <= 0 or box[1] + box[3] <= 0:
                    summary["boxes_outside_image"] += 1  # clipped to nothing, then dropped
        if "segmentation" in ann:
            _check_segmentation(ann["segmentation"], where, problems)
    summary["images_without_annotations"] = len(image_ids - annotated)


def validate_coco_json(json_file: str, image_root: Optional[str] = None, *,
                       check_image_files: bool = False) -> Dict[str, int]:
    """Check that ``json_file`` is a COCO instances file Detectron2 can train on.

    Args:
        json_file (str): path of the annotation file.
        image_root (str or None): if given, must be an existing directory.
        check_image_files (bool): also check that every ``file_name`` exists under
            ``image_root`` (one ``stat`` per image).

    Returns:
        dict: ``images``, ``annotations``, ``categories``, ``degenerate_boxes`` (width or
        height 0), ``boxes_outside_image`` (Detectron2's mapper drops both kinds) and
        ``images_without_annotations`` (dropped from training while
        ``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is True).

    Raises:
        FileNotFoundError: ``json_file`` or ``image_root`` (or an image) does not exist.
        InvalidDatasetError: the file is not JSON, or not COCO; the message names the file
            and lists the problems (the first :data:`MAX_LISTED_PROBLEMS`, then a count).
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file not found: {json_file}")
    try:
        with open(json_file, "rb") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidDatasetError(f"{json_file}: not a JSON file: {e}") from e

    problems: List[str] = []
    summary = {"images": 0, "annotations": 0, "categories": 0, "degenerate_boxes": 0,
               "boxes_outside_image": 0, "images_without_annotations": 0}
    if not isinstance(data, dict):
        problems.append(f"the top level must be an object with 'images', 'annotations' and "
                        f"'categories', got a {type(data).__name__}")
    else:
        images = data.get("images")
        if not isinstance(images, list):
            problems.append("no 'images' list" if images is None else
                            f"'images' must be a list, got {type(images).__name__}")
            images = []
        annotations = data.get("annotations", [])
        if not isinstance(annotations, list):
            problems.append(f"'annotations' must be a list, got {type(annotations).__name__}")
            annotations = []
        categories = data.get("categories", [])
        if not isinstance(categories, list):
            problems.append(f"'categories' must be a list, got {type(categories).__name__}")
            categories = []
        elif annotations and not categories:
            problems.append("annotations but no 'categories'")
        category_ids = set()
        for k, cat in enumerate(categories):
            if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
                problems.append(f"categories[{k}]: needs 'id' and 'name'")
            else:
                category_ids.add(cat["id"])
        image_ids = _check_images(images, problems)
        _check_annotations(annotations, images, image_ids, category_ids, problems, summary)
        summary.update(images=len(images), annotations=len(annotations),
                       categories=len(categories))
        if not images and not problems:
            problems.append("'images' is empty")
    if problems:
        listed = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(listed)
        raise InvalidDatasetError(
            f"{json_file}: not a valid COCO instances file ({len(problems)} problem"
            f"{'s' if len(problems) > 1 else ''}):\n  - " + "\n  - ".join(listed)
            + (f"\n  ... and {more} more" if more else "")
        )
    if image_root is not None:
        if not os.path.isdir(image_root):
            raise FileNotFoundError(f"image directory not found: {image_root} (images of "
                                    f"{json_file})")
        if check_image_files:
            missing = [img["file_name"] for img in data["images"]
                       if not os.path.isfile(os.path.join(image_root, img["file_name"]))]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} image(s) of {json_file} not found under {image_root}: "
                    + ", ".join(missing[:MAX_LISTED_PROBLEMS])
                    + (" ..." if len(missing) > MAX_LISTED_PROBLEMS else ""))
    return summary


def load_coco_json_checked(json_file: str, image_root: str, dataset_name: Optional[str] = None,
                           extra_annotation_keys=None) -> List[dict]:
    """:func:`validate_coco_json`, then Detectron2's ``load_coco_json`` (same arguments).

    Use it in place of ``load_coco_json`` when registering a dataset, e.g.
    ``DatasetCatalog.register(name, lambda: load_coco_json_checked(json, root, name))``.
    """
    from detectron2.data.datasets import load_coco_json

    validate_coco_json(json_file, image_root)
    return load_coco_json(json_file, image_root, dataset_name, extra_annotation_keys)


# PIL modes holding more than 8 bits per pixel, per channel: Detectron2's convert("RGB")
# clips them to 255.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_8bit(image: Image.Image, file_name: str) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageReadError(f"cannot read image {file_name}: 32-bit integer pixels outside "
                                 "0..65535 have no defined 8-bit conversion")
        # 0..65535 -> 0..255 linearly (65535 / 257 = 255).
        scaled = np.floor(values.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
        return Image.fromarray(scaled)  # uint8 2-D: mode "L"
    if image.mode == "F":
        raise ImageReadError(f"cannot read image {file_name}: floating-point images have no "
                             "defined 8-bit conversion; convert them to 8-bit first")
    return image


def read_image(file_name: str, format: Optional[str] = None) -> np.ndarray:
    """Detectron2's ``read_image``, with clear errors and 16-bit grayscale scaled to 8 bits.

    Grayscale, palette, RGBA/LA (alpha dropped), CMYK and 1-bit images are converted as
    Detectron2 converts them (PIL ``convert``); EXIF orientation is applied.

    Args:
        file_name (str): image path.
        format (str or None): as ``detectron2.data.detection_utils.read_image``
            (e.g. ``"BGR"``, ``"RGB"``).

    Returns:
        np.ndarray: ``H x W x C`` uint8 (or as Detectron2 returns for other formats).

    Raises:
        FileNotFoundError: the file does not exist.
        ImageReadError: the file cannot be decoded (corrupt, truncated, float pixels); the
            message names the file.
    """
    from detectron2.data.detection_utils import _apply_exif_orientation, convert_PIL_to_numpy
    from detectron2.utils.file_io import PathManager

    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            image.load()  # decode now: a truncated file fails here, not somewhere later
            image = _apply_exif_orientation(image)
            image = _to_8bit(image, file_name)
            return convert_PIL_to_numpy(image, format)
    except FileNotFoundError:
        raise
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"cannot read image {file_name}: {e}") from e
