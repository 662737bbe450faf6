#!/usr/bin/env bash
# The README's main command: install if needed, then train Faster R-CNN with an SSB-R50-FPN
# backbone from scratch on CPU on the embedded dataset (generated on first use into
# datasets/ssb_shapes/, or $SSB_DET_DATASETS/ssb_shapes), evaluate it with pycocotools'
# COCOeval and print the COCO AP table. The quickstart is the accuracy study's regime, shortened
# (configs/quickstart/, projects/SSBStudy/docs/accuracy.md): 320x256 images, quarter-width host, 250 iterations.
#
#   bash run_quickstart.sh                      # SSB-R50 alone, 2 threads
#   bash run_quickstart.sh --with-baseline      # SSB-R50 and its plain-R50 twin side by side,
#                                               # one thread each; then both rows and the costs
#   bash run_quickstart.sh MODEL.DEVICE cuda    # extra KEY VALUE pairs go to tools/train_net.py
#
# Outputs: output/quickstart/<config name>/ (checkpoints, metrics.json, TensorBoard events,
# log.txt, inference/eval_results.json; with --with-baseline also console.log, the run's
# console output). See docs/pipeline.md.
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
"$PY" -c "from ssb_det.data import get_shapes_split as g; g('small_train'); g('small_val')"

out_dirs=()
pids=()
start=$(date +%s)
for config in "${configs[@]}"; do
  name=$(basename "$config" .yaml)
  out="output/quickstart/$name"
  out_dirs+=("$out")
  if [ -e "$out" ]; then  # keep an earlier run rather than mixing two runs' metrics.json
    mv "$out" "$out.prev-$(date +%Y%m%d-%H%M%S)"
  fi
  echo "run_quickstart.sh: training and evaluating $config -> $out"
  if [ "$with_baseline" = 1 ]; then
    # Side by side, one thread each: two 2-thread runs would each stall on the other's
    # spin-waiting threads (docs/pipeline.md).
    mkdir -p "$out"
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$PY" tools/train_net.py --config-file "$config" \
      OUTPUT_DIR "$out" "$@" > "$out/console.log" 2>&1 &
    pids+=($!)
  else
    "$PY" tools/train_net.py --config-file "$config" OUTPUT_DIR "$out" "$@"
  fi
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    status=1
    echo "run_quickstart.sh: ${out_dirs[$i]} failed; the end of its console.log:" >&2
    tail -n 30 "${out_dirs[$i]}/console.log" >&2
  fi
done
[ "$status" = 0 ] || exit 1
echo "run_quickstart.sh: training + evaluation took $(( $(date +%s) - start )) s (wall clock)"

echo
"$PY" -m ssb_det.engine.report "${out_dirs[@]}"
if [ "$with_baseline" = 1 ]; then
  # The cost side of the comparison at the quickstart's input, as the models see it (256x320,
  # a multiple of FPN's SIZE_DIVISIBILITY 32); fvcore MACs, sampling counted; the twin is
  # the same config with MODEL.SSB.ENABLED False.
  echo
  "$PY" tools/analyze_model.py --config-file "${configs[0]}" --size 256 320 "$@"
fi
