"""jvision: JAX/Flax generative and detection models for computer vision."""

import pathlib

from setuptools import find_packages, setup

requirements = [
    line.strip()
    for line in pathlib.Path(__file__).with_name("requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#") and line.split("=")[0] not in ("pytest", "ruff")
]

setup(
    name="jvision",
    version="0.1.0",
    description="JAX/Flax generative and detection models for computer vision",
    packages=find_packages(include=["jvision", "jvision.*"]),
    python_requires=">=3.11",
    install_requires=requirements,
)
