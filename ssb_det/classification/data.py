"""Data of classification pretraining: ImageFolder splits, the embedded set, transforms, samplers.

The embedded set turns the generated detection dataset (:mod:`ssb_det.data.shapes`) into a
classification set: every annotated object is cropped at its COCO box (plus some context)
and saved as ``<root>/<split>/<category>/<image id>_<annotation id>.png``, i.e. the same
ImageFolder layout as ImageNet, so one code path reads both.
"""
import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T

__all__ = [
    "ImageFolderDataset",
    "build_embedded_split",
    "build_datasets",
    "build_train_transform",
    "build_eval_transform",
    "InfiniteShardedSampler",
    "ShardedEvalSampler",
    "IMAGE_EXTENSIONS",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Bump when the cropping changes: caches made by another version are rebuilt.
EMBEDDED_CROP_VERSION = 1


class ImageFolderDataset(Dataset):
    """``<root>/<class>/<image>`` images with integer labels (torchvision ImageFolder rules).

    Unlike torchvision's ``ImageFolder``, the class list can be given, so a validation split
    that lacks a class keeps the training split's label indices.

    Args:
        root (str): the split directory.
        classes (Sequence[str] or None): class names in label order; None: the sorted
            sub-directories of ``root``.
        transform (callable or None): applied to the RGB ``PIL.Image``.
    """

    def __init__(self, root: str, classes: Optional[Sequence[str]] = None, transform=None):
        if not os.path.isdir(root):
            raise FileNotFoundError(
                f"{root} does not exist: expected the ImageNet / ImageFolder layout "
                "<CLS.DATA.ROOT>/<split>/<class>/<image>")
        found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if classes is None:
            classes = found
        extra = sorted(set(found) - set(classes))
        if extra:
            raise ValueError(f"{root} has class folders {extra} that the training split lacks "
                             f"(training classes: {list(classes)})")
        self.root = root
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: List[Tuple[str, int]] = []
        for cls in self.classes:
            folder = os.path.join(root, cls)
            if not os.path.isdir(folder):
                continue
            for dirpath, _, files in sorted(os.walk(folder, followlinks=True)):
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_EXTENSIONS):
                        self.samples.append((os.path.join(dirpath, name), self.class_to_idx[cls]))
        if not self.samples:
            raise FileNotFoundError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in any "
                                    f"class folder of {self.classes}")
        self.transform = transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        with open(path, "rb") as f:
            image = Image.open(f).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, label


# ------------------------------------------------------------------------- embedded set


def default_embedded_root() -> str:
    """``ssb_shapes_cls`` beside the shapes dataset's cache directory."""
    from ..data.shapes import default_root

    return os.path.join(os.path.dirname(default_root()), "ssb_shapes_cls")


def _crop_box(box, context: float, width: int, height: int):
    x, y, w, h = box
    x0, y0 = max(0, int(round(x - context * w))), max(0, int(round(y - context * h)))
    x1 = min(width, int(round(x + w + context * w)))
    y1 = min(height, int(round(y + h + context * h)))
    return x0, y0, x1, y1


def build_embedded_split(split: str, root: Optional[str] = None, *, context: float = 0.15,
                         min_size: float = 8, crop: str = "box",
                         shapes_root: Optional[str] = None) -> str:
    """Crop one split of the shapes detection dataset into an ImageFolder (once).

    Args:
        split (str): a split of :data:`ssb_det.data.shapes.SPLITS` (``train``, ``val``,
            ``mini_train``, ``mini_val``, ``single_train``, ...).
        root (str or None): where crops are written; None: :func:`default_embedded_root`.
        context (float): box margin on every side, as a fraction of the box side.
        min_size (float): objects whose box is smaller (either side, pixels) are skipped.
        crop (str): ``"box"``: one sample per object, cropped at its box plus ``context``;
            ``"image"``: one sample per image, the whole image, labelled by its only object
            (a split with more than one object in an image is refused).
        shapes_root (str or None): cache directory of the shapes dataset (None: its default).

    Returns:
        str: ``<root>/<split>`` (``<root>/<split>_image`` for ``crop="image"``), an
        ImageFolder with one folder per shape category.
    """
    if crop not in ("box", "image"):
        raise ValueError(f"CLS.DATA.EMBEDDED_CROP={crop!r}: must be 'box' or 'image'")
    from ..data.shapes import file_lock, get_shapes_split

    image_dir, json_path = get_shapes_split(split, shapes_root)
    root = os.path.abspath(root or default_embedded_root())
    folder = split if crop == "box" else f"{split}_image"
    out_dir = os.path.join(root, folder)
    with open(json_path, "rb") as f:
        source_digest = hashlib.sha256(f.read()).hexdigest()
    stamp = json.dumps({"version": EMBEDDED_CROP_VERSION, "source_sha256": source_digest,
                        "context": context, "min_size": min_size, "crop": crop},
                       sort_keys=True)
    stamp_path = os.path.join(out_dir, ".complete")

    def up_to_date():
        try:
            with open(stamp_path) as f:
                return f.read() == stamp
        except OSError:
            return False

    if up_to_date():
        return out_dir
    os.makedirs(root, exist_ok=True)
    # DDP ranks and parallel test processes may build the same split at once.
    with file_lock(os.path.join(root, f".{folder}.lock")):
        if up_to_date():
            return out_dir
        with open(json_path) as f:
            coco = json.load(f)
        categories = {c["id"]: c["name"] for c in coco["categories"]}
        images = {im["id"]: im for im in coco["images"]}
        by_image, count_per_image = {}, {}
        for ann in coco["annotations"]:
            count_per_image[ann["image_id"]] = count_per_image.get(ann["image_id"], 0) + 1
            if ann.get("iscrowd", 0) or min(ann["bbox"][2:]) < min_size:
                continue
            by_image.setdefault(ann["image_id"], []).append(ann)
        if crop == "image":
            several = sorted(i for i, n in count_per_image.items() if n > 1)
            if several:
                raise ValueError(
                    f"EMBEDDED_CROP 'image' labels a whole image by its one object, but split "
                    f"'{split}' has {len(several)} images with several objects (e.g. image ids "
                    f"{several[:5]}); use a split with one object per image (e.g. "
                    "'single_train') or EMBEDDED_CROP 'box'")
        tmp = tempfile.mkdtemp(prefix=f".{folder}.tmp-", dir=root)
        try:
            for name in categories.values():
                os.makedirs(os.path.join(tmp, name))
            count = 0
            for image_id, anns in sorted(by_image.items()):
                meta = images[image_id]
                with Image.open(os.path.join(image_dir, meta["file_name"])) as im:
                    im = im.convert("RGB")
                    for ann in anns:
                        box = ((0, 0, im.width, im.height) if crop == "image" else
                               _crop_box(ann["bbox"], context, im.width, im.height))
                        im.crop(box).save(os.path.join(
                            tmp, categories[ann["category_id"]],
                            f"{image_id:06d}_{ann['id']:06d}.png"))
                        count += 1
            with open(os.path.join(tmp, ".complete"), "w") as f:
                f.write(stamp)
            if os.path.exists(out_dir):
                shutil.rmtree(out_dir)
            os.replace(tmp, out_dir)
            logger.info(f"embedded classification set '{folder}': {count} samples in {out_dir}")
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
    return out_dir


# ------------------------------------------------------------------------- transforms


class _ToFormat:
    """PIL RGB image -> uint8 (C, H, W) tensor in ``INPUT.FORMAT`` channel order."""

    def __init__(self, input_format: str):
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={input_format!r}: classification pretraining "
                             "supports 'RGB' and 'BGR'")
        self.bgr = input_format == "BGR"

    def __call__(self, image):
        t = T.functional.pil_to_tensor(image)
        return t.flip(0) if self.bgr else t

    def __repr__(self):
        return f"{type(self).__name__}({'BGR' if self.bgr else 'RGB'})"


def build_train_transform(cfg):
    """Random-resized crop, flip, RandAugment (torchvision), then a uint8 tensor.

    Args:
        cfg (CfgNode): a pretraining config (``CLS.INPUT``, ``INPUT.FORMAT``).
    """
    c = cfg.CLS.INPUT
    ops = [T.RandomResizedCrop(c.TRAIN_SIZE, scale=tuple(c.CROP_SCALE),
                               interpolation=T.InterpolationMode.BICUBIC)]
    if c.HFLIP:
        ops.append(T.RandomHorizontalFlip())
    if c.RANDAUGMENT_OPS > 0:
        ops.append(T.RandAugment(num_ops=c.RANDAUGMENT_OPS, magnitude=c.RANDAUGMENT_MAGNITUDE))
    ops.append(_ToFormat(cfg.INPUT.FORMAT))
    return T.Compose(ops)


def build_eval_transform(cfg):
    """Resize the shorter side to ``EVAL_SIZE / EVAL_CROP_RATIO``, centre-crop ``EVAL_SIZE``.

    Args:
        cfg (CfgNode): a pretraining config (``CLS.INPUT``, ``INPUT.FORMAT``).
    """
    c = cfg.CLS.INPUT
    if not 0 < c.EVAL_CROP_RATIO <= 1:
        raise ValueError(f"CLS.INPUT.EVAL_CROP_RATIO={c.EVAL_CROP_RATIO}: must be in (0, 1]")
    return T.Compose([
        T.Resize(int(round(c.EVAL_SIZE / c.EVAL_CROP_RATIO)),
                 interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(c.EVAL_SIZE),
        _ToFormat(cfg.INPUT.FORMAT),
    ])


def build_datasets(cfg, *, train: bool = True):
    """The training and validation datasets a config describes.

    Args:
        cfg (CfgNode): a pretraining config.
        train (bool): also build the training set (False for evaluation only; the class
            list is then still read from the training split's folders).

    Returns:
        tuple: (train_set or None, val_set, classes).
    """
    d = cfg.CLS.DATA
    if d.ROOT:
        train_dir = os.path.join(d.ROOT, d.TRAIN_SPLIT)
        val_dir = os.path.join(d.ROOT, d.VAL_SPLIT)
    else:
        kwargs = dict(root=d.EMBEDDED_ROOT or None, context=d.EMBEDDED_CONTEXT,
                      min_size=d.EMBEDDED_MIN_SIZE, crop=d.EMBEDDED_CROP)
        train_dir = build_embedded_split(d.TRAIN_SPLIT, **kwargs)
        val_dir = build_embedded_split(d.VAL_SPLIT, **kwargs)
    if not os.path.isdir(train_dir):
        raise FileNotFoundError(f"training split {train_dir} does not exist: expected "
                                "<CLS.DATA.ROOT>/<CLS.DATA.TRAIN_SPLIT>/<class>/<image>")
    classes = sorted(e.name for e in os.scandir(train_dir)
                     if e.is_dir() and not e.name.startswith("."))
    train_set = (ImageFolderDataset(train_dir, classes, build_train_transform(cfg))
                 if train else None)
    val_set = ImageFolderDataset(val_dir, classes, build_eval_transform(cfg))
    return train_set, val_set, classes


# ------------------------------------------------------------------------- samplers


class InfiniteShardedSampler(Sampler):
    """Endless, epoch-wise shuffled indices of this process's shard, resumable at any step.

    Epoch ``e`` is a permutation drawn from ``seed + e``, cut to a multiple of
    ``world_size * batch_size`` (the same images are dropped on every rank) and dealt to the
    ranks in batch-sized chunks, so every step of every rank sees ``batch_size`` distinct
    images and the ranks together see ``world_size * batch_size`` distinct images. Starting
    at ``start_step`` yields exactly what an uninterrupted run would yield from that step on.

    Args:
        size (int): dataset length.
        batch_size (int): images per step per process.
        rank (int): this process's rank.
        world_size (int): number of processes.
        seed (int): shuffling seed, the same on every rank.
        start_step (int): steps already done (resume).
    """

    def __init__(self, size: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, start_step: int = 0):
        self.global_batch = batch_size * world_size
        if size < self.global_batch:
            raise ValueError(f"the training set has {size} images, fewer than one global batch "
                             f"of {self.global_batch} (SOLVER.IMS_PER_BATCH)")
        self.size, self.batch_size = size, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.steps_per_epoch = size // self.global_batch
        self.start_step = start_step

    def __iter__(self) -> Iterator[int]:
        epoch, step = divmod(self.start_step, self.steps_per_epoch)
        while True:
            g = torch.Generator().manual_seed(self.seed + epoch)
            perm = torch.randperm(self.size, generator=g)[: self.steps_per_epoch * self.global_batch]
            batches = perm.view(self.steps_per_epoch, self.world_size, self.batch_size)
            for s in range(step, self.steps_per_epoch):
                yield from batches[s, self.rank].tolist()
            epoch, step = epoch + 1, 0


class ShardedEvalSampler(Sampler):
    """Indices ``rank, rank + world_size, ...``: every image exactly once over all ranks."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)
