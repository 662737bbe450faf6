#!/usr/bin/env python
"""Export an SSB-ResNet backbone and/or detector to TorchScript and ONNX; print parity vs eager.

Examples:
    python tools/export_model.py --config-file configs/quickstart/faster_rcnn_SSB_R_50_FPN_shapes.yaml \\
        --output export/ MODEL.WEIGHTS output/model_final.pth
    python tools/export_model.py --config-file X.yaml --what backbone --format onnx \\
        --input-size 800 1216 --opset 17 --output export/

The exported graphs are specialised to ``--input-size`` (see ssb_det/export.py). All logic is
in :mod:`ssb_det.export`.
"""
import argparse
import json
import sys

from detectron2.config import get_cfg

import ssb_det
from ssb_det.export import DEFAULT_OPSET, export_from_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, help="a detector config (YAML)")
    parser.add_argument("--output", required=True, help="output directory")
    parser.add_argument("--what", nargs="+", default=["backbone", "detector"],
                        choices=["backbone", "detector"])
    parser.add_argument("--format", nargs="+", default=["torchscript", "onnx"],
                        choices=["torchscript", "onnx"])
    parser.add_argument("--input-size", type=int, nargs=2, default=[320, 448], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1, help="batch of the backbone export")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random example image")
    parser.add_argument("--json", help="also write the parity table to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = get_cfg()
    ssb_det.add_ssb_config(cfg)
    cfg.merge_from_file(args.config_file, allow_unsafe=False)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu"] + list(args.opts))
    cfg.freeze()
    rows = export_from_config(cfg, args.output, what=args.what, formats=args.format,
                              input_size=args.input_size, batch=args.batch, opset=args.opset,
                              seed=args.seed)
    for row in rows:
        diffs = ", ".join(f"{n} {d:.3g} (of max |x| {r:.3g})" for n, d, r in
                          zip(row["outputs"], row["max_abs_diff"], row["max_abs_ref"]))
        print(f"{row['what']:8s} {row['format']:11s} {row['path']}  input {row['input_shape']}\n"
              f"    max |exported - eager|: {diffs}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
