#!/usr/bin/env python
"""Convert torchvision / timm resnetrs / MSRA .pkl ResNet weights into an SSB-ResNet(-RS) init.

``python tools/convert_weights.py SRC DST [--host resnet|resnet-rs]``; thin wrapper over
:func:`ssb_det.convert.main`. See docs/pretraining.md.
"""
import sys

from ssb_det.convert import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
