"""Bad data: corrupt/unreadable images, unusual pixel formats, degenerate or missing
annotations, missing dataset directories, JSON that is not COCO (issue 6)."""
import copy
import json
import os
import uuid

import cv2
import numpy as np
import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils
from detectron2.data.build import get_detection_dataset_dicts
from detectron2.data.datasets import load_coco_json, register_coco_instances
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from PIL import Image

import ssb_det
from ssb_det.data import DatasetNotFoundError, check_datasets_available
from ssb_det.data.validation import (
    ImageReadError,
    InvalidDatasetError,
    load_coco_json_checked,
    read_image,
    validate_coco_json,
)
from narrow_host import NARROW_HOST_OPTS  # noqa: E402 (tests/ is on sys.path, see conftest.py)

# ---------------------------------------------------------------------------- image files


def _jpeg(path, h=40, w=56):
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    return str(path)


def test_corrupt_image_error_names_the_file(tmp_path):
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    with pytest.raises(ImageReadError, match=str(path)):
        read_image(str(path), "BGR")


def test_truncated_image_error_names_the_file(tmp_path):
    full = _jpeg(tmp_path / "full.jpg", 64, 64)
    path = tmp_path / "truncated.jpg"
    data = open(full, "rb").read()
    path.write_bytes(data[: len(data) // 2])
    # Detectron2's own reader fails too, but without saying which file.
    with pytest.raises(OSError) as d2_err:
        detection_utils.read_image(str(path), "BGR")
    assert str(path) not in str(d2_err.value)
    with pytest.raises(ImageReadError, match="truncated.jpg"):
        read_image(str(path), "BGR")


def test_missing_image_error_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        read_image(str(tmp_path / "nowhere.png"), "BGR")


@pytest.mark.parametrize("mode", ["L", "P", "1", "LA", "RGBA", "CMYK", "RGB"])
def test_pixel_formats_become_three_channel_uint8(tmp_path, mode):
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    image = Image.fromarray(rgb).convert(mode)
    path = str(tmp_path / ("img.jpg" if mode == "CMYK" else "img.png"))
    image.save(path)
    out = read_image(path, "BGR")
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    expected = np.asarray(Image.open(path).convert("RGB"))[..., ::-1]  # Detectron2's rule
    np.testing.assert_array_equal(out, expected)
    if mode in ("RGB", "RGBA"):
        np.testing.assert_array_equal(out[0, 0], [50, 100, 200])  # BGR, alpha dropped


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    path = str(tmp_path / "depth16.png")
    cv2.imwrite(path, ramp)
    assert Image.open(path).mode.startswith("I;16")
    # Detectron2 clips: nearly the whole image becomes white.
    assert (detection_utils.read_image(path, "BGR") == 255).mean() > 0.99
    out = read_image(path, "BGR")
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    expected = np.floor(ramp / 257.0 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 1], expected)


def test_sixteen_bit_colour_png_is_read_as_8_bit(tmp_path):
    rgb16 = np.zeros((4, 5, 3), np.uint16)
    rgb16[..., 0] = 65535  # blue in OpenCV's BGR
    rgb16[..., 2] = 32768
    path = str(tmp_path / "colour16.png")
    cv2.imwrite(path, rgb16)
    out = read_image(path, "BGR")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [255, 0, 128])


def test_float_image_is_refused_with_the_file_name(tmp_path):
    path = str(tmp_path / "float.tiff")
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(path)
    with pytest.raises(ImageReadError, match="float.tiff.*floating-point"):
        read_image(path, "BGR")


# ---------------------------------------------------------------------------- annotations


def _coco(tmp_path, images, annotations, categories=None, name="ann.json"):
    data = {"images": images, "annotations": annotations,
            "categories": categories if categories is not None else
            [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]}
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def _image(i, h=40, w=56):
    return {"id": i, "file_name": f"{i}.jpg", "height": h, "width": w}


def _ann(i, image_id, bbox, cat=1):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": 0}


@pytest.fixture
def messy_dataset(tmp_path):
    """Image 1: a good box plus zero-width, zero-height and off-image boxes.
    Image 2: only a degenerate box. Image 3: no annotations at all."""
    root = tmp_path / "images"
    root.mkdir()
    for i in (1, 2, 3):
        _jpeg(root / f"{i}.jpg")
    anns = [_ann(1, 1, [5, 5, 20, 15]), _ann(2, 1, [10, 10, 0, 8]), _ann(3, 1, [10, 10, 8, 0]),
            _ann(5, 1, [100, 100, 10, 10], cat=2), _ann(6, 2, [3, 3, 0, 0])]
    json_file = _coco(tmp_path, [_image(1), _image(2), _image(3)], anns)
    name = f"messy_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: load_coco_json_checked(json_file, str(root), name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=str(root),
                                  evaluator_type="coco")
    yield name, json_file, str(root)
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_validator_counts_degenerate_boxes_and_empty_images(messy_dataset):
    _, json_file, root = messy_dataset
    summary = validate_coco_json(json_file, root, check_image_files=True)
    assert summary == {"images": 3, "annotations": 5, "categories": 2, "degenerate_boxes": 3,
                       "boxes_outside_image": 1, "images_without_annotations": 1}


def _tiny_rcnn(name):
    cfg = get_cfg()
    ssb_det.add_ssb_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list([
        "MODEL.BACKBONE.NAME", "build_ssb_resnet_fpn_backbone", "MODEL.DEVICE", "cpu",
        "MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0",
        *NARROW_HOST_OPTS, "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.ROI_HEADS.NUM_CLASSES", "2",
        "DATASETS.TRAIN", f"('{name}',)", "DATALOADER.NUM_WORKERS", "0",
        "INPUT.MIN_SIZE_TRAIN", "(40,)", "INPUT.MAX_SIZE_TRAIN", "64",
    ])
    return cfg


def test_degenerate_boxes_are_dropped_and_empty_images_train(messy_dataset):
    name, _, _ = messy_dataset
    # Detectron2's choice, kept: images without annotations leave the training set while
    # DATALOADER.FILTER_EMPTY_ANNOTATIONS is True (the default) ...
    assert [d["image_id"] for d in get_detection_dataset_dicts([name], filter_empty=True)] == [1, 2]
    dicts = get_detection_dataset_dicts([name], filter_empty=False)
    assert [d["image_id"] for d in dicts] == [1, 2, 3]
    cfg = _tiny_rcnn(name)
    mapper = DatasetMapper(cfg, is_train=True)
    mapper.augmentations.augs = mapper.augmentations.augs[:1]  # resize only: no random flip
    batch = [mapper(copy.deepcopy(d)) for d in dicts]
    # ... and the mapper drops empty boxes (and clips the off-image one to nothing).
    assert [len(b["instances"]) for b in batch] == [1, 0, 0]
    torch.manual_seed(0)
    model = build_model(cfg).train()
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    for p_name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), p_name


def test_empty_bbox_list_error_names_the_file(tmp_path):
    json_file = _coco(tmp_path, [_image(1)], [_ann(1, 1, [])])
    with pytest.raises(ValueError, match="image 1"):  # Detectron2: names the image only
        load_coco_json(json_file, str(tmp_path), None)
    with pytest.raises(InvalidDatasetError, match=r"ann\.json.*\n.*bbox must be 4 numbers"):
        validate_coco_json(json_file)


NOT_COCO = {
    "a list": ("[1, 2, 3]", "top level must be an object"),
    "no images": ('{"annotations": []}', "no 'images' list"),
    "empty": ("{}", "no 'images' list"),
    "syntax error": ("{'images': []}", "not a JSON file"),
    "binary": ("\x89PNG\r\n", "not a JSON file"),
    "image without size": ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [],'
                           ' "categories": []}', "'height' must be a positive integer"),
    "dangling image_id": ('{"images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}],'
                          ' "annotations": [{"id": 1, "image_id": 7, "category_id": 1,'
                          ' "bbox": [0, 0, 1, 1]}], "categories": [{"id": 1, "name": "x"}]}',
                          "image_id 7 is not in 'images'"),
    "unknown category": ('{"images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}],'
                         ' "annotations": [{"id": 1, "image_id": 1, "category_id": 9,'
                         ' "bbox": [0, 0, 1, 1]}], "categories": [{"id": 1, "name": "x"}]}',
                         "category_id 9 is not in 'categories'"),
    "negative box": ('{"images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}],'
                     ' "annotations": [{"id": 1, "image_id": 1, "category_id": 1,'
                     ' "bbox": [3, 0, -2, 1]}], "categories": [{"id": 1, "name": "x"}]}',
                     "negative width or height"),
    "NaN box": ('{"images": [{"id": 1, "file_name": "a.jpg", "height": 4, "width": 4}],'
                ' "annotations": [{"id": 1, "image_id": 1, "category_id": 1,'
                ' "bbox": [0, NaN, 1, 1]}], "categories": [{"id": 1, "name": "x"}]}',
                "non-finite"),
}


@pytest.mark.parametrize("case", list(NOT_COCO))
def test_json_that_is_not_coco_is_refused_with_the_file_name(tmp_path, case):
    text, problem = NOT_COCO[case]
    path = tmp_path / "not_coco.json"
    path.write_text(text)
    with pytest.raises(InvalidDatasetError) as err:
        validate_coco_json(str(path))
    assert str(path) in str(err.value) and problem in str(err.value), str(err.value)
    with pytest.raises(InvalidDatasetError):
        load_coco_json_checked(str(path), str(tmp_path))


def test_every_problem_is_listed_up_to_a_limit(tmp_path):
    images = [{"id": i, "file_name": "", "height": 0, "width": 4} for i in range(30)]
    path = _coco(tmp_path, images, [])
    with pytest.raises(InvalidDatasetError) as err:
        validate_coco_json(path)
    msg = str(err.value)
    assert "(60 problems)" in msg and "... and 40 more" in msg


def test_missing_annotation_file_and_image_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        validate_coco_json(str(tmp_path / "missing.json"))
    json_file = _coco(tmp_path, [_image(1)], [])
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        validate_coco_json(json_file, str(tmp_path / "no_such_dir"))
    (tmp_path / "imgs").mkdir()
    with pytest.raises(FileNotFoundError, match="1 image.*1.jpg"):
        validate_coco_json(json_file, str(tmp_path / "imgs"), check_image_files=True)


def test_missing_dataset_directory_fails_before_training(tmp_path):
    # A registered COCO-format dataset whose directory is absent: the pipeline's check
    # fails first, naming both paths, instead of deep inside the data loader.
    name = f"gone_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(tmp_path / "gone" / "ann.json"),
                            str(tmp_path / "gone" / "images"))
    try:
        with pytest.raises(DatasetNotFoundError) as err:
            check_datasets_available([name])
        assert "gone/ann.json" in str(err.value) and "gone/images" in str(err.value)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_embedded_dataset_passes_validation():
    # No false alarms on a real, generated COCO file.
    DatasetCatalog.get("ssb_shapes_mini_val")  # generates the files on first use
    meta = MetadataCatalog.get("ssb_shapes_mini_val")
    summary = validate_coco_json(meta.json_file, meta.image_root, check_image_files=True)
    assert summary["images"] > 0 and summary["annotations"] > 0
    first = json.load(open(meta.json_file))["images"][0]["file_name"]
    image = read_image(os.path.join(meta.image_root, first), "BGR")
    assert image.ndim == 3 and image.shape[2] == 3


# ---------------------------------------------------------------------------- the pipeline


def _registered(tmp_path, json_text=None, images=()):
    """A COCO-format dataset registered as Detectron2 users do (register_coco_instances)."""
    root = tmp_path / "imgs"
    root.mkdir(exist_ok=True)
    for file_name, data in images:
        (root / file_name).write_bytes(data)
    json_file = tmp_path / "instances.json"
    json_file.write_text(json_text)
    name = f"user_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(json_file), str(root))
    return name, str(json_file), root


def test_pipeline_refuses_a_json_that_is_not_coco_before_building_anything(tmp_path):
    # Detectron2 would load "{}" as an empty dataset and fail later with "Dataset is empty".
    name, json_file, _ = _registered(tmp_path, "{}")
    try:
        with pytest.raises(InvalidDatasetError) as err:
            check_datasets_available([name])
        assert json_file in str(err.value) and "no 'images' list" in str(err.value)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_training_loader_error_names_the_corrupt_image(tmp_path):
    from ssb_det.data import DatasetItemError
    from ssb_det.engine import Trainer

    good = cv2.imencode(".jpg", np.full((40, 56, 3), 90, np.uint8))[1].tobytes()
    truncated = good[: len(good) // 2]
    text = json.dumps({"images": [_image(1), _image(2)],
                       "annotations": [_ann(1, 1, [5, 5, 20, 15]), _ann(2, 2, [5, 5, 20, 15])],
                       "categories": [{"id": 1, "name": "thing"}]})
    name, _, root = _registered(tmp_path, text, [("1.jpg", truncated), ("2.jpg", truncated)])
    try:
        check_datasets_available([name])  # valid COCO: the problem is in the image files
        cfg = get_cfg()
        ssb_det.add_ssb_config(cfg)
        cfg.DATASETS.TRAIN = (name,)
        cfg.DATALOADER.NUM_WORKERS = 0
        cfg.SOLVER.IMS_PER_BATCH = 1
        with pytest.raises(DatasetItemError) as err:
            next(iter(Trainer.build_train_loader(cfg)))
        assert str(root) in str(err.value) and "truncated" in str(err.value).lower()
        with pytest.raises(DatasetItemError, match=str(root)):
            next(iter(Trainer.build_test_loader(cfg, name)))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
