"""Training on a Parquet dataset larger than memory: read a row group at a time.

- source: the dataset's row groups, each read on its own (only the job's columns);
- stats: the fold's encoding (means, deviations, categories, imputed values) fitted in
  one streaming pass over its training rows, exactly as in memory;
- batches: an epoch's mini-batches through a bounded shuffle buffer, read ahead by a
  background thread;
- fold: one fold trained, validated and tested that way.
"""
