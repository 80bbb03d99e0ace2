"""TensorBoard views of the generator: a grid of samples and the teacher's class histogram."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torchvision.utils import make_grid


class GeneratorSamples(pl.Callback):
    """At every evaluation of a zero-shot run, log `n_samples` generated images from a fixed z
    (so successive grids are comparable) and a histogram of the teacher's predicted classes.

    The fixed z comes from its own seeded stream, never from the run's noise generator, so
    logging does not change what the run trains on.
    """

    def __init__(self, n_samples: int = 64, nrow: int = 8, seed: int = 0) -> None:
        self.n_samples, self.nrow, self.seed = n_samples, nrow, seed

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        generator = getattr(pl_module, "generator", None)
        logger = trainer.logger
        if generator is None or not isinstance(logger, TensorBoardLogger) or not trainer.is_global_zero:
            return
        z = torch.randn(self.n_samples, generator.z_dim, generator=torch.Generator().manual_seed(self.seed))
        was_training = generator.training
        # generator BN in train mode, as during training; its running stats are never used,
        # but keep them untouched so logging leaves no trace in the weights
        saved = {k: v.clone() for k, v in generator.state_dict().items() if "running" in k or "num_batches" in k}
        generator.train()
        with torch.no_grad():
            images = generator(z.to(pl_module.device)).float()
            classes = pl_module.teacher(pl_module.to_input(images)).argmax(1)
        generator.load_state_dict(saved, strict=False)
        generator.train(was_training)
        step = trainer.global_step
        grid = make_grid(images.cpu(), nrow=self.nrow, normalize=True, scale_each=True)
        logger.experiment.add_image("generator/samples", grid, step)
        logger.experiment.add_histogram("generator/teacher_classes", classes.cpu(), step,
                                        bins=np.arange(pl_module.teacher.num_classes + 1) - 0.5)
