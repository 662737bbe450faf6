"""Whole models with the SSB backbone, in the spirit of Detectron2's own test_model_e2e.py:
Mask R-CNN, RetinaNet and semantic FPN from Detectron2's model zoo configs with the backbone
swapped (nothing else changed but narrower widths, for CPU): a train step, inference, and
batches whose images have no instances."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.model_zoo import get_config_file
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import ssb_det
from ssb_det.modeling import SSBBottleneckBlock

MODELS = {  # zoo config, the SSB twin of its backbone builder
    "mask_rcnn": ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
                  "build_ssb_resnet_fpn_backbone"),
    "retinanet": ("COCO-Detection/retinanet_R_50_FPN_1x.yaml",
                  "build_ssb_retinanet_resnet_fpn_backbone"),
    "semantic_fpn": ("Misc/semantic_R_50_FPN_1x.yaml", "build_ssb_resnet_fpn_backbone"),
}
SIZES = [(96, 128), (96, 127)]  # an odd width: the batch is padded
NUM_CLASSES = 5


def build(name):
    zoo_config, backbone = MODELS[name]
    cfg = get_cfg()
    ssb_det.add_ssb_config(cfg)
    cfg.merge_from_file(get_config_file(zoo_config))
    cfg.merge_from_list([
        "MODEL.BACKBONE.NAME", backbone, "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.RESNETS.WIDTH_PER_GROUP", "16", "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_CLASSES), "MODEL.RETINANET.NUM_CLASSES",
        str(NUM_CLASSES), "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(NUM_CLASSES),
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
        "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    ])
    torch.manual_seed(0)
    model = build_model(cfg)
    ssb_blocks = [m for m in model.modules() if isinstance(m, SSBBottleneckBlock)]
    assert len(ssb_blocks) == 11  # res2..res4 stride-1 blocks of R50
    for block in ssb_blocks:  # non-uniform sampling, as after training
        torch.nn.init.normal_(block.sampler.saliency_conv.weight, std=0.1)
    return model


def instances(h, w, n):
    inst = Instances((h, w))
    boxes = torch.tensor([[8.0, 10, 50, 60], [60, 20, 120, 90], [30, 40, 70, 80]])[:n]
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.arange(n) % NUM_CLASSES
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for j, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        masks[j, y0:y1, x0:x1] = True
    inst.gt_masks = BitMasks(masks)
    return inst


def batch(counts, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for (h, w), n in zip(SIZES, counts):
        image = torch.randint(0, 256, (3, h, w), generator=gen).float()
        sem_seg = torch.randint(0, NUM_CLASSES, (h, w), generator=gen)
        sem_seg[: h // 4] = 255  # ignored
        out.append({"image": image, "height": h, "width": w, "instances": instances(h, w, n),
                    "sem_seg": sem_seg})
    return out


def train_step(model, inputs):
    model.train()
    with EventStorage():
        losses = model(inputs)
        total = sum(losses.values())
        assert torch.isfinite(total), losses
        total.backward()
    return losses


def check_inference(name, model):
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": b["image"], "height": 2 * b["height"], "width": b["width"]}
                         for b in batch([0, 0])])
    assert len(outputs) == len(SIZES)
    for out, (h, w) in zip(outputs, SIZES):
        if name == "semantic_fpn":
            assert out["sem_seg"].shape == (NUM_CLASSES, 2 * h, w)
            assert torch.isfinite(out["sem_seg"]).all()
        else:
            assert out["instances"].image_size == (2 * h, w)
            assert torch.isfinite(out["instances"].pred_boxes.tensor).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_train_step_and_inference(name):
    model = build(name)
    losses = train_step(model, batch([3, 2]))
    expected = {
        "mask_rcnn": {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"},
        "retinanet": {"loss_cls", "loss_box_reg"},
        "semantic_fpn": {"loss_sem_seg"},
    }[name]
    assert set(losses) == expected
    # The sampling is learnt through every one of these heads' losses.
    saliency = [m.sampler.saliency_conv.weight for m in model.modules()
                if isinstance(m, SSBBottleneckBlock) and m.sampler.saliency_conv.weight.requires_grad]
    assert saliency and all(w.grad is not None and w.grad.abs().sum() > 0 for w in saliency)
    check_inference(name, model)


@pytest.mark.parametrize("name", ["mask_rcnn", "retinanet"])
@pytest.mark.parametrize("counts", [[0, 0], [0, 3]], ids=["empty", "half_empty"])
def test_images_without_instances(name, counts):
    model = build(name)
    losses = train_step(model, batch(counts))
    assert all(torch.isfinite(v) for v in losses.values())
    check_inference(name, model)



# Detectron2's own divergence errors: the RPN's check of its proposals (R-CNN), else the
# trainer's check of the losses.
DIVERGED = {"mask_rcnn": "Predicted boxes or scores contain Inf/NaN. Training has diverged",
            "retinanet": "Loss became infinite or NaN", "semantic_fpn": "Loss became infinite or NaN"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_diverged_training_reaches_detectron2_divergence_error(name):
    # As with Detectron2's own backbone: Inf/NaN activations flow through the SSB blocks
    # (forward and backward), and Detectron2 reports the divergence.
    from detectron2.engine import SimpleTrainer

    model = build(name)
    model.train()
    inputs = batch([2, 1])
    inputs[0]["image"][:, 5:9, 7:30] = float("inf")
    with EventStorage(), pytest.raises(FloatingPointError, match=DIVERGED[name]):
        losses = model(inputs)  # SimpleTrainer.run_step: forward, backward, write_metrics
        sum(losses.values()).backward()
        SimpleTrainer.write_metrics(losses, 0.0)
