"""Conversions to and from other wav2vec 2.0 implementations."""
