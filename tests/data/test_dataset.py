"""The embedded ssb_shapes dataset: registration, determinism, COCO validity, self-repair."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

import ssb_det  # noqa: F401  registers the datasets
from ssb_det.data import shapes
from ssb_det.data.shapes import CATEGORIES, SPLITS, get_shapes_split, render_image, verify_split

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def mini_val_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes"))
    get_shapes_split("mini_val", root)
    return root


def read_tree(root, split):
    image_dir, json_path = get_shapes_split(split, root)
    with open(json_path) as f:
        coco = json.load(f)
    pixels = {name: cv2.imread(os.path.join(image_dir, name), cv2.IMREAD_UNCHANGED)
              for name in sorted(os.listdir(image_dir))}
    return coco, pixels


def test_registered_on_import_without_generating(tmp_path):
    for split in ("train", "val"):
        name = "ssb_shapes_" + split
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == list(CATEGORIES)
        assert meta.evaluator_type == "coco"
        assert meta.image_root.endswith(os.path.join(split, "images"))
    # A fresh process importing ssb_det with an empty cache directory writes nothing there.
    code = ("import os, ssb_det; from detectron2.data import MetadataCatalog; "
            "print(MetadataCatalog.get('ssb_shapes_train').image_root)")
    env = dict(os.environ, SSB_DET_DATASETS=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.strip().splitlines()[-1]
    assert out == str(tmp_path / "cache" / "ssb_shapes" / "train" / "images")
    assert not (tmp_path / "cache").exists()


def test_evaluator_created_before_first_use_on_a_fresh_machine(tmp_path):
    # Detectron2's tutorials create the evaluator first; it reads the metadata's json_file,
    # which must then exist: reading it generates the split.
    code = ("import ssb_det; from detectron2.data import MetadataCatalog; "
            "from detectron2.evaluation import COCOEvaluator; "
            "e = COCOEvaluator('ssb_shapes_val', use_fast_impl=False); "
            "print(len(e._coco_api.getImgIds()), MetadataCatalog.get('ssb_shapes_val').json_file)")
    env = dict(os.environ, SSB_DET_DATASETS=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    num_images, json_file = proc.stdout.strip().splitlines()[-1].split()
    assert int(num_images) == SPLITS["val"].num_images
    assert json_file == str(tmp_path / "cache" / "ssb_shapes" / "val" / "instances.json")
    assert verify_split("val", str(tmp_path / "cache" / "ssb_shapes")) is None


def test_test_splits_are_registered_by_the_tests_not_by_import():
    code = ("import ssb_det; from detectron2.data import DatasetCatalog; "
            "print(sorted(n for n in DatasetCatalog.list() if n.startswith('ssb_shapes_')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.strip().splitlines()[-1]
    assert out == str(sorted("ssb_shapes_" + s for s in SPLITS if s not in shapes.TEST_SPLITS))
    assert "ssb_shapes_mini_val" in DatasetCatalog.list()  # tests/conftest.py registered it


def test_split_files_are_valid_coco(mini_val_root):
    image_dir, json_path = get_shapes_split("mini_val", mini_val_root)
    spec = SPLITS["mini_val"]
    coco = COCO(json_path)
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == sorted(CATEGORIES)
    assert len(coco.getImgIds()) == spec.num_images
    for img in coco.loadImgs(coco.getImgIds()):
        pixels = cv2.imread(os.path.join(image_dir, img["file_name"]))
        assert pixels.shape == (spec.height, spec.width, 3) == (img["height"], img["width"], 3)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert spec.min_objects <= len(anns) <= spec.max_objects
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
            assert w >= 1 and h >= 1 and ann["iscrowd"] == 0
            for poly in ann["segmentation"]:
                assert len(poly) >= 6 and len(poly) % 2 == 0
                xs, ys = np.array(poly[0::2]), np.array(poly[1::2])
                assert xs.min() >= 0 and ys.min() >= 0
                assert xs.max() <= img["width"] and ys.max() <= img["height"]
            # The polygons rasterise (pycocotools) to the annotated area and box.
            m = coco.annToMask(ann).astype(bool)
            assert abs(m.sum() - ann["area"]) <= 0.1 * ann["area"] + 2
            ys_, xs_ = np.nonzero(m)
            assert abs(xs_.min() - x) <= 1.5 and abs(xs_.max() + 1 - (x + w)) <= 1.5
            assert abs(ys_.min() - y) <= 1.5 and abs(ys_.max() + 1 - (y + h)) <= 1.5
            assert mask_utils.area(mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))) > 0


def test_render_is_deterministic_varied_and_overlapping():
    spec = SPLITS["mini_train"]
    img_a, objs_a = render_image(spec, 3)
    img_b, objs_b = render_image(spec, 3)
    assert np.array_equal(img_a, img_b)
    assert [o["segmentation"] for o in objs_a] == [o["segmentation"] for o in objs_b]
    assert not np.array_equal(img_a, render_image(spec, 4)[0])
    objects = [o for i in range(spec.num_images) for o in render_image(spec, i)[1]]
    assert {o["category_id"] for o in objects} == set(range(1, len(CATEGORIES) + 1))
    sizes = [max(o["bbox"][2:]) for o in objects]
    assert min(sizes) < 24 and max(sizes) > 48
    # Objects overlap: some are partly hidden, none by more than half.
    hidden = [o["occluded_fraction"] for o in objects]
    assert max(hidden) <= 0.5 and sum(h > 0.05 for h in hidden) >= 2


def test_generation_is_deterministic_on_disk(mini_val_root, tmp_path):
    coco_a, pixels_a = read_tree(mini_val_root, "mini_val")
    coco_b, pixels_b = read_tree(str(tmp_path), "mini_val")
    assert coco_a == coco_b
    assert pixels_a.keys() == pixels_b.keys()
    assert all(np.array_equal(pixels_a[k], pixels_b[k]) for k in pixels_a)


@pytest.mark.parametrize("damage", ["corrupt_image", "delete_image", "truncate_json",
                                    "delete_manifest"])
def test_corrupt_or_missing_files_are_regenerated(tmp_path, damage):
    root = str(tmp_path)
    coco_before, pixels_before = read_tree(root, "mini_val")
    image_dir, json_path = get_shapes_split("mini_val", root)
    target = {
        "corrupt_image": os.path.join(image_dir, "000002.png"),
        "delete_image": os.path.join(image_dir, "000005.png"),
        "truncate_json": json_path,
        "delete_manifest": os.path.join(os.path.dirname(json_path), "manifest.json"),
    }[damage]
    if damage == "corrupt_image":
        with open(target, "r+b") as f:
            f.seek(100)
            f.write(b"\x00garbage\x00")
    elif damage == "truncate_json":
        with open(target, "r+b") as f:
            f.truncate(50)
    else:
        os.remove(target)
    problem = verify_split("mini_val", root)
    assert problem is not None and os.path.basename(target) in problem
    coco_after, pixels_after = read_tree(root, "mini_val")  # read_tree calls get_shapes_split
    assert verify_split("mini_val", root) is None
    assert coco_after == coco_before
    assert all(np.array_equal(pixels_before[k], pixels_after[k]) for k in pixels_before)


def test_unknown_split_names_the_known_ones(tmp_path):
    with pytest.raises(KeyError, match="mini_train"):
        get_shapes_split("test", str(tmp_path))


def test_dataset_dicts_through_detectron2_catalog():
    dicts = DatasetCatalog.get("ssb_shapes_mini_val")
    assert len(dicts) == SPLITS["mini_val"].num_images
    for d in dicts:
        assert os.path.isfile(d["file_name"])
        for ann in d["annotations"]:
            assert ann["bbox_mode"] == BoxMode.XYWH_ABS
            assert 0 <= ann["category_id"] < len(CATEGORIES)
            assert ann["segmentation"] and all(len(p) >= 6 for p in ann["segmentation"])


def test_manifest_records_every_file(mini_val_root):
    image_dir, json_path = get_shapes_split("mini_val", mini_val_root)
    with open(os.path.join(os.path.dirname(json_path), "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["generator_version"] == shapes.GENERATOR_VERSION
    assert set(manifest["files"]) == {"instances.json"} | {
        f"images/{n}" for n in os.listdir(image_dir)}
    with open(json_path) as f:
        assert manifest["num_annotations"] == len(json.load(f)["annotations"])
