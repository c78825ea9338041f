"""The demo: load a few batches of the embedded corpus through the data module."""

from __future__ import annotations

import logging

from w2v2_pretrain.data.datamodule import AudioDataModule


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dm = AudioDataModule(
        "data/manifests",
        min_sample_size=8000,
        max_sample_size=64_000,
        max_tokens=256_000,
        num_workers=2,
    )
    dm.setup("fit")
    for i, batch in enumerate(dm.train_dataloader()):
        print(f"batch {i}: {tuple(batch.source.shape)} samples, ids {batch.ids.tolist()}")
        if i == 4:
            break


if __name__ == "__main__":
    main()
