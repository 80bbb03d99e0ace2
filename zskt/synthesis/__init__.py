"""What the data-free methods other than zero-shot share (docs/method.md#data-free-methods): the
BatchNorm-statistics loss (forward hooks on the teacher), image priors and the competition term,
the benchmark's augmentation of synthetic batches, the KD loss, and the memory bank of
synthesised images whose contents are checkpoint state."""
