"""Adversarial belief matching: the pure functions against hand-written references, and `method=abm` end to end."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import matplotlib.image
import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import zskt.run
from zskt_test_helpers import compose_run_config
from zskt.checkpoints import save_model
from zskt.errors import UserError
from zskt.evaluation.belief_matching import (
    agreeing_images,
    curve_summary,
    mean_transition_error,
    other_classes,
    transition_curves,
)
from zskt.evaluation.transition_files import CSV_COLUMNS, curves_csv
from zskt.models.wide_resnet import WideResNet

C = 10


def _net(seed: int, dtype: torch.dtype = torch.float32) -> WideResNet:
    torch.manual_seed(seed)
    return WideResNet(10, 1, C).to(dtype).eval()


def _images(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    # 16x16: a WRN pools whatever the size, and the pure-function tests run 4x faster than at 32x32
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(0), dtype=dtype)


def _perturbed(net: torch.nn.Module, scale: float) -> torch.nn.Module:
    """A copy of `net` with noise on its last layer's weights: it agrees with `net` on some images."""
    copied = copy.deepcopy(net)
    with torch.no_grad():
        last = [p for name, p in copied.named_parameters() if name.endswith("weight")][-1]
        last.add_(scale * torch.randn(last.shape, generator=torch.Generator().manual_seed(1)))
    return copied


# ---------------------------------------------------------------------------- pure functions
def test_mte_is_exactly_zero_when_the_student_is_the_teacher():
    student = _net(0)
    teacher = copy.deepcopy(student)
    images = _images(3)
    classes = student(images).argmax(1)
    p_s, p_t = transition_curves(student, teacher, images, classes, C, steps=2, xi=1.0, batch_images=2)
    assert torch.equal(p_s, p_t)
    assert mean_transition_error(p_s, p_t) == (0.0, 0.0)


def test_curves_start_at_the_clean_probabilities_and_rise_for_the_stepping_net():
    student, teacher, images = _net(0), _net(1), _images(3)
    classes = student(images).argmax(1)
    p_s, p_t = transition_curves(student, teacher, images, classes, C, steps=4, xi=1.0, batch_images=2)
    assert p_s.shape == p_t.shape == (3, C - 1, 4)
    targets = other_classes(classes, C)
    assert (targets != classes[:, None]).all() and targets.shape == (3, C - 1)
    with torch.no_grad():
        for net, p in ((student, p_s), (teacher, p_t)):
            clean = net(images).softmax(1).gather(1, targets)
            torch.testing.assert_close(p[:, :, 0], clean, atol=1e-6, rtol=0)
    # descending the student's cross-entropy towards j raises the student's p_j
    assert (p_s[:, :, -1].mean() > p_s[:, :, 0].mean()).item()


REFERENCE_TARGETS = (0, C - 2)  # positions among an image's C-1 targets: the first and the last


def _reference_curves(student, teacher, images, classes, steps, xi, step_on):
    """Algorithm 2 written plainly: one image, one target, K steps, no batching (targets REFERENCE_TARGETS)."""
    stepping = student if step_on == "student" else teacher
    p_s = torch.zeros(len(images), len(REFERENCE_TARGETS), steps, dtype=torch.float64)
    p_t = torch.zeros_like(p_s)
    for n, (image, i) in enumerate(zip(images, classes.tolist())):
        targets = [c for c in range(C) if c != i]
        for t, j in enumerate(targets[position] for position in REFERENCE_TARGETS):
            x = image[None].clone()
            for k in range(steps):
                x.requires_grad_(True)
                with torch.no_grad():
                    p_s[n, t, k] = F.softmax(student(x), 1)[0, j]
                    p_t[n, t, k] = F.softmax(teacher(x), 1)[0, j]
                loss = F.cross_entropy(stepping(x), torch.tensor([j]))
                (grad,) = torch.autograd.grad(loss, x)
                x = (x - xi * grad).detach()
    return p_s, p_t


@pytest.mark.parametrize("step_on", ["student", "teacher"])
def test_batched_curves_equal_a_per_image_per_target_loop(step_on):
    # float64, so the only difference left is the batching (summation order): agree to 1e-10.
    # In float32 the two differ by rounding that the raw-gradient walk amplifies step by step.
    student, teacher, images = _net(0, torch.float64), _net(1, torch.float64), _images(2, torch.float64)
    classes = student(images).argmax(1)
    batched = transition_curves(student, teacher, images, classes, C, steps=3, xi=1.0, step_on=step_on,
                                batch_images=2)
    reference = _reference_curves(student, teacher, images, classes, steps=3, xi=1.0, step_on=step_on)
    for got, want in zip(batched, reference):
        torch.testing.assert_close(got[:, list(REFERENCE_TARGETS)], want, atol=1e-10, rtol=0)
    assert (batched[0][:, :, -1] != batched[0][:, :, 0]).any()  # the walk moved


def test_transition_curves_refuse_train_mode_and_inference_mode():
    student, teacher, images = _net(0), _net(1), _images(1)
    classes = torch.tensor([0])
    with pytest.raises(ValueError, match="eval mode"):
        transition_curves(student.train(), teacher, images, classes, C, steps=1, xi=1.0)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        transition_curves(student.eval(), teacher, images, classes, C, steps=1, xi=1.0)


def test_agreeing_images_are_seeded_and_agree():
    # linear classifiers: their predictions vary from image to image, unlike an untrained WRN's
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, C))
    teacher, images = _perturbed(student, 0.01), _images(40)
    with torch.no_grad():
        agree = student(images).argmax(1) == teacher(images).argmax(1)
    n = int(agree.sum())
    assert 3 <= n < len(images)
    chosen, classes = agreeing_images(student, teacher, images, n, seed=3, batch_size=7)
    again, _ = agreeing_images(student, teacher, images, n, seed=3, batch_size=40)
    other, _ = agreeing_images(student, teacher, images, n, seed=4)
    assert torch.equal(chosen, again)  # independent of the batch size
    assert sorted(chosen.tolist()) == sorted(other.tolist()) == agree.nonzero().squeeze(1).tolist()
    assert chosen.tolist() != other.tolist()
    torch.testing.assert_close(classes, student(images[chosen]).argmax(1))
    with pytest.raises(UserError, match=r"method\.n_images") as err:
        agreeing_images(student, teacher, images, n + 1, seed=3)
    assert "\n" not in str(err.value)


def test_mte_and_curve_statistics_by_hand():
    p_s = torch.zeros(2, 2, 2)
    p_t = torch.tensor([[[0.1, 0.1], [0.1, 0.1]], [[0.2, 0.4], [0.2, 0.4]]])
    mte, stderr = mean_transition_error(p_s, p_t)
    # per-image means 0.1 and 0.3: mean 0.2, std 0.1414, standard error 0.1414 / sqrt(2) = 0.1
    assert mte == pytest.approx(0.2) and stderr == pytest.approx(0.1)
    mean, err = curve_summary(p_t)
    torch.testing.assert_close(mean, torch.tensor([0.15, 0.25], dtype=torch.float64))
    torch.testing.assert_close(err, torch.tensor([0.05, 0.15], dtype=torch.float64))
    rows = list(csv.DictReader(curves_csv(p_s, p_t).splitlines()))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 2
    assert [float(r["p_teacher"]) for r in rows] == pytest.approx([0.15, 0.25])
    assert [float(r["p_student_stderr"]) for r in rows] == [0.0, 0.0]


# ---------------------------------------------------------------------------- method=abm
def _compose(tmp: Path, overrides: list[str]):
    """The `method=abm` config with its run dir `tmp` (outputs beside it)."""
    return compose_run_config(tmp.parent, ["method=abm", *overrides])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """An untrained WRN-10-1 "teacher" and a "student" close to it, whose model.pt records that teacher;
    a second teacher for overrides. Close weights make the two agree on most digits."""
    root = tmp_path_factory.mktemp("abm_models")
    stats = {"dataset": "digits", "mean": [0.0] * 3, "std": [1.0] * 3}
    teacher = _net(0)
    student = _perturbed(teacher, 0.01)
    paths = {"teacher": root / "teacher.pt", "student": root / "student.pt", "other": root / "other.pt"}
    save_model(teacher, paths["teacher"], method="scratch", **stats)
    save_model(student, paths["student"], method="zero_shot", teacher={"checkpoint": str(paths["teacher"])}, **stats)
    save_model(_net(1), paths["other"], method="scratch", **stats)
    return paths


def test_abm_run_writes_results_curves_plot_and_tensorboard(tmp_path, checkpoints):
    run_dir = tmp_path / "run"
    results = zskt.run.run(_compose(run_dir, [f"student.checkpoint={checkpoints['student']}", "method.k=3",
                                              "method.n_images=4", "method.batch_images=3"]))
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved == results
    assert saved["method"] == "abm" and saved["status"] == "completed"
    assert saved["teacher"]["checkpoint"] == str(checkpoints["teacher"])  # recorded in the student's model.pt
    assert saved["student_checkpoint"] == saved["model"] == str(checkpoints["student"])
    assert (saved["k"], saved["xi"], saved["n_images"], saved["step_on"]) == (3, 1.0, 4, "student")
    assert 0.0 < saved["mte"] < 1.0 and saved["mte_stderr"] >= 0.0
    assert 0.0 <= saved["test_acc"] <= 100.0 and saved["teacher"]["test_acc"] is not None

    with open(run_dir / "transition_curves.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [int(r["k"]) for r in rows] == [0, 1, 2]
    assert all(0.0 <= float(r[c]) <= 1.0 for r in rows for c in ("p_student", "p_teacher"))

    png = run_dir / "transition_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(png).shape
    assert height > 100 and width > 100

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert "abm/transition_curves" in events.Tags()["images"]
    assert events.Scalars("abm/mte")[0].value == pytest.approx(saved["mte"], abs=1e-6)


def test_abm_teacher_override_and_the_student_against_itself(tmp_path, checkpoints):
    cfg = _compose(tmp_path / "run", [f"student.checkpoint={checkpoints['student']}",
                                      f"teacher.checkpoint={checkpoints['student']}", "method.k=2",
                                      "method.n_images=3", "method.step_on=teacher"])
    results = zskt.run.run(cfg)
    assert results["teacher"]["checkpoint"] == str(checkpoints["student"])
    assert results["step_on"] == "teacher"
    assert results["mte"] == 0.0


def test_too_few_agreeing_images_exit_2_with_one_line(tmp_path, checkpoints, capsys):
    cfg = _compose(tmp_path / "run", [f"student.checkpoint={checkpoints['other']}",
                                      f"teacher.checkpoint={checkpoints['teacher']}", "method.n_images=100000"])
    with pytest.raises(SystemExit) as exit_info:
        zskt.run.run(cfg)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("zskt: error:")]
    assert len(errors) == 1 and "lower method.n_images" in errors[0]


def test_abm_needs_a_student_checkpoint(tmp_path, checkpoints, capsys):
    cfg = _compose(tmp_path / "run", [f"teacher.checkpoint={checkpoints['teacher']}"])
    with pytest.raises(SystemExit) as exit_info:
        zskt.run.run(cfg)
    assert exit_info.value.code == 2
    assert "student.checkpoint" in capsys.readouterr().err

