"""model.pt round trips, the original repositories' key names, atomic writes, bad files."""

import re

import pytest
import torch

from zskt.checkpoints import load_model, save_model
from zskt.io import atomic_write_json
from zskt.errors import UserError
from zskt.models import WideResNet

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
    assert meta["arch"] == {"depth": 16, "width": 2, "num_classes": 10}
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(loaded.eval()(x), net(x))


def test_model_pt_round_trip_is_weights_only_loadable(tmp_path):
    net = trained_looking_wrn(10, 1)
    save_model(net, tmp_path / "model.pt", dataset="digits", mean=[0.1] * 3, std=[0.2] * 3, method="scratch",
               teacher={"checkpoint": "t.pt", "depth": 16, "width": 2})
    raw = torch.load(tmp_path / "model.pt", weights_only=True)
    assert raw["arch"] == {"depth": 10, "width": 1, "num_classes": 10} and raw["dataset"] == "digits"
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
    with pytest.raises(UserError, match="no WRN state dict"):
        load_model(tmp_path / "not_a_wrn.pt")


def test_atomic_json_leaves_no_temporary_files(tmp_path):
    atomic_write_json({"a": 1}, tmp_path / "results.json")
    atomic_write_json({"a": 2}, tmp_path / "results.json")
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert (tmp_path / "results.json").read_text().strip().endswith("}")
