#!/usr/bin/env bash
# Issue 41: (1) jvision against PyTorch eager and torch.compile on the GPU for the seven configs
# benchmarks/compare.py knows, float32 and bfloat16, data on the host and on the device, each row
# with the input pipeline's batches/s beside the step's; (2) the trained full-MNIST VAE's
# test/nll_is_nats on all 10,000 test digits at K = 5,000. The device call: device/README.md.
#
#   OUT=DIR device/speed_and_likelihood.sh [WEIGHTS]
#
# WEIGHTS: a vae_full_mnist workdir or zoo entry (default zoo:vae_full_mnist; the bundle's copy:
# device/bundle/vae_full_mnist).
#
# Time budget: BUDGET_S = 570 s of the call's 600 s limit (the rest returns the files). Each step
# has a cap and must end by the sum of the caps up to it, so a step that ends early leaves its
# time to the next ones and a late one is stopped (SIGTERM) without taking theirs:
#     60 s  setup (device/common.sh: wheels, full_mnist prepared)                   ends by  60
#    120 s  the likelihood: python -m jvision.evaluate --workdir=WEIGHTS
#           --config.evals.nll.split=test (the config's K = 5,000, 250 per pass,
#           8 digits per batch: 25,000 passes of 2,000 decoder samples)                      180
#   compare.py, one run per group below (each run also times the host pipeline):
#     75 s  f32-device    float32, data on the device, the 6 configs that can have
#                         it there (not the encoding detector: the family makes its
#                         triplets), no torch.compile, 2 rounds x 10 steps                  255
#     75 s  bf16-device   the same in bfloat16                                              330
#    120 s  f32-host      float32, host, the 5 configs other than DRAW, torch.compile
#                         too, 3 rounds x 20 steps                                          450
#     40 s  f32-host-draw float32, host, draw_mnist and draw_mnist_small, no
#                         torch.compile (its compile of 64 unrolled glimpses would take
#                         the group), 2 rounds x 5 steps                                    490
#     80 s  bf16-host     bfloat16, host, the 5 configs other than DRAW, torch.compile      570
#   Not in the default list (SPEED_GROUPS names them): bf16-host-draw (40 s).
# A group stopped at its end loses its table, not its rows printed so far (`#   {...}` lines in
# the log); SPEED_GROUPS=a,b runs chosen groups, NLL_S=0 skips the likelihood, in another call.
#
# Outputs in $OUT:
#   speed_and_likelihood.log  everything printed
#   nll.json                  jvision.evaluate's JSON: test/nll_is_nats, test/nelbo_nats, ...
#   speed.md                  each group's command, Markdown table and footnotes
#   speed.jsonl               each group's JSON line (compare.py's every number)
#
# DEVICE_TINY=1 (tests/test_device_scripts.py, on a CPU): vae_mnist:tiny in two groups
# (f32-host and bf16-device), 1 step, no torch.compile, the likelihood on test[:16].
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=device/common.sh
source device/common.sh

budget=${BUDGET_S:-570}
tiny=${DEVICE_TINY:-0}
weights=${1:-zoo:vae_full_mnist}
readonly SETUP_S=60 MIN_S=20
nll_s=${NLL_S:-120}
readonly FAST=vae_mnist,ssd_mnist,patchvae_mnist,transfer_mnist,encoding_detector_mnist
readonly DRAW=draw_mnist,draw_mnist_small
readonly ON_DEVICE=vae_mnist,draw_mnist,draw_mnist_small,ssd_mnist,patchvae_mnist,transfer_mnist
# name, dtype, placement, cap in seconds, configs, compare.py's other flags.
declare -A specs=(
  [f32-device]="float32 device 75 $ON_DEVICE --no_compile --rounds=2 --steps=10 --warmup=2"
  [bf16-device]="bfloat16 device 75 $ON_DEVICE --no_compile --rounds=2 --steps=10 --warmup=2"
  [f32-host]="float32 host 120 $FAST --rounds=3 --steps=20"
  [f32-host-draw]="float32 host 40 $DRAW --no_compile --rounds=2 --steps=5 --warmup=2"
  [bf16-host]="bfloat16 host 80 $FAST --rounds=3 --steps=20"
  [bf16-host-draw]="bfloat16 host 40 $DRAW --no_compile --rounds=2 --steps=5 --warmup=2"
)
groups=${SPEED_GROUPS-f32-device,bf16-device,f32-host,f32-host-draw,bf16-host}
nll_split="test"
if [[ $tiny == 1 ]]; then
  tiny_flags="--no_compile --rounds=1 --steps=1 --warmup=1 --pipeline_batches=2 --matmul_size=64"
  specs[f32-host]="float32 host 120 vae_mnist:tiny $tiny_flags"
  specs[bf16-device]="bfloat16 device 120 vae_mnist:tiny $tiny_flags"
  groups=${SPEED_GROUPS-f32-host,bf16-device} nll_split="test[:16]"
fi
end_by=$SETUP_S # When the current step must end, in seconds since the start.
limit=0

# begin_step CAP: sets `limit`, the seconds the next step may take: until the previous step's
# end plus CAP, within the budget. False when that is under MIN_S: the step is skipped.
begin_step() {
  end_by=$((end_by + $1))
  if ((end_by > budget)); then end_by=$budget; fi
  limit=$((end_by - $(elapsed)))
  ((limit >= MIN_S))
}

likelihood() {
  if ! begin_step "$nll_s"; then
    say "likelihood skipped: $limit s left of its time"
    return 0
  fi
  say "likelihood of $weights on $nll_split, at most $limit s"
  if timeout -s TERM -k 10 "$limit" "$python" -m jvision.evaluate --workdir="$weights" \
    --config.evals.nll.split="$nll_split" >"$work/nll.json"; then
    cp "$work/nll.json" "$OUT/nll.json"
    cat "$OUT/nll.json"
  else
    say "the likelihood did not finish (status $?)"
  fi
}

speed_group() { # speed_group NAME: compare.py for one group; its table into speed.md.
  local name=$1 dtype placement cap configs flags command status=0
  if [[ -z ${specs[$name]:-} ]]; then
    say "unknown group $name; known: ${!specs[*]}"
    return 0
  fi
  read -r dtype placement cap configs flags <<<"${specs[$name]}"
  # shellcheck disable=SC2206 # The flags are words without spaces.
  command=("$python" benchmarks/compare.py --configs="$configs" --dtype="$dtype"
    --placement="$placement" --markdown="$work/$name.md" $flags)
  if ! begin_step "$cap"; then
    say "group $name skipped: $limit s left of its time"
    return 0
  fi
  say "group $name, at most $limit s: ${command[*]:1}"
  timeout -s TERM -k 10 "$limit" "${command[@]}" | tee "$work/$name.out" || status=$?
  if ((status)) || [[ ! -f $work/$name.md ]]; then
    say "group $name did not finish (status $status): its rows so far are the '#   {' lines above"
    return 0
  fi
  {
    printf '## %s\n\n%s\n\n' "$name" "\`${command[*]:1}\`"
    cat "$work/$name.md"
    printf '\n'
  } >>"$OUT/speed.md"
  grep '^{"machine"' "$work/$name.out" >>"$OUT/speed.jsonl" || true
}

main() {
  say "speed and likelihood: budget $budget s, groups ${groups:-none}, weights $weights"
  setup
  if ((nll_s > 0)); then likelihood; fi
  local name
  for name in ${groups//,/ }; do
    speed_group "$name"
  done
  say "done"
}

main 2>&1 | tee "$OUT/speed_and_likelihood.log"
