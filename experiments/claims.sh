#!/usr/bin/env bash
# The runs behind the README's "Do the papers' claims hold here?" section (issue 14), resumable:
# rerun the same line after an interruption and it continues (exit status 75 = stopped early).
#
#   experiments/claims.sh draw ROOT STEPS        DRAW paper size, with and without attention
#   experiments/claims.sh transfer ROOT STEPS    PatchVAE vs VAE vs random init, 3 seeds each:
#                                                pretraining for STEPS, transfer from every
#                                                fifth of it, and with the stem frozen only
#
# Each part runs its two halves as two processes at once (they share one accelerator).
# PYTHON overrides the interpreter; SEEDS (default 0,1,2) the seeds.
set -euo pipefail

python=${PYTHON:-python}
seeds=${SEEDS:-0,1,2}

draw() {  # draw ROOT STEPS NAME USE_ATTENTION
  "$python" -m jvision.main --config=configs/draw_mnist.py --workdir="$1/draw_$3" \
    --config.total_steps="$2" --config.model.use_attention="$4" \
    --config.eval_every_steps=2000 --config.ckpt_every_steps=2000 --config.log_every_steps=500
}

encoder() {  # encoder ROOT STEPS KIND: pretrain KIND over the seeds, then transfer from it
  local root=$1 steps=$2 kind=$3 fifth=$(($2 / 5)) at
  "$python" -m jvision.sweep --config=configs/patchvae_mnist.py --workdir="$root/pretrain_$kind" \
    --seeds="$seeds" --config.model.kind="$kind" --config.total_steps="$steps" \
    --config.ckpt_every_steps="$fifth" --config.eval_every_steps="$fifth" --config.keep_checkpoints=5
  for at in $(seq "$fifth" "$fifth" "$steps"); do
    "$python" -m jvision.sweep --config=configs/transfer_mnist.py \
      --workdir="$root/transfer_${kind}_at$at" --seeds="$seeds" \
      --config.init_from.workdir="$root/pretrain_$kind/seed_{seed}" --config.init_from.step="$at"
  done
  "$python" -m jvision.sweep --config=configs/transfer_mnist.py \
    --workdir="$root/transfer_${kind}_stem_frozen" --seeds="$seeds" \
    --config.init_from.workdir="$root/pretrain_$kind/seed_{seed}" --config.model.freeze_stages=1
}

wait_all() {  # wait_all PID...: waits for every one; fails with the last failure's status
  local status=0 pid
  for pid in "$@"; do wait "$pid" || status=$?; done
  return "$status"
}

case ${1:-} in
  draw)
    draw "$2" "$3" attention True &
    first=$!
    draw "$2" "$3" no_attention False &
    wait_all "$first" $!
    ;;
  transfer)
    encoder "$2" "$3" patchvae &
    first=$!
    encoder "$2" "$3" vae &
    second=$!
    "$python" -m jvision.sweep --config=configs/transfer_mnist.py --workdir="$2/transfer_random" \
      --seeds="$seeds"
    wait_all "$first" "$second"
    ;;
  *)
    echo "usage: experiments/claims.sh draw|transfer ROOT STEPS" >&2
    exit 2
    ;;
esac
