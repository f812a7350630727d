"""The math families share: likelihoods, attention filterbanks, box encoding and NMS, AP,
correlation, max-pooling, the compute-dtype policy. Mostly pure functions on arrays with shapes
in their docstrings; `conv_transpose.ConvTranspose` is an nnx layer (a transposed convolution
with a faster kernel gradient on XLA:CPU) and `precision.apply_policy` sets the dtype of a
model's layers in place."""
