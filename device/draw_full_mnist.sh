#!/usr/bin/env bash
# Issue 40: DRAW, the paper's model with attention (configs/draw_full_mnist.py: full MNIST,
# dynamic binarization, gradient clipping), trained for what one device call allows, its workdir
# brought back so that any machine resumes it. The device call: device/README.md.
#
#   OUT=DIR device/draw_full_mnist.sh
#
# Time budget: BUDGET_S = 570 s of the call's 600 s limit (the rest returns the files).
#   1. setup (device/common.sh): the bundle's wheels installed, full_mnist prepared from
#      mnist.pkl.gz; a minute at most.
#   2. probe, at most PROBE_S = 120 s (device/draw_probe.py probe, skipping what would end after
#      PROBE_S - 10 s): ms per train step at batch 64, 256, 512 and 1024, float32 with the data on
#      the device (gathered and binarized inside the step) and on the host (with the Grain
#      pipeline's batches/s), then bfloat16 on the device.
#   3. plan (device/draw_probe.py plan) for the time left until the stop, STOP_S = BUDGET_S - 40:
#      - the batch size and placement that train on the most digits per second, in float32
#        (DRAW_DTYPE=bfloat16 plans in bfloat16 instead);
#      - learning rate 1e-3 x sqrt(batch / 64), square-root scaling from the config's rate at
#        batch 64; a linear warmup over 5% of the steps, then `rsqrt` with a timescale of 10% of
#        the steps: the rate depends on the step only, so a resume with more steps continues the
#        same schedule;
#      - total_steps = 0.9 x (time left - 45 s start-up and compile - 3 x 10 s evaluations -
#        60 s final evaluation) / the measured step time (DRAW_STEPS=N sets it instead);
#        evaluations and checkpoints at each quarter of the run;
#      - test/nelbo_nats on all 10,000 test digits (the config's), test/nll_is_nats (K = 1,000)
#        on DRAW_NLL_SPLIT = test[:500].
#      E.g. setup 30 s + probe 110 s leave 530 - 140 = 390 s: 0.9 x (390 - 135) = 229 s of steps.
#   4. train: `python -m jvision.main` under `timeout`: SIGTERM at STOP_S if the run is late
#      (the trainer saves a checkpoint, stops, exit 75), SIGKILL 20 s later.
#   5. pack: the workdir's newest checkpoint into one tar.gz, 20 s at most.
#
# Outputs in $OUT (at most 8 files of 16 MiB come back):
#   draw_full_mnist.log     everything printed, ending with the resume command
#   probe.json, plan.json   the measurements; the choice, the numbers behind it, the overrides
#   results.json            the final evaluation (when the run reached its end)
#   draw_full_mnist.tar.gz  draw_full_mnist/: config.json, results.json, the TensorBoard event
#                           file, images/ and checkpoints/<newest step>/ (parameters, optimizer
#                           state, data position); over 15 MiB it comes as
#                           draw_full_mnist.tar.gz.part-00, -01, ... (`cat` them in order)
#
# DEVICE_TINY=1 (tests/test_device_scripts.py, on a CPU): configs/draw_full_mnist.py:tiny, a
# probe of batch 16, 4 steps, test[:16]. Other settings: device/common.sh.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=device/common.sh
source device/common.sh

budget=${BUDGET_S:-570}
tiny=${DEVICE_TINY:-0}
readonly PROBE_S=120 STOP_MARGIN_S=40 KILL_AFTER_S=20 MIN_TRAIN_S=60
readonly PART_BYTES=$((15 * 1024 * 1024))
dtype=${DRAW_DTYPE:-float32}
if [[ $tiny == 1 ]]; then
  config=configs/draw_full_mnist.py:tiny
  batches=16 probe_steps=2 steps=${DRAW_STEPS:-4} nll_split=${DRAW_NLL_SPLIT:-test[:16]}
else
  config=configs/draw_full_mnist.py
  batches=64,256,512,1024 probe_steps=20 steps=${DRAW_STEPS:-0}
  nll_split=${DRAW_NLL_SPLIT:-test[:500]}
fi
workdir=$work/draw_full_mnist
stop_s=$((budget - STOP_MARGIN_S))

newest_step() { # The newest checkpoint step with its checksums written, or nothing.
  local dir newest=
  for dir in "$workdir"/checkpoints/*/; do
    dir=${dir%/}
    [[ ${dir##*/} =~ ^[0-9]+$ && -f $dir/jvision_checksums.json ]] || continue
    if [[ -z $newest || ${dir##*/} -gt $newest ]]; then newest=${dir##*/}; fi
  done
  echo "$newest"
}

pack() { # The workdir's newest checkpoint and its records, as one tar.gz (in parts if large).
  local step members=(config.json) archive=$OUT/draw_full_mnist.tar.gz size event
  step=$(newest_step)
  if [[ -z $step ]]; then
    say "no checkpoint to bring back"
    return 1
  fi
  for event in "$workdir"/events.out.tfevents.*; do
    if [[ -f $event ]]; then members+=("${event##*/}"); fi
  done
  if [[ -f $workdir/results.json ]]; then
    members+=(results.json)
    cp "$workdir/results.json" "$OUT/results.json"
  fi
  if [[ -d $workdir/images ]]; then members+=(images); fi
  members+=("checkpoints/$step")
  tar -czf "$archive" -C "$work" "${members[@]/#/draw_full_mnist/}"
  size=$(stat -c %s "$archive")
  if ((size > PART_BYTES)); then
    split -b "$PART_BYTES" -d "$archive" "$archive.part-"
    rm "$archive"
    say "packed step $step: $size bytes in $(find "$OUT" -name 'draw_full_mnist.tar.gz.part-*' | wc -l) parts"
  else
    say "packed step $step: $size bytes in $archive"
  fi
}

main() {
  say "DRAW on full MNIST: $config, budget $budget s, stop at $stop_s s"
  setup
  say "probe: batches $batches, float32 and bfloat16, at most $PROBE_S s"
  timeout -s TERM -k 10 "$PROBE_S" "$python" device/draw_probe.py probe --config="$config" \
    --out="$OUT/probe.json" --batches="$batches" --steps="$probe_steps" \
    --deadline_s=$((PROBE_S - 10)) || say "the probe stopped early (status $?)"

  local overrides=() status=0
  mapfile -t overrides < <("$python" device/draw_probe.py plan --probe="$OUT/probe.json" \
    --seconds=$((stop_s - $(elapsed))) --out="$OUT/plan.json" --dtype="$dtype" \
    --steps="$steps" --nll_split="$nll_split")
  ((${#overrides[@]})) || { say "no plan: the probe measured no $dtype step"; return 1; }
  say "plan: ${overrides[*]}"

  rm -rf "$workdir"
  local limit=$((stop_s - $(elapsed)))
  if ((limit < MIN_TRAIN_S)); then
    say "no time left to train ($limit s before the stop)"
    return 1
  fi
  say "training; a late run is stopped at $stop_s s"
  timeout -s TERM -k "$KILL_AFTER_S" "$limit" \
    "$python" -m jvision.main --config="$config" --workdir="$workdir" "${overrides[@]}" ||
    status=$?
  if ((status == 124)); then status=75; fi # Stopped by our SIGTERM: it saved a checkpoint.
  if ((status)); then say "the run stopped before its end (status $status)"; fi
  pack
  local resume=() override
  for override in "${overrides[@]/--config.total_steps=*/--config.total_steps=MORE}"; do
    if [[ $override == *[][]* ]]; then override="'$override'"; fi # A split: quoted for shells.
    resume+=("$override")
  done
  say "resume: tar -xzf draw_full_mnist.tar.gz -C workdirs && python -m jvision.main" \
    "--config=$config --workdir=workdirs/draw_full_mnist ${resume[*]}"
  return "$status"
}

main 2>&1 | tee "$OUT/draw_full_mnist.log"
