"""Manifests, audio decoding, the dataset, the bucketing batch sampler and the data module."""
