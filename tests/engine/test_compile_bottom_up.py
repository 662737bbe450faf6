"""train_net --compile: the detector's bottom-up is compiled in place (one graph, any size),
through a DDP-style wrapper, with parameter names (so checkpoints) unchanged."""
import types

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone

import ssb_det
from ssb_det.engine.compile import compile_bottom_up
from narrow_host import NARROW_HOST_OPTS  # tests/ is on sys.path, see conftest.py


def test_compile_bottom_up_in_place_keeps_the_state_dict():
    cfg = get_cfg()
    ssb_det.add_ssb_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_ssb_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.merge_from_list(NARROW_HOST_OPTS)
    model = torch.nn.Module()  # a meta-architecture's part that matters here
    model.backbone = build_backbone(cfg)
    keys = list(model.state_dict())
    wrapper = types.SimpleNamespace(module=model)  # as DistributedDataParallel holds it
    bottom_up = compile_bottom_up(wrapper, backend="eager")
    assert bottom_up is model.backbone.bottom_up
    assert bottom_up._compiled_call_impl is not None  # its __call__ runs the compiled forward
    assert list(model.state_dict()) == keys
    assert all(not isinstance(m, torch._dynamo.eval_frame.OptimizedModule)
               for m in model.modules())
