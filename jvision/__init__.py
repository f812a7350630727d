"""jvision: JAX/Flax generative and detection models for computer vision."""

__version__ = "0.1.0"
