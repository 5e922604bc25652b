"""GAN model families (one file each); classifiers live in `classifiers.py`."""
