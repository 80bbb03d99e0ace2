"""Few-shot knowledge distillation with attention transfer (the paper's few-shot baseline).

The student sees exactly M images per class and learns from their labels and from a frozen
teacher: (1 - alpha) CE + 2 alpha tau^2 KL(t || s) + beta * sum AT, with the scratch recipe's
optimiser, schedule and few-shot epoch stretching (docs/method.md#few-shot-distillation).
"""

from __future__ import annotations

import torch

from zskt.data.sources import IMAGE_SIZE
from zskt.losses import kd_at_loss
from zskt.methods.base import DistillationModule
from zskt.methods.scratch import SGDTrained


class KDAT(SGDTrained, DistillationModule):
    """KD+AT from a frozen teacher; `recipe`: the fields of `SGDRecipe` (conf/method/scratch.yaml)."""

    trains = True
    uses_attention = True  # `run_kwargs` passes `attention_layers`

    def __init__(self, name: str, student: dict, teacher: torch.nn.Module, attention_layers: dict, m: int | None,
                 alpha: float, temperature: float, beta: float, channels_last: bool, compile: bool, **recipe) -> None:
        super().__init__(name, student, teacher, channels_last, compile)
        self.save_hyperparameters(ignore=["teacher"])
        self.use_recipe(m, recipe)
        self.use_attention(attention_layers, beta, IMAGE_SIZE)

    def training_step(self, batch, batch_idx: int):
        hp = self.hparams
        images, labels = batch
        x = self.to_input(images)
        # the teacher only supplies targets: no autograd graph for it (the originals built one)
        with torch.no_grad():
            t_logits, t_features = self.teacher_with_features(x)
        s_logits, s_features = self.student_with_features(x)
        loss = kd_at_loss(s_logits, t_logits, labels, s_features, t_features, hp.alpha, hp.temperature, hp.beta)
        self.log("train/loss", loss, prog_bar=True)
        return loss
