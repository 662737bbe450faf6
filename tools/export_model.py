#!/usr/bin/env python
"""Export an SSB-ResNet backbone and/or detector to TorchScript and ONNX; print parity vs eager.

Examples:
    python tools/export_model.py --config-file configs/quickstart/faster_rcnn_SSB_R_50_FPN_shapes.yaml \\
        --output export/ MODEL.WEIGHTS output/model_final.pth
    python tools/export_model.py --config-file X.yaml --what backbone --format onnx \\
        --input-size 800 1216 --opset 17 --output export/

The exported graphs are specialised to ``--input-size`` (see ssb_det/export.py). Thin wrapper
over :func:`ssb_det.export.export_main`.
"""
import sys

from ssb_det.export import export_main

if __name__ == "__main__":
    export_main(sys.argv[1:])
