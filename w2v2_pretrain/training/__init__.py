"""Lightning at the edge: the LightningModule, the run's typed config, resume, checks, health,
callbacks and schedules (``train(cfg)`` in w2v2_pretrain/train.py wires them)."""
