#!/usr/bin/env python
"""Export an SSB-ResNet backbone and/or detector (torch.export, TorchScript, ONNX); print
parity vs eager.

Examples:
    python tools/export_model.py --config-file configs/quickstart/faster_rcnn_SSB_R_50_FPN_shapes.yaml \\
        --what backbone --format export --input-size 320 448 --output export/
    python tools/export_model.py --config-file configs/quickstart/faster_rcnn_SSB_R_50_FPN_shapes.yaml \\
        --what backbone --format onnx-dynamic --input-size 128 160 --output export/
    python tools/export_model.py --config-file configs/quickstart/faster_rcnn_SSB_R_50_FPN_shapes.yaml \\
        --output export/ MODEL.WEIGHTS output/model_final.pth
    python tools/export_model.py --config-file X.yaml --what backbone --format onnx \\
        --input-size 800 1216 --opset 17 --output export/

Every format serves other input sizes than ``--input-size`` and is checked at two:
``--format export`` (torch.export) and ``--format onnx-dynamic`` (ONNX through it) every
height/width in ``--size-range`` (multiples of 32; backbone only); TorchScript and
``--format onnx`` (through TorchScript) any size, backbone and detector (see
ssb_det/export.py).
Thin wrapper over :func:`ssb_det.export.export_main`.
"""
import sys

from ssb_det.export import export_main

if __name__ == "__main__":
    export_main(sys.argv[1:])
