"""Faster R-CNN and Mask R-CNN with the SSB backbone: one CPU train step and inference."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.model_zoo import get_config_file
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import ssb_det
from ssb_det.modeling import SSBBottleneckBlock


def rcnn_cfg(zoo_config):
    cfg = get_cfg()
    ssb_det.add_ssb_config(cfg)
    cfg.merge_from_file(get_config_file(zoo_config))
    cfg.MODEL.BACKBONE.NAME = "build_ssb_resnet_fpn_backbone"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    return cfg


def random_batch(with_masks, n=2, h=96, w=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(n):
        inst = Instances((h, w))
        boxes = torch.tensor([[8.0, 10, 50, 60], [60, 20, 120, 90]]) + i
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.tensor([0, 2])
        if with_masks:
            masks = torch.zeros(2, h, w, dtype=torch.bool)
            for j, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
                masks[j, y0:y1, x0:x1] = True
            inst.gt_masks = BitMasks(masks)
        image = torch.randint(0, 256, (3, h, w), generator=gen).float()
        batch.append({"image": image, "instances": inst, "height": h, "width": w})
    return batch


@pytest.mark.parametrize("zoo_config,with_masks", [
    ("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", False),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", True),
])
def test_rcnn_train_step_and_inference(zoo_config, with_masks):
    torch.manual_seed(0)
    cfg = rcnn_cfg(zoo_config)
    model = build_model(cfg)
    assert sum(isinstance(m, SSBBottleneckBlock) for m in model.modules()) == 11
    model.train()
    batch = random_batch(with_masks)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    # give the saliency convs non-zero weights so the step exercises real sampling
    for m in model.modules():
        if isinstance(m, SSBBottleneckBlock):
            torch.nn.init.normal_(m.sampler.saliency_conv.weight, std=0.1)
    with EventStorage():
        losses = model(batch)
        expected = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
        if with_masks:
            expected.add("loss_mask")
        assert set(losses) == expected
        total = sum(losses.values())
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        trainable_saliency = [m.sampler.saliency_conv.weight for m in model.modules()
                              if isinstance(m, SSBBottleneckBlock)
                              and m.sampler.saliency_conv.weight.requires_grad]
        assert trainable_saliency  # res3/res4 are trainable at FREEZE_AT 2
        assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in trainable_saliency)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": b["image"], "height": 48, "width": 64} for b in batch])
    assert len(outputs) == 2
    inst = outputs[0]["instances"]
    assert inst.image_size == (48, 64)  # rescaled to the requested output size
    assert inst.pred_boxes.tensor.shape[1] == 4
    if with_masks:
        assert inst.pred_masks.shape[1:] == (48, 64)
