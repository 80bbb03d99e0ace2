"""What a user meets around a run (issue 33): the model zoo is never silently replaced, final files
get the umask's mode, a refused command leaves nothing behind, Ctrl-C and resume, the overrides."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest
import torch

import zskt.run
from zskt_test_helpers import compose_run_config

SCRATCH = ["method=scratch", "student.depth=10", "method.epochs=1"]


def test_zoo_entry_is_kept_unless_overwrite_zoo_and_records_its_run(tmp_path, caplog):
    first = zskt.run.execute(compose_run_config(tmp_path, SCRATCH, run_dir=tmp_path / "first"))
    zoo = tmp_path / "outputs" / "models" / "digits" / "wrn-10-1-seed0.pt"
    entry = torch.load(zoo, weights_only=True)
    assert entry["run"] == {"results": str((tmp_path / "first" / "results.json").resolve()),
                            "test_acc": first["test_acc"], "budget": first["budget"]}
    before = zoo.read_bytes()

    # a second run of the same network and seed (here with another data subset order: seed kept) keeps the entry
    with caplog.at_level(logging.WARNING, logger="zskt"):
        zskt.run.execute(compose_run_config(tmp_path, [*SCRATCH, "method.lr=0.01"], run_dir=tmp_path / "second"))
    assert zoo.read_bytes() == before
    lines = [r.getMessage() for r in caplog.records if "model zoo" in r.getMessage()]
    assert lines == [f"zskt: the model zoo already holds {zoo}: kept it (overwrite_zoo=true replaces it); "
                     f"this run's model is {tmp_path / 'second' / 'model.pt'}"]
    assert (tmp_path / "second" / "model.pt").is_file()

    third = zskt.run.execute(compose_run_config(tmp_path, [*SCRATCH, "overwrite_zoo=true"], run_dir=tmp_path / "third"))
    assert torch.load(zoo, weights_only=True)["run"]["results"] == str((tmp_path / "third" / "results.json").resolve())
    assert torch.load(zoo, weights_only=True)["run"]["test_acc"] == third["test_acc"]


def test_overwrite_zoo_is_validated(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        zskt.run.run(compose_run_config(tmp_path, [*SCRATCH, "overwrite_zoo=1"]))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "zskt: error: overwrite_zoo=1 is invalid: use true or false"


def test_final_files_get_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o022)
    try:
        zskt.run.execute(compose_run_config(tmp_path, SCRATCH))
    finally:
        os.umask(old)
    run = tmp_path / "run"
    files = [run / "model.pt", run / "results.json", run / "run_config.yaml", run / "checkpoints" / "last.ckpt",
             tmp_path / "outputs" / "models" / "digits" / "wrn-10-1-seed0.pt"]
    assert {str(f): oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {str(f): "0o644" for f in files}
