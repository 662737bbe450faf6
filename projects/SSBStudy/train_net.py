#!/usr/bin/env python
"""Train and evaluate the study's detectors: ``tools/train_net.py`` with the study's keys and
meta-architectures registered (the way Detectron2's projects ship their own train_net.py).

Example::

    python projects/SSBStudy/train_net.py \\
        --config-file projects/SSBStudy/configs/faster_rcnn_SSB_R_50_oracle_FPN_small.yaml
"""
import sys

from detectron2.engine import default_argument_parser

from ssb_det.compat import launch
from ssb_det.data import DatasetNotFoundError
from ssb_det.engine import WeightsConventionError, main
from ssb_study import add_study_config  # importing ssb_study registers its meta-architectures

if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines,
               machine_rank=args.machine_rank, dist_url=args.dist_url,
               args=(args, add_study_config))
    except (DatasetNotFoundError, WeightsConventionError) as e:
        sys.exit(f"train_net.py: error: {e}")
