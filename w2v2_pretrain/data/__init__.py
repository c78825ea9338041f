"""From audio on disk (or in shards) to batches: manifests, decoding, the set-up check, the
dataset and its collator, the length-bucketing batch sampler and the data module.

Glossary (the words every module, log line and count uses):

- **skipped**: an entry the run (or ``w2v2-manifest``, ``w2v2-shard``) does not use. Every
  skip is counted by its reason (``skipped``: reason -> count), and the set-up logs the counts.
- **bad file**: a skipped entry whose file cannot be used (missing, unreadable, empty, of the
  wrong length, undecodable, NaN/Inf or silent, shorter than the feature encoder's receptive
  field). Bad files are also named, ``manifest:line (path): reason``: in the log, in
  ``bad_files`` lists, in the run folder's ``bad_files.tsv``, and counted by
  ``train/bad_files``. ``data.on_bad_file=error`` stops instead.
- The other skips are by a setting: clips shorter than ``data.min_sample_size`` (or than
  ``--min-seconds``, longer than ``--max-seconds``), counted, not named.
"""
