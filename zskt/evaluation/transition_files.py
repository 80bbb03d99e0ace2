"""The files of a belief-matching evaluation: the transition curves as CSV and the paper's Figure 4."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure
from torch import Tensor

from zskt.evaluation.belief_matching import curve_summary

CSV_COLUMNS = ("k", "p_student", "p_student_stderr", "p_teacher", "p_teacher_stderr")


def curves_csv(p_student: Tensor, p_teacher: Tensor) -> str:
    """The CSV text of both transition curves: one row per k, columns `CSV_COLUMNS`."""
    (s_mean, s_err), (t_mean, t_err) = curve_summary(p_student), curve_summary(p_teacher)
    rows = [",".join(CSV_COLUMNS)]
    rows += [f"{k},{s_mean[k]:.6f},{s_err[k]:.6f},{t_mean[k]:.6f},{t_err[k]:.6f}" for k in range(len(s_mean))]
    return "\n".join(rows) + "\n"


def plot_curves(p_student: Tensor, p_teacher: Tensor, plot_k: int, labels: tuple[str, str],
                title: str) -> Figure:
    """The paper's Figure 4: both transition curves against k = 0..plot_k with +-2 standard-error bands."""
    # a bare Figure, not pyplot: no global backend or figure registry to manage
    fig = Figure(figsize=(5.0, 3.6))
    ax = fig.subplots()
    k = torch.arange(min(plot_k, p_student.shape[2] - 1) + 1)
    for p, label, color in ((p_student, labels[0], "tab:blue"), (p_teacher, labels[1], "tab:orange")):
        mean, err = (v[: len(k)].numpy() for v in curve_summary(p))
        ax.plot(k.numpy(), mean, color=color, label=label)
        ax.fill_between(k.numpy(), mean - 2 * err, mean + 2 * err, color=color, alpha=0.25, linewidth=0)
    ax.set(xlabel="k (gradient steps)", ylabel="$p_j$ (target-class probability)", title=title,
           xlim=(0, int(k[-1])), ylim=(0, 1))
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig
