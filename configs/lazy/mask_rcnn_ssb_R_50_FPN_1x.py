"""LazyConfig twin of the SSB-R50-FPN Mask R-CNN: Detectron2's model-zoo LazyConfig with the
bottom-up ResNet swapped for SSB-ResNet-50 (``ssb_det.ssb_resnet``, the same constructor the
yacs builders use). Train it with Detectron2's ``tools/lazyconfig_train_net.py``.
"""
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from ssb_det.modeling import ssb_resnet

model = get_config("common/models/mask_rcnn_fpn.py").model
model.backbone.bottom_up = L(ssb_resnet)(
    depth=50,
    host="resnet",
    enabled=True,  # False: the plain R50 twin, block for block
    ratios=[0.5, 0.5, 0.5, 1.0],
    norm="FrozenBN",
    stride_in_1x1=True,  # MSRA R-50.pkl convention
    out_features=["res2", "res3", "res4", "res5"],
    freeze_at=2,
)

dataloader = get_config("common/data/coco.py").dataloader
optimizer = get_config("common/optim.py").SGD
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x
train = get_config("common/train.py").train
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
