"""model.pt round trips, the original repositories' key names, atomic writes, bad files."""

import os
import pickle
import re
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zskt.checkpoints import load_model, save_model
from zskt.io import atomic_write_json
from zskt.errors import UserError
from zskt.models import Generator, WideResNet

STUDY = [(r"^block(\d)\.layer\.", r"block\1.nblockLayer."), (r"\.bn1\.", ".batch_norm1."),
         (r"\.bn2\.", ".batch_norm2."), (r"\.shortcut\.", ".conv_inp."), (r"^bn\.", "batch_norm.")]
AUTHORS = [(r"\.shortcut\.", ".convShortcut."), (r"^bn\.", "bn1.")]


def trained_looking_wrn(depth=16, width=2) -> WideResNet:
    torch.manual_seed(0)
    net = WideResNet(depth, width, 10)
    with torch.no_grad():  # non-trivial BN statistics, so a wrong key map shows in the logits
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def renamed(state: dict, rules) -> dict:
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


@pytest.mark.parametrize(("rules", "wrap"), [(STUDY, None), (AUTHORS, None), (AUTHORS, "state_dict"), (STUDY, "module.")])
def test_original_repositories_state_dicts_load(tmp_path, rules, wrap):
    net = trained_looking_wrn()
    state = renamed(net.state_dict(), rules)
    assert "block2.layer.0.shortcut.weight" not in state  # really renamed
    if wrap == "state_dict":
        state = {"state_dict": state}
    elif wrap == "module.":
        state = {f"module.{k}": v for k, v in state.items()}
    torch.save(state, tmp_path / "wrn-16-2-dict.pth")
    loaded, meta = load_model(tmp_path / "wrn-16-2-dict.pth")
    assert meta["arch"] == {"family": "wrn", "depth": 16, "width": 2, "num_classes": 10}
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(loaded.eval()(x), net(x))


def test_model_pt_round_trip_is_weights_only_loadable(tmp_path):
    net = trained_looking_wrn(10, 1)
    save_model(net, tmp_path / "model.pt", dataset="digits", mean=[0.1] * 3, std=[0.2] * 3, method="scratch",
               teacher={"checkpoint": "t.pt", "depth": 16, "width": 2})
    raw = torch.load(tmp_path / "model.pt", weights_only=True)
    assert raw["arch"] == {"family": "wrn", "depth": 10, "width": 1, "num_classes": 10} and raw["dataset"] == "digits"
    loaded, meta = load_model(tmp_path / "model.pt")
    assert meta["teacher"]["checkpoint"] == "t.pt"
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(loaded.eval()(x), net(x))


def test_bad_checkpoints_are_user_errors(tmp_path):
    net = trained_looking_wrn(10, 1)
    save_model(net, tmp_path / "model.pt", dataset="digits", mean=[0] * 3, std=[1] * 3, method="scratch")
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tmp_path / "model.pt").read_bytes()[:5000])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_model(truncated)
    with pytest.raises(UserError, match="num_classes=100"):
        load_model(tmp_path / "model.pt", expect={"num_classes": 100})
    torch.save({"weights": [1, 2, 3]}, tmp_path / "not_a_wrn.pt")
    with pytest.raises(UserError, match="not a network's state dict"):
        load_model(tmp_path / "not_a_wrn.pt")


def test_atomic_json_leaves_no_temporary_files(tmp_path):
    atomic_write_json({"a": 1}, tmp_path / "results.json")
    atomic_write_json({"a": 2}, tmp_path / "results.json")
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert (tmp_path / "results.json").read_text().strip().endswith("}")


class Pickled:
    """Only `weights_only=False` can rebuild this: a file that needs arbitrary code to load."""


def _write(path: Path, kind: str, real: Path) -> None:
    if kind == "random bytes":
        path.write_bytes(os.urandom(3000))
    elif kind == "text":
        path.write_text("this is a README, not a model\n" * 5)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "a zip, but not torch's")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "list":
        torch.save([torch.zeros(3), 1], path)
    elif kind == "other architecture":
        torch.save(Generator().state_dict(), path)
    elif kind == "other width and classes":
        save_model(WideResNet(16, 2, 100), path, dataset="x", mean=[0] * 3, std=[1] * 3, method="scratch")
    elif kind == "a WRN that does not fit":
        state = WideResNet(10, 1, 10).state_dict()
        state["block1.layer.0.conv1.weight"] = torch.zeros(3, 3)
        torch.save(state, path)
    elif kind == "plain pickle":
        path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    elif kind == "needs code":
        torch.save({"model": Pickled()}, path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "dangling symlink":
        path.symlink_to(path.parent / "gone.pt")
    elif kind == "truncated":
        path.write_bytes(real.read_bytes()[:-100])
    else:
        raise ValueError(kind)


# what is in the file -> what the one line says it is
ANY_FILE = [
    ("random bytes", "is not a PyTorch checkpoint"),
    ("text", "is a text file, not a PyTorch checkpoint"),
    ("empty", "is an empty file"),
    ("zip", "is a zip archive but not a PyTorch checkpoint"),
    ("tensor", "holds a Tensor, not a state dict"),
    ("list", "holds a list of 2, not a state dict"),
    ("other architecture", "not a Wide ResNet state dict"),
    ("other width and classes", "holds a WRN-16-2 with 100 classes, expected 10 classes"),
    ("a WRN that does not fit", "do not fit a WRN-10-1 with 10 classes"),
    ("plain pickle", "plain pickle"),
    ("needs code", "needs arbitrary unpickling"),
    ("directory", "is a directory"),
    ("dangling symlink", "which does not exist"),
    ("truncated", "is truncated or corrupt"),
]


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory) -> Path:
    """A real (tiny) model.pt: WRN-10-1, 10 classes."""
    path = tmp_path_factory.mktemp("real") / "model.pt"
    save_model(trained_looking_wrn(10, 1), path, dataset="digits", mean=[0] * 3, std=[1] * 3, method="scratch")
    return path


@pytest.mark.parametrize(("kind", "expected"), ANY_FILE, ids=[k for k, _ in ANY_FILE])
def test_any_file_as_a_checkpoint_is_one_line_naming_it(tmp_path, real_checkpoint, kind, expected):
    path = tmp_path / "model.pt"
    _write(path, kind, real_checkpoint)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UserError) as raised:
        load_model(path, expect={"num_classes": 10})
    message = str(raised.value)
    assert "\n" not in message and str(path) in message and expected in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written next to it


def _only_user_errors(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        load_model(path, expect={"num_classes": 10})
    except UserError as err:
        assert "\n" not in str(err) and str(path) in str(err)


# deterministic examples and no example database: the same inputs on every machine, nothing written to the tree
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_are_a_user_error(tmp_path, data):
    _only_user_errors(tmp_path / "fuzz.pt", data)


@FUZZ
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_any_truncation_of_a_real_checkpoint_is_a_user_error(tmp_path, real_checkpoint, cut):
    data = real_checkpoint.read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(UserError):  # every proper prefix is damaged: none may load
        load_model(path, expect={"num_classes": 10})


@FUZZ
@given(position=st.floats(0.0, 1.0, exclude_max=True), byte=st.integers(0, 255))
def test_a_flipped_byte_in_a_real_checkpoint_loads_or_is_a_user_error(tmp_path, real_checkpoint, position, byte):
    data = bytearray(real_checkpoint.read_bytes())
    data[int(len(data) * position)] = byte
    _only_user_errors(tmp_path / "flipped.pt", bytes(data))


def test_a_lightning_checkpoint_of_the_wrong_kind_is_refused_on_resume(tmp_path):
    from zskt.rundir import check_last_checkpoint

    torch.save({"state_dict": {}}, tmp_path / "last.ckpt")
    with pytest.raises(UserError, match="not a Lightning training checkpoint.*new dir"):
        check_last_checkpoint(tmp_path / "last.ckpt", allow_unsafe=False)
    (tmp_path / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(UserError, match="truncated or corrupt.*cannot resume"):
        check_last_checkpoint(tmp_path / "last.ckpt", allow_unsafe=False)
