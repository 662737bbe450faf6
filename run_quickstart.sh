#!/usr/bin/env bash
# The README's main command: install if needed, then train Faster R-CNN with an SSB-R50-FPN
# backbone from scratch on CPU on the embedded dataset (generated on first use into
# datasets/ssb_shapes/, or $SSB_DET_DATASETS/ssb_shapes), evaluate it with pycocotools'
# COCOeval and print the COCO AP table.
#
#   bash run_quickstart.sh                      # SSB-R50 (7-13 minutes on 2 idle CPU cores)
#   bash run_quickstart.sh --with-baseline      # then the plain-R50 twin, same schedule and seed
#   bash run_quickstart.sh MODEL.DEVICE cuda    # extra KEY VALUE pairs go to tools/train_net.py
#
# Outputs: output/quickstart/<config name>/ (checkpoints, metrics.json, TensorBoard events,
# log.txt, inference/eval_results.json). See docs/pipeline.md.
set -euo pipefail
cd "$(dirname "$0")"

with_baseline=0
if [ "${1:-}" = "--with-baseline" ]; then
  with_baseline=1
  shift
fi

bash install.sh
PY=.venv/bin/python
export MPLBACKEND=Agg

configs=(configs/quickstart/faster_rcnn_SSB_R_50_FPN_shapes.yaml)
[ "$with_baseline" = 1 ] && configs+=(configs/quickstart/faster_rcnn_R_50_FPN_shapes.yaml)

# Generate the dataset first, so the timed part is training and evaluation only.
"$PY" -c "from ssb_det.data import get_shapes_split as g; g('train'); g('val')"

out_dirs=()
for config in "${configs[@]}"; do
  name=$(basename "$config" .yaml)
  out="output/quickstart/$name"
  out_dirs+=("$out")
  if [ -e "$out" ]; then  # keep an earlier run rather than mixing two runs' metrics.json
    mv "$out" "$out.prev-$(date +%Y%m%d-%H%M%S)"
  fi
  echo "run_quickstart.sh: training and evaluating $config -> $out"
  start=$(date +%s)
  "$PY" tools/train_net.py --config-file "$config" OUTPUT_DIR "$out" "$@"
  echo "run_quickstart.sh: $name: training + evaluation took $(( $(date +%s) - start )) s"
done

echo
"$PY" -m ssb_det.engine.report "${out_dirs[@]}"
if [ "$with_baseline" = 1 ]; then
  # The cost side of the comparison at the quickstart's input, as the models see it: 144x192
  # images padded to 160x192 (FPN's SIZE_DIVISIBILITY 32); fvcore MACs, sampling counted;
  # the twin is the same config with MODEL.SSB.ENABLED False.
  echo
  "$PY" tools/analyze_model.py --config-file "${configs[0]}" --size 160 192 "$@"
fi
