"""jvision: JAX/Flax generative and detection models for computer vision."""

import pathlib

from setuptools import find_packages, setup

# requirements.txt pins the library's dependencies, then (after "# Development") the tools.
text = pathlib.Path(__file__).with_name("requirements.txt").read_text()
library = text.split("\n# Development")[0]
requirements = [
    line.strip() for line in library.splitlines() if line.strip() and not line.startswith("#")
]

setup(
    name="jvision",
    version="0.1.0",
    description="JAX/Flax generative and detection models for computer vision",
    packages=find_packages(include=["jvision", "jvision.*"]),
    python_requires=">=3.11",
    install_requires=requirements,
    # `pip install -e .[bench]`: the PyTorch twins behind benchmarks/compare.py.
    extras_require={"bench": ["torch==2.13.0"], "wandb": ["wandb==0.31.0"]},
)
