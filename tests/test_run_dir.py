"""The run dir as users and machines damage it: files a resumed run reads back (truncated
last.ckpt, run_config.yaml that is not YAML, a few_shot_indices.json that no longer matches, a
corrupt results.json), a full disk during a save, two runs in one dir, and a teacher that cannot
teach. Each is one line that names the file and what to do, and leaves the rest of the dir alone."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import zskt.run
from zskt_test_helpers import REPO, cli
from zskt_test_helpers import compose_run_config as compose_cfg
from zskt.checkpoints import MODEL_FORMAT, save_model
from zskt.errors import UserError
from zskt.models import WideResNet
from zskt.rundir import RunDirLock
from zskt.validation import check_teacher

SCRATCH = ["method=scratch", "student.depth=10", "dataset.m=5", "method.epochs=3", "method.evaluations=3"]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: its content hash and modification time."""
    return {str(p.relative_to(folder)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("zskt: error: "), "\n".join(err)
    return err[0]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """An uninterrupted tiny few-shot scratch run: the reference a resumed run must match."""
    tmp = tmp_path_factory.mktemp("straight")
    zskt.run.execute(compose_cfg(tmp, SCRATCH))
    return tmp / "run"


# ---------------------------------------------------------------------------- damaged on resume
def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


DAMAGES = {
    "truncated last.ckpt": ("checkpoints/last.ckpt", _truncate, "is truncated or corrupt", "start it again in a new dir"),
    "run_config.yaml not YAML": ("run_config.yaml", lambda p: p.write_text("method: [unclosed\n  : : :\n"),
                                 "is not valid YAML", "start the run again in a new dir"),
    "run_config.yaml not a run's": ("run_config.yaml", lambda p: p.write_text("- a\n- list\n"),
                                    "is not a zskt run config", "restore it"),
    "few_shot_indices.json changed": ("few_shot_indices.json",
                                      lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "indices": [0, 1]})),
                                      "no longer matches the few-shot subset", "restore the data set"),
    "few_shot_indices.json damaged": ("few_shot_indices.json", lambda p: p.write_text('{"indices": '),
                                      "is damaged", "restore the data set"),
    "results.json corrupt": ("results.json", lambda p: p.write_text('{"status": "compl'),
                             "is not valid JSON", "delete it and resume again"),
}


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory) -> Path:
    """A few-shot scratch run stopped after its second checkpoint (no results.json yet)."""
    from zskt_test_helpers import KillAtEpoch, run_with_callbacks

    tmp = tmp_path_factory.mktemp("killed")
    with pytest.raises(RuntimeError, match="simulated kill"):
        run_with_callbacks(tmp, SCRATCH, [KillAtEpoch(2)])
    return tmp / "run"


@pytest.mark.parametrize("damage", list(DAMAGES), ids=list(DAMAGES))
def test_a_damaged_run_dir_is_one_line_and_left_as_it_is(killed_run, capsys, damage):
    name, spoil, what, todo = DAMAGES[damage]
    target = killed_run / name
    original = target.read_bytes() if target.exists() else None
    spoil(target)
    before = snapshot(killed_run)
    try:
        with pytest.raises(SystemExit) as exit_info:
            zskt.run.run(compose_cfg(killed_run.parent, ["resume=true"]))
        assert exit_info.value.code == 2
        line = one_error_line(capsys)
        assert str(target) in line and what in line and todo in line, line
        assert snapshot(killed_run) == before  # nothing in the dir touched, the damaged file included
    finally:
        target.unlink()
        if original is not None:
            target.write_bytes(original)


def test_after_the_damage_is_repaired_the_run_resumes_to_the_same_weights(killed_run, straight):
    # runs after the damage cases (same module fixture): every one left the dir as it found it
    results = zskt.run.execute(compose_cfg(killed_run.parent, ["resume=true"]))
    assert results["status"] == "completed"
    assert all(torch.equal(a, b) for a, b in zip(weights(killed_run).values(), weights(straight).values()))


# ---------------------------------------------------------------------------- a full disk
def _disk_full_on(monkeypatch, what: str) -> None:
    """Make writing `what` ('last.ckpt' from its second save on, 'model.pt', 'results.json') fail
    as a full disk does."""
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    saves = {"n": 0}
    real_save, real_dumps = torch.save, json.dumps

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "pytorch-lightning_version" in obj and what == "last.ckpt":
            saves["n"] += 1
            if saves["n"] >= 2:
                raise full
        if isinstance(obj, dict) and obj.get("format") == MODEL_FORMAT and what == "model.pt":
            raise full
        return real_save(obj, f, *args, **kwargs)

    def dumps(obj, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("status") == "completed" and what == "results.json":
            raise full
        return real_dumps(obj, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(json, "dumps", dumps)


@pytest.mark.parametrize("what", ["last.ckpt", "model.pt", "results.json"])
def test_a_full_disk_stops_the_run_with_one_line_and_resume_continues(tmp_path, capsys, monkeypatch, straight, what):
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        _disk_full_on(patch, what)
        with pytest.raises(SystemExit) as exit_info:
            zskt.run.run(compose_cfg(tmp_path, SCRATCH))
    assert exit_info.value.code == 2
    line = one_error_line(capsys)
    assert "no space left" in line and "resume=true" in line and str(run_dir) in line, line
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)  # whole, and the last good one
    assert last["epoch"] == (0 if what == "last.ckpt" else 2)
    assert not (run_dir / "results.json").exists() and not list(run_dir.rglob("*.tmp"))
    assert (run_dir / "model.pt").exists() == (what == "results.json")

    results = zskt.run.execute(compose_cfg(tmp_path, ["resume=true"]))  # space again
    assert results["status"] == "completed"
    assert all(torch.equal(a, b) for a, b in zip(weights(run_dir).values(), weights(straight).values()))


# ---------------------------------------------------------------------------- two runs in one dir
HOLDER = textwrap.dedent("""
    import sys, time
    from zskt.rundir import RunDirLock
    lock = RunDirLock(sys.argv[1])
    print("locked", flush=True)
    time.sleep(600)
""")


def test_the_lock_is_exclusive_and_released(tmp_path):
    first = RunDirLock(tmp_path)
    with pytest.raises(UserError, match=f"another zskt run is running in {tmp_path}"):
        RunDirLock(tmp_path)
    first.release()
    RunDirLock(tmp_path).release()


def test_a_second_run_in_the_same_dir_refuses_and_a_killed_run_leaves_no_lock(tmp_path):
    """End to end: `python -m zskt.run ... hydra.run.dir=run` while another process holds that
    dir (as a running run does, from its first checks to its end), then that process killed."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"the first run's")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run_dir)
        second = cli(tmp_path, "method=scratch", "dataset=digits", "student.depth=10", "method.epochs=1",
                     "hydra.run.dir=run")
        assert second.returncode == 2, second.stderr[-2000:]
        err = [line for line in second.stderr.splitlines() if line.strip()]
        assert err == [f"zskt: error: another zskt run is running in {run_dir} (it holds the dir's lock): "
                       "wait for it to end, or pass another hydra.run.dir"], err
        hydra_own = (".hydra", "run.log")  # Hydra writes these before zskt starts
        assert {k: v for k, v in snapshot(run_dir).items() if not k.startswith(hydra_own)} == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    RunDirLock(run_dir).release()  # the kernel dropped the killed holder's lock


# ---------------------------------------------------------------------------- a teacher that cannot teach
def _broken_teacher(kind: str) -> WideResNet:
    net = WideResNet(10, 1, 10).eval()
    with torch.no_grad():
        if kind == "nan weights":
            net.fc.weight[0, 0] = float("nan")
        else:  # finite weights, but a negative BN variance: NaN outputs
            net.bn.running_var.fill_(-1.0)
    return net


@pytest.mark.parametrize(("kind", "expected"), [("nan weights", "has non-finite weights (1 tensors, e.g. fc.weight)"),
                                                ("nan outputs", "gives non-finite outputs")])
def test_a_teacher_that_cannot_teach_is_refused(kind, expected):
    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        check_teacher(_broken_teacher(kind), torch.randn(8, 3, 32, 32), "t.pt")
    check_teacher(WideResNet(10, 1, 10).eval(), torch.randn(8, 3, 32, 32), "t.pt")  # a healthy one passes


def test_a_nan_teacher_stops_the_run_before_training(tmp_path, capsys):
    teacher = tmp_path / "teacher.pt"
    save_model(_broken_teacher("nan weights"), teacher, dataset="digits", mean=[0] * 3, std=[1] * 3, method="scratch")
    with pytest.raises(SystemExit) as exit_info:
        zskt.run.run(compose_cfg(tmp_path, ["method=kd_at", "student.depth=10", "dataset.m=2", "method.epochs=1",
                                            f"teacher.checkpoint={teacher}"]))
    assert exit_info.value.code == 2
    line = one_error_line(capsys)
    assert f"teacher {teacher} has non-finite weights" in line and "teacher.checkpoint" in line, line
    assert not (tmp_path / "run").exists() or snapshot(tmp_path / "run") == {}
