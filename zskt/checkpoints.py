"""The portable `model.pt` format, safe loading of any checkpoint, and the Lightning checkpoint IO.

`model.pt` is a plain dict (loadable with `torch.load(..., weights_only=True)`):
`{"format": "zskt-wrn-1", "arch": {"depth", "width", "num_classes"}, "dataset", "mean",
"std", "method", "teacher": {...} or None, "state_dict"}`. Raw WRN state dicts of the
original repositories load too (`zskt.models.original_keys`).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from zskt.errors import UserError
from zskt.io import atomic_torch_save
from zskt.models.original_keys import infer_arch, to_zskt_state_dict
from zskt.models.wide_resnet import WideResNet

MODEL_FORMAT = "zskt-wrn-1"


def save_model(model: WideResNet, path: str | os.PathLike, *, dataset: str, mean, std, method: str,
               teacher: dict | None = None) -> None:
    """Save a trained WRN with everything needed to use it elsewhere without extra flags."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_torch_save(
        {
            "format": MODEL_FORMAT,
            "arch": model.arch,
            "dataset": dataset,
            "mean": [float(x) for x in mean],
            "std": [float(x) for x in std],
            "method": method,
            "teacher": teacher,
            "state_dict": state,
        },
        path,
    )


def read_checkpoint(path: str | os.PathLike, allow_unsafe: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` with every failure turned into a one-line `UserError`.

    A file that needs arbitrary unpickling (pickled classes or functions, which can run any
    code while loading) is refused unless `allow_unsafe` (`checkpoint.allow_unsafe=true`).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_unsafe)
    except pickle.UnpicklingError as err:
        if allow_unsafe or "unsupported global" not in str(err).lower():  # not refused for a class it names
            hint = "" if allow_unsafe else ", or pass checkpoint.allow_unsafe=true if it was pickled unusually and you trust it"
            raise UserError(f"checkpoint {path} is truncated or corrupt (it does not unpickle): "
                            f"re-create or re-download it{hint}") from None
        refused = next((line.strip() for line in str(err).splitlines() if "global" in line.lower()),
                       "it holds more than tensors and plain containers")
        raise UserError(f"checkpoint {path} needs arbitrary unpickling to load ({refused[:160]}): re-save it as a "
                        "plain state dict, or pass checkpoint.allow_unsafe=true if you trust whoever made it") from None
    except (AttributeError, ImportError) as err:  # unsafe loading of classes that are gone
        raise UserError(f"checkpoint {path} refers to code that is not installed ({err}): "
                        "re-save it as a plain state dict") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"checkpoint {path} is truncated or corrupt ({first[:160]}): re-create or re-download it") from None


def load_model(path: str | os.PathLike, expect: dict | None = None,
               allow_unsafe: bool = False) -> tuple[WideResNet, dict]:
    """Load a WRN from our `model.pt` or an original repository's raw state dict.

    Returns the model and its metadata (`arch`, and for our files `dataset`, `mean`,
    `std`, `method`, `teacher`). `expect` (any of depth/width/num_classes) is checked
    against the file; a mismatch is a one-line `UserError`. `allow_unsafe`: see `read_checkpoint`.
    """
    raw = read_checkpoint(path, allow_unsafe)
    if isinstance(raw, dict) and raw.get("format") == MODEL_FORMAT:
        meta = {k: v for k, v in raw.items() if k != "state_dict"}
        state = raw["state_dict"]
    elif isinstance(raw, dict):
        for wrapper in ("state_dict", "model_state_dict", "model", "student_state_dict"):
            if isinstance(raw.get(wrapper), dict):
                raw = raw[wrapper]
                break
        if not all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise UserError(f"checkpoint {path} holds no WRN state dict: pass a model.pt or a *-dict.pth file")
        state = to_zskt_state_dict(raw)
        meta = {"arch": infer_arch(state), "dataset": None, "mean": None, "std": None, "method": None, "teacher": None}
    else:
        raise UserError(f"checkpoint {path} holds a {type(raw).__name__}, not a state dict: pass a model.pt or a *-dict.pth file")

    arch = meta["arch"]
    for key, value in (expect or {}).items():
        if value is not None and arch.get(key) != value:
            raise UserError(
                f"checkpoint {path} is a WRN-{arch['depth']}-{arch['width']} with {arch['num_classes']} classes, "
                f"but {key}={value} was asked for: fix the config or pass the matching checkpoint"
            )
    model = WideResNet(arch["depth"], arch["width"], arch["num_classes"])
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise UserError(f"checkpoint {path} does not fit a WRN-{arch['depth']}-{arch['width']}: "
                        f"{str(err).splitlines()[-1].strip()[:160]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise UserError(
            f"checkpoint {path} does not fit a WRN-{arch['depth']}-{arch['width']}: "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:2]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]})"
        )
    return model, meta


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO (which already saves atomically), reading a resumed checkpoint
    safely: `weights_only=True` unless `allow_unsafe`, and a damaged file as one line."""

    def __init__(self, allow_unsafe: bool = False) -> None:
        super().__init__()
        self.allow_unsafe = allow_unsafe

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict:
        # on the CPU: Lightning moves the state to the device as it restores it
        return read_checkpoint(path, self.allow_unsafe)
