#!/usr/bin/env python
"""Train and evaluate SSB-ResNet detectors: Detectron2's ``tools/train_net.py`` with SSB configs.

Examples:
    python tools/train_net.py --config-file configs/ssb_r50_fpn_1x.yaml --num-gpus 8
    python tools/train_net.py --config-file configs/ssb_r50_fpn_1x.yaml --eval-only \\
        MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file configs/quickstart/faster_rcnn_SSB_R_50_FPN_shapes.yaml
    python tools/train_net.py --config-file configs/ssb_r50_fpn_1x.yaml --num-gpus 8 --compile

All logic is in :mod:`ssb_det.engine` (see docs/pipeline.md).
"""
import sys

from detectron2.engine import default_argument_parser

from ssb_det.compat import launch  # Detectron2's launch; gloo workers on CPU-only machines
from ssb_det.data import DatasetNotFoundError
from ssb_det.engine import WeightsConventionError, main

if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the bottom-up (one graph, any size; in place, "
                        "checkpoints unchanged; see ssb_det/engine/compile.py)")
    args = parser.parse_args()
    print("Command Line Args:", args)
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines,
               machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
    except (DatasetNotFoundError, WeightsConventionError) as e:
        sys.exit(f"train_net.py: error: {e}")
