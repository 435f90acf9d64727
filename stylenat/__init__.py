"""StyleNAT: a StyleGAN-style generator with Hydra neighborhood attention, its wavelet discriminator,
Lightning training, clean-fid evaluation, sampling, and NAT / DiNAT classifiers."""

__version__ = "0.1.0"
