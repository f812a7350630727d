# Sourced by device/draw_full_mnist.sh and device/speed_and_likelihood.sh (not run on its own):
# the settings they share, the clock, and the setup that lets the GPU machine's Python run
# jvision from the bundle that device/bundle.sh makes.
#
# Environment (each optional except OUT):
#   OUT            the folder whose files come back from the device call
#   PYTHON         the interpreter (python3: the device image's, with JAX for CUDA and PyTorch)
#   DEVICE_BUNDLE  the bundle (device/bundle)
#   DEVICE_SITE    where its wheels are installed (/tmp/site)
#   DEVICE_WORK    scratch space: workdirs, compilation cache (/tmp/device_work)
#   TFDS_DATA_DIR  where the datasets are prepared (/tmp/jvision_tfds)
#   BUDGET_S       the script's wall-time budget in seconds (each script sets its default)
#   DEVICE_TINY=1  the scripts' tiny variants: `:tiny` configs, a few steps, tiny splits, for
#                  tests/test_device_scripts.py on a CPU
# shellcheck shell=bash

python=${PYTHON:-python3}
bundle=${DEVICE_BUNDLE:-device/bundle}
site=${DEVICE_SITE:-/tmp/site}
work=${DEVICE_WORK:-/tmp/device_work}
: "${OUT:?set OUT to the folder whose files come back}"
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-/tmp/jvision_tfds}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$work/jax_cache}
export PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
mkdir -p "$OUT" "$work"
start_s=$(date +%s)

elapsed() { echo $(($(date +%s) - start_s)); }
say() { echo "device: [$(elapsed) s] $*"; } # Every line of the scripts' own starts so.

# The bundle's wheels installed (when it has any), full MNIST's source put where TFDS's builder
# looks for it, the packages' versions printed, jvision's imports checked, full_mnist prepared.
setup() {
  local wheels=()
  if compgen -G "$bundle/wheels/*.whl" >/dev/null; then
    wheels=("$bundle"/wheels/*.whl)
    say "installing ${#wheels[@]} wheels into $site"
    "$python" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
      --no-cache-dir --upgrade --target "$site" "${wheels[@]}"
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
  else
    say "no wheels in $bundle/wheels: $python's own packages"
  fi
  if [[ -f $bundle/mnist.pkl.gz ]]; then
    mkdir -p "$TFDS_DATA_DIR/downloads/manual"
    cp "$bundle/mnist.pkl.gz" "$TFDS_DATA_DIR/downloads/manual/"
  fi
  "$python" - <<'EOF'
import importlib.metadata as metadata
import sys

import jax

import jvision.train  # noqa: F401  Everything the trainer imports, checked before any run.

names = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch", "grain", "clu")
names += ("tensorflow-datasets", "etils", "protobuf", "ml-collections")
found = []
for name in names:
    try:
        found.append(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        found.append(f"{name} absent")
print("device: python", sys.version.split()[0], "|", ", ".join(found))
print("device: JAX devices:", ", ".join(str(d) for d in jax.devices()))
EOF
  "$python" -m jvision.data.prepare --dataset=full_mnist
}
