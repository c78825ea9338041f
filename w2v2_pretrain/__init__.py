"""w2v2-pretrain: wav2vec 2.0 self-supervised speech pretraining."""

__version__ = "0.1.0"
