"""Prepares a dataset jvision reads, as TFDS array_record files.

    python -m jvision.data.prepare --dataset=embedded_mnist [--data_dir=DIR]

`embedded_mnist` needs no network. Other datasets are downloaded by TFDS, so run this on a machine
with internet (and, for manual datasets such as imagenet2012, the archives in TFDS's manual_dir).
"""

from absl import app, flags

from jvision.data import sources

_DATASET = flags.DEFINE_enum("dataset", "embedded_mnist", list(sources.DATASETS), "Dataset.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS's).")


def main(argv):
    del argv
    name = _DATASET.value
    directory = sources.data_dir(_DATA_DIR.value)
    dataset = sources.spec(name)
    if dataset.builder:
        sources.open_source(name, dataset.splits[0], directory)
    else:
        builder = sources.tfds.builder(dataset.tfds_name, data_dir=directory)
        builder.download_and_prepare(file_format="array_record")
    print(f"{name} is prepared in {directory}")


if __name__ == "__main__":
    app.run(main)
