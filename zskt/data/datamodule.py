"""One LightningDataModule for every dataset: in-memory uint8 tensors, few-shot subsets, batched augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from zskt.io import atomic_write_json
from zskt.data import sources
from zskt.data.augment import normalize, random_crop_flip
from zskt.data.few_shot import few_shot_indices
from zskt.errors import UserError
from zskt.rng import PicklableGenerators
from zskt.rundir import FEW_SHOT_INDICES
from zskt.validation import check, parse_m

DATASETS = ("cifar10", "cifar100", "svhn", "image_folder", "digits")


class ImageDataModule(PicklableGenerators, pl.LightningDataModule):
    """Train (or its few-shot subset) and test splits of one dataset.

    Batches leave the loader as uint8; `on_after_batch_transfer` augments them on the
    device (training only) and normalises them. The sampler's and the augmentation's
    random streams live in the checkpoint (`state_dict`), so a resumed run sees the
    same batches as an uninterrupted one.
    """

    def __init__(
        self,
        name: str,
        root: str | None = None,
        download: bool = True,
        m: int | str | None = None,
        subset_seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        augment: bool = False,
        crop_padding: int = 4,
        resize: bool = False,
        cache_dir: str | None = None,
        split_seed: int = 0,
        test_fraction: float = 0.2,
        output_dir: str | None = None,
    ) -> None:
        super().__init__()
        if name not in DATASETS:
            raise UserError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS)}")
        self._given: tuple | None = None
        if name in ("image_folder",) and not root:
            raise UserError("dataset=image_folder needs dataset.root=DIR (a folder with train/<class>/ and test/<class>/)")
        if root and name in ("image_folder",) and root != "<memory>" and not Path(root).is_dir():
            raise UserError(f"dataset.root={root} does not exist: point it at a folder with train/ and test/")
        for key, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            check(f"dataset.{key}", value)
        # not to the logger: the run's HPARAMS tab is zskt.sweep's (and `name` would clash with the method's)
        self.save_hyperparameters(logger=False)
        self.name, self.m = name, parse_m(m)
        # the normalisation: given, or (None) computed from the train split in `setup`
        self.mean, self.std = mean, std
        self.sampler_generator = torch.Generator().manual_seed(subset_seed)
        self.augment_generator = torch.Generator().manual_seed(subset_seed + 1)
        self.train_split: sources.ImageTensors | None = None
        self.test_split: sources.ImageTensors | None = None
        self.indices: torch.Tensor | None = None

    @classmethod
    def from_tensors(cls, train: sources.ImageTensors, test: sources.ImageTensors, **kwargs) -> "ImageDataModule":
        """A datamodule over splits already in memory (benchmarks, notebooks); `kwargs` as for the constructor."""
        datamodule = cls(**{"name": "image_folder", "root": "<memory>", **kwargs})
        datamodule._given = (train, test)
        return datamodule

    # ------------------------------------------------------------------ loading
    def _from_torchvision(self) -> bool:
        return self._given is None and self.name in sources.TORCHVISION and not sources.is_image_folder_tree(self.hparams.root)

    def prepare_data(self) -> None:
        """Download torchvision's files when dataset.download=true (zskt.run calls this before `setup`)."""
        if self.hparams.download and self._from_torchvision():
            sources.download(self.name, self.hparams.root)

    def _load(self, split: str) -> sources.ImageTensors:
        hp = self.hparams
        if self._given is not None:
            return self._given[0] if split == "train" else self._given[1]
        if self.name == "digits":
            return sources.load_digits(split, hp.split_seed, hp.test_fraction)
        if not self._from_torchvision():
            return sources.load_image_folder(hp.root, split, resize=hp.resize, cache_dir=hp.cache_dir)
        return sources.load_torchvision(self.name, hp.root, split, download=False)

    def save_subset(self) -> None:
        """Record the few-shot subset in <output_dir>/few_shot_indices.json (when there is one).

        Separate from `setup`: a run writes it only once every input has been checked."""
        if self.indices is None or self.hparams.output_dir is None:
            return
        record = {"dataset": self.name, "m": self.m, "seed": self.hparams.subset_seed, "indices": self.indices.tolist()}
        path = Path(self.hparams.output_dir) / FEW_SHOT_INDICES
        try:
            if json.loads(path.read_text()) == record:  # a resumed run: leave the file as it is
                return
        except (OSError, ValueError):
            pass
        atomic_write_json(record, path)

    def setup(self, stage: str | None = None) -> None:
        """Decode both splits once, choose the few-shot subset and the normalisation."""
        if self.train_split is not None:
            return
        train, test = self._load("train"), self._load("test")
        if len(train.classes) < 2:
            raise UserError(f"dataset {self.name} has {len(train.classes)} class: a classifier needs at least 2")
        if train.classes != test.classes:
            raise UserError(f"train and test splits of {self.name} have different classes: {train.classes} vs {test.classes}")
        if self.m is not None:
            self.indices = few_shot_indices(train.labels, self.m, self.hparams.subset_seed)
            train = sources.ImageTensors(train.images[self.indices], train.labels[self.indices], train.classes)
        if self.mean is None or self.std is None:
            # datasets without published constants are normalised with their own train statistics
            pixels = train.images.float().div(255.0)
            self.mean = pixels.mean(dim=(0, 2, 3)).tolist()
            self.std = pixels.std(dim=(0, 2, 3)).tolist()
        self.mean, self.std = [float(x) for x in self.mean], [float(x) for x in self.std]
        self.train_split, self.test_split = train, test
        # the test set is normalised once, so evaluation batches need no work and any module
        # can use these loaders without this datamodule attached to its Trainer
        self.test_inputs = normalize(test.images, self.mean, self.std)

    @property
    def num_classes(self) -> int:
        self.setup()
        return len(self.train_split.classes)

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        dataset = TensorDataset(self.train_split.images, self.train_split.labels)
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            sampler=RandomSampler(dataset, generator=self.sampler_generator),
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def _eval_loader(self) -> DataLoader:
        dataset = TensorDataset(self.test_inputs, self.test_split.labels)
        return DataLoader(dataset, batch_size=self.hparams.eval_batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        # the originals evaluate on the test set during training; so do we, and say so in results.json
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        if images.dtype != torch.uint8:  # evaluation batches arrive normalised
            return batch
        if self.hparams.augment:
            images = random_crop_flip(images, self.hparams.crop_padding, self.augment_generator)
        return normalize(images, self.mean, self.std), labels

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {
            "sampler_generator": self.sampler_generator.get_state(),
            "augment_generator": self.augment_generator.get_state(),
            "indices": None if self.indices is None else self.indices.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.setup()
        saved = state.get("indices")
        if (saved is None) != (self.indices is None) or (saved is not None and not torch.equal(saved, self.indices)):
            raise UserError("the few-shot subset differs from the one the run started with: resume with the run's own dataset and seed")
        self.sampler_generator.set_state(state["sampler_generator"])
        self.augment_generator.set_state(state["augment_generator"])
