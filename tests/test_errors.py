"""Bad input, table-driven: every case exits with status 2 and one line on stderr that says what
to change, and writes nothing to the run's outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zskt.run
from zskt_test_helpers import cli, write_image_folder
from zskt.checkpoints import save_model
from zskt.errors import UserError
from zskt.models import Generator, WideResNet


class NotAStateDict:
    """Unpickling this needs the class itself: a file only `weights_only=False` can load."""

    def __init__(self) -> None:
        self.weights = torch.zeros(2)


def make_input(tmp: Path, kind: str) -> Path:
    """The bad (or good) file or folder a case points at."""
    path = tmp / "inputs" / kind
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "corrupt.pt":
        path.write_bytes(b"\x00not a checkpoint")
    elif kind in ("three_classes.pt", "truncated.pt", "wrn.pt"):
        save_model(WideResNet(10, 1, 3 if kind == "three_classes.pt" else 10), path, dataset="x", mean=[0] * 3,
                   std=[1] * 3, method="scratch")
        if kind == "truncated.pt":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "generator.pt":
        torch.save(Generator().state_dict(), path)
    elif kind == "unsafe.pt":
        torch.save({"model": NotAStateDict()}, path)
    elif kind == "empty_dir":
        path.mkdir()
    elif kind == "a_file":
        path.write_text("a file where a folder should be")
    elif kind == "folder_empty_class":
        write_image_folder(path)
        (path / "train" / "d").mkdir()
        (path / "test" / "d").mkdir()
    elif kind == "folder_not_an_image":
        write_image_folder(path)
        (path / "train" / "a" / "notes.png").write_text("not an image")
    elif kind == "folder_40px":
        write_image_folder(path, size=40)
    elif kind == "folder_truncated_jpeg":
        write_image_folder(path)
        jpeg = path / "train" / "b" / "cut.jpg"
        Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(jpeg)
        jpeg.write_bytes(jpeg.read_bytes()[:200])
    elif kind == "folder_class_in_train_only":
        write_image_folder(path)
        write_image_folder(path / "extra", classes=("d",))
        (path / "extra" / "train" / "d").rename(path / "train" / "d")
    elif kind == "text.pt":
        path.write_text("not a checkpoint, a note\n")
    else:
        raise ValueError(kind)
    return path


# (overrides, expected text of the one line); {name} is replaced by the path make_input(name) builds
BAD_RUNS = [
    (["student.depth=17"], "depth 17 is invalid"),
    (["student.width=0"], "width 0 is invalid"),
    (["dataset.m=1000"], "larger than the smallest class"),
    (["dataset.m=-2"], "dataset.m=-2 is invalid"),
    (["dataset.m=2.5"], "dataset.m=2.5 is invalid"),
    (["dataset.m=ten"], "dataset.m='ten' is invalid"),
    (["method.budget_scale=-1"], "budget_scale=-1"),
    (["dataset=cifar10", "dataset.download=false", "dataset.root=/nonexistent"], "CIFAR-10 not found"),
    (["dataset=svhn", "dataset.download=false", "dataset.root={empty_dir}"], "SVHN not found"),
    (["dataset=image_folder"], "dataset.root must be set"),
    (["dataset=image_folder", "dataset.root={empty_dir}"], "must hold train/<class>/*"),
    (["dataset=image_folder", "dataset.root={folder_empty_class}"], "hold no images"),
    (["dataset=image_folder", "dataset.root={folder_not_an_image}"], "notes.png is not a readable image"),
    (["dataset=image_folder", "dataset.root={folder_40px}"], "dataset.resize=true"),
    (["dataset=image_folder", "dataset.root={folder_truncated_jpeg}"], "cut.jpg is not a readable image"),
    (["dataset=image_folder", "dataset.root={folder_class_in_train_only}"], "are in"),
    (["method=evaluate", "student.checkpoint=/nonexistent.pt"], "does not exist"),
    (["method=evaluate", "student.checkpoint={corrupt.pt}"], "is not a PyTorch checkpoint"),
    (["method=evaluate", "student.checkpoint={truncated.pt}"], "truncated or corrupt"),
    (["method=evaluate", "student.checkpoint={three_classes.pt}"], "holds a WRN-10-1 with 3 classes, expected 10 classes"),
    (["method=evaluate", "student.checkpoint={generator.pt}"], "not a Wide ResNet state dict"),
    (["method=evaluate", "student.checkpoint={empty_dir}"], "is a folder, not a file"),
    (["method=kd_at", "dataset.m=2", "teacher.checkpoint={text.pt}"], "is a text file, not a PyTorch checkpoint"),
    (["method.lr=-0.1"], "method.lr=-0.1 is invalid: use a positive number"),
    (["method=zero_shot", "method.grad_clip=0"], "method.grad_clip=0 is invalid"),
    (["method=evaluate", "student.checkpoint={unsafe.pt}"], "checkpoint.allow_unsafe=true"),
    (["method=zero_shot", "teacher.checkpoint={three_classes.pt}"], "num_classes=10"),
    (["method=kd_at", "dataset.m=2", "teacher.depth=16", "teacher.width=2"], "train it with `python -m zskt.run"),
    (["method=finetune", "student.checkpoint={wrn.pt}", "teacher.checkpoint={wrn.pt}"], "add dataset.m=M"),
    (["method=abm", "teacher.checkpoint={wrn.pt}"], "student.checkpoint"),
    (["resume=true"], "resume=true"),
    (["trainer.accelerator=cuda"], "fix trainer.accelerator / trainer.devices"),
    (["trainer.accelerator=cpu", "trainer.devices=0"], "fix trainer.accelerator / trainer.devices"),
    (["paths.output_dir={a_file}/run"], "cannot write to the output dir"),
]


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


@pytest.mark.parametrize(("overrides", "expected"), BAD_RUNS, ids=[" ".join(o) for o, _ in BAD_RUNS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, compose_cfg, overrides, expected):
    names = {o[o.index("{") + 1: o.index("}")] for o in overrides if "{" in o}
    paths = {name: make_input(tmp_path, name) for name in names}
    short = [] if any(o.startswith("method=") for o in overrides) else ["method.epochs=1"]
    for name, path in paths.items():
        overrides = [o.replace("{" + name + "}", str(path)) for o in overrides]
    cfg = compose_cfg(tmp_path, [*short, *overrides])
    with pytest.raises(SystemExit) as exit_info:
        zskt.run.run(cfg)
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("zskt: error: ") and expected in err[0], err
    assert ": " in err[0][len("zskt: error: "):]  # what is wrong, then what to change
    assert _files_under(tmp_path / "run") == [] and _files_under(tmp_path / "outputs") == []


def test_allow_unsafe_loads_what_weights_only_refuses(tmp_path):
    from zskt.checkpoints import read_checkpoint

    path = make_input(tmp_path, "unsafe.pt")
    assert isinstance(read_checkpoint(path, allow_unsafe=True)["model"], NotAStateDict)


BAD_COMMAND_LINES = [
    (["dataset=foo"], "unknown dataset 'foo': choose one of cifar10, cifar100, digits, image_folder, svhn"),
    (["method=foo"], "unknown method 'foo': choose one of"),
    (["trainer.nope=1"], "Could not override 'trainer.nope'"),
    (["student.depth"], "fix the override"),
    (["seed=0,1"], "seed=0,1 lists several values, a sweep: add -m"),
    (["seed=0,1", "dataset=foo"], "unknown dataset 'foo'"),  # the rest still checked
]


@pytest.mark.parametrize(("args", "expected"), BAD_COMMAND_LINES, ids=[" ".join(a) for a, _ in BAD_COMMAND_LINES])
def test_unknown_options_and_keys_are_one_line(args, expected):
    # checked before Hydra starts (zskt.run's __main__), so Hydra's multi-line report never shows
    with pytest.raises(UserError) as raised:
        zskt.run.check_overrides(args)
    message = str(raised.value)
    assert "\n" not in message and expected in message, message


def test_a_sweep_without_m_passes_where_a_preset_makes_the_run_a_multirun():
    # the paper presets set hydra.mode=MULTIRUN: Hydra sweeps `experiment=<preset> seed=0,1` without -m
    zskt.run.check_overrides(["experiment=paper_miniature", "seed=0,1", "miniature_job=zero_shot,kd_at_m1"])
    zskt.run.check_overrides(["-m", "method=kd_at,scratch", "seed=0,1"])
    with pytest.raises(UserError, match="unknown miniature_job 'nope"):
        zskt.run.check_overrides(["experiment=paper_miniature", "seed=0,1", "miniature_job=nope"])


def test_the_command_line_turns_them_into_exit_2_before_writing_anything(tmp_path):
    done = cli(tmp_path, *BAD_COMMAND_LINES[0][0], "hydra.run.dir=run")
    assert done.returncode == 2
    err = [line for line in done.stderr.splitlines() if line.strip()]
    assert err == [f"zskt: error: {BAD_COMMAND_LINES[0][1]}"], err
    assert not (tmp_path / "run").exists()
