"""Packing: all k folds of a job trained at once as one stacked model (job option
pack_folds), a variant of the core in workers.training and workers.fold."""
