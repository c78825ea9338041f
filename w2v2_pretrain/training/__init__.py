"""Lightning at the edge: the pretraining LightningModule, schedules and the train() entry."""
