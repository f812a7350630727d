#!/usr/bin/env bash
# The runs behind docs/results.md's "Full MNIST, beside the papers", resumable: rerun the
# same line after an interruption and every run continues where it stopped; finished runs are
# only re-evaluated. Prepare the data first: python -m jvision.data.prepare --dataset=full_mnist
#
#   experiments/full_mnist.sh detectors ROOT   SSD with digit-sized priors, the encoding
#                                              detector, then SSD as the tutorial (10 epochs,
#                                              then its 100), on scenes made from full MNIST
#   experiments/full_mnist.sh vae ROOT         the conv VAE, NELBO and importance-sampled NLL
#   experiments/full_mnist.sh transfer ROOT    PatchVAE vs VAE vs random encoder, 3 seeds, and
#                                              a β_occ sweep (1, 3) of PatchVAE, seed 0
#   experiments/full_mnist.sh draw ROOT        DRAW with attention (300k steps; stop any time)
#   experiments/full_mnist.sh draw_plain ROOT  DRAW without attention
#
# PYTHON overrides the interpreter; SEEDS (default 0,1,2) the transfer seeds; PRETRAIN_STEPS
# (default 4000, ~5 min each alone on a 2-core CPU) the PatchVAE / VAE pretraining length.
set -euo pipefail

python=${PYTHON:-python}
seeds=${SEEDS:-0,1,2}
pretrain_steps=${PRETRAIN_STEPS:-4000}
main() { "$python" -m jvision.main "$@"; }
sweep() { "$python" -m jvision.sweep "$@"; }
root=${2:?usage: experiments/full_mnist.sh detectors|vae|transfer|draw|draw_plain ROOT}

pretrain() {  # pretrain NAME OVERRIDES...: PatchVAE-config pretraining over the seeds
  local name=$1
  shift
  sweep --config=configs/patchvae_mnist.py --workdir="$root/pretrain_$name" --seeds="$seeds" \
    --config.data.name=full_mnist --config.total_steps="$pretrain_steps" \
    --config.eval_every_steps="$pretrain_steps" --config.ckpt_every_steps=2000 \
    --config.evals.nll.split="test[:1000]" "$@"
}

transfer() {  # transfer NAME [PRETRAINED]: the frozen-encoder classifier over the seeds
  local init=()
  [ -n "${2:-}" ] && init=(--config.init_from.workdir="$root/pretrain_$2/seed_{seed}")
  sweep --config=configs/transfer_mnist.py --workdir="$root/transfer_$1" --seeds="$seeds" \
    --config.data.name=full_mnist "${init[@]}"
}

case $1 in
  detectors)
    main --config=configs/ssd_mnist_priors.py --workdir="$root/ssd_priors" \
      --config.data.name=mnist_detection_full
    main --config=configs/encoding_detector_mnist.py --workdir="$root/encoding_detector" \
      --config.data.name=mnist_detection_full
    main --config=configs/ssd_mnist_short.py --workdir="$root/ssd_short" \
      --config.data.name=mnist_detection_full
    main --config=configs/ssd_mnist.py --workdir="$root/ssd" --config.data.name=mnist_detection_full
    ;;
  vae)
    main --config=configs/vae_full_mnist.py --workdir="$root/vae"
    ;;
  transfer)
    pretrain patchvae
    pretrain vae --config.model.kind=vae
    transfer patchvae patchvae
    transfer vae vae
    transfer random
    seeds=0
    for beta in 1 3; do
      pretrain "patchvae_beta$beta" --config.model.beta_occurrence="$beta"
      transfer "patchvae_beta$beta" "patchvae_beta$beta"
    done
    ;;
  draw)
    main --config=configs/draw_full_mnist.py --workdir="$root/draw"
    ;;
  draw_plain)
    main --config=configs/draw_full_mnist.py --workdir="$root/draw_plain" \
      --config.model.use_attention=False
    ;;
  *)
    echo "usage: experiments/full_mnist.sh detectors|vae|transfer|draw|draw_plain ROOT" >&2
    exit 2
    ;;
esac
