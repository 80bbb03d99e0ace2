"""Datasets as in-memory uint8 tensors, their few-shot subsets, and one LightningDataModule."""
