#!/usr/bin/env python
"""Pretrain an SSB-ResNet(-RS) classifier; evaluate it; export its backbone for Detectron2.

Thin wrapper over :func:`ssb_det.classification.launch.main`; see ``--help`` and
docs/pretraining.md. Multi-process: ``torchrun --standalone --nproc_per_node N tools/pretrain_cls.py ...``.
"""
import sys

from ssb_det.classification.launch import main

if __name__ == "__main__":
    main(sys.argv[1:])
