"""How much an image's features and detections depend on its batch-mates: SSB vs plain ResNet.

Runs image A alone and batched with a larger image B, for the plain twin and SSB models
(zero saliency: the initialisation; random saliency convs scaled so that each block's pooled
logits have standard deviation ``--logit-std`` on A, a stand-in for a trained model's
non-uniform saliency; or all from ``--weights``), and prints the relative L2 change of A's FPN
features, of the box head's outputs on fixed boxes in A and of the SSB sampling rate over A
(see ``ssb_study.batch_dependence``).

    .venv/bin/python projects/SSBStudy/batch_dependence.py            # defaults: A 320x448, B 640x896
    .venv/bin/python projects/SSBStudy/batch_dependence.py --weights output/model_final.pth

The numbers are exact (no timing involved) but depend on the random weights; ``--seed`` shows
the spread.
"""
import argparse

from ssb_study.batch_dependence import batch_dependence, format_report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=None,
                        help="SSB detector config (default: Faster R-CNN SSB-R50-FPN)")
    parser.add_argument("--size-a", type=int, nargs=2, default=[320, 448], metavar=("H", "W"))
    parser.add_argument("--size-b", type=int, nargs=2, default=[640, 896], metavar=("H", "W"))
    parser.add_argument("--logit-std", type=float, nargs="+", default=[1.0, 3.0],
                        help="std of each SSB block's pooled saliency logits (random saliency)")
    parser.add_argument("--weights", default="", help="a trained checkpoint for every model "
                        "(the saliency then comes from the file)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-padding-unaware", action="store_true",
                        help="also run each SSB model with MODEL.SSB.PADDING_AWARE False")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    rows = batch_dependence(args.size_a, args.size_b, logit_stds=args.logit_std,
                            weights=args.weights, seed=args.seed,
                            compare_padding_unaware=args.compare_padding_unaware,
                            config_file=args.config_file, opts=args.opts)
    print(format_report(rows, args.size_a, args.size_b, args.seed, args.weights))


if __name__ == "__main__":
    main()
