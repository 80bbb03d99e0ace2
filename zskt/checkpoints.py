"""The portable `model.pt` format, safe loading of any checkpoint, and the Lightning checkpoint IO.

`model.pt` is a plain dict (loadable with `torch.load(..., weights_only=True)`):
`{"format": "zskt-wrn-1", "arch": {"depth", "width", "num_classes"}, "dataset", "mean",
"std", "method", "teacher": {...} or None, "state_dict"}`. Raw WRN state dicts of the
original repositories load too (`zskt.models.original_keys`).
"""

from __future__ import annotations

import os
import pickle
import warnings
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


EMPTY = "is an empty file"


def _what_it_is(path: Path) -> str | None:
    """Why `path` cannot be a checkpoint file at all ("is a directory", ...); None for a regular file."""
    if path.is_symlink() and not path.exists():
        return f"is a symlink to {os.readlink(path)}, which does not exist"
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return "is a directory, not a checkpoint file"
    if not path.is_file():
        return "is not a regular file"
    if path.stat().st_size == 0:
        return EMPTY
    return None


def _sniff(path: Path) -> tuple[str, bool]:
    """What a file torch.load refused looks like, from its first bytes: (what it is, damaged or foreign)."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return "is truncated or corrupt (a damaged zip archive)", True
        if not any(name.endswith("data.pkl") for name in names):
            return "is a zip archive but not a PyTorch checkpoint (it holds no data.pkl)", False
        return "is truncated or corrupt", True
    if head.startswith(b"\x80"):  # a pickle stream: torch's legacy format, or a plain pickle
        return "is truncated or corrupt, or a plain pickle rather than a torch.save file", True
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = "\x00"
    if all(c.isprintable() or c.isspace() for c in text):
        return "is a text file, not a PyTorch checkpoint", False
    return "is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)", False


NOT_A_CHECKPOINT = "pass a model.pt, a *-dict.pth or a Lightning .ckpt file"


def read_checkpoint(path: str | os.PathLike, allow_unsafe: bool = False,
                    fix: str = "re-create or re-download it") -> Any:
    """`torch.load(path, weights_only=True)` with every failure turned into a one-line `UserError`
    that names the path and what it is; `fix` says what to do about a damaged file.

    A file that needs arbitrary unpickling (pickled classes or functions, which can run any
    code while loading) is refused unless `allow_unsafe` (`checkpoint.allow_unsafe=true`).
    """
    path = Path(path)
    try:
        problem = _what_it_is(path)
    except OSError as err:  # a folder on the way that cannot be searched, a symlink loop
        problem = f"cannot be read ({err.strerror or err})"
    if problem is not None:
        raise UserError(f"checkpoint {path} {problem}: {fix if problem == EMPTY else 'check the path'}")
    try:
        with warnings.catch_warnings():  # torch's notes on odd pickles would break the one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=not allow_unsafe)
    except pickle.UnpicklingError as err:
        refused = next((line.strip() for line in str(err).splitlines() if "unsupported global" in line.lower()), None)
        if allow_unsafe or refused is None:  # not refused for a class it names: damaged, or not torch's
            what, damaged = _sniff(path)
            pickled = "pickle" in what and not allow_unsafe
            hint = " (or pass checkpoint.allow_unsafe=true if it was pickled unusually and you trust it)" if pickled else ""
            raise UserError(f"checkpoint {path} {what}: {fix if damaged else NOT_A_CHECKPOINT}{hint}") from None
        raise UserError(f"checkpoint {path} needs arbitrary unpickling to load ({refused[:160]}): re-save it as a "
                        "plain state dict, or pass checkpoint.allow_unsafe=true if you trust whoever made it") from None
    except (AttributeError, ImportError) as err:  # unsafe loading of classes that are gone
        raise UserError(f"checkpoint {path} refers to code that is not installed ({str(err)[:160]}): "
                        "re-save it as a plain state dict") from None
    except PermissionError as err:
        raise UserError(f"checkpoint {path} cannot be read ({err.strerror}): check its permissions") from None
    except MemoryError:
        raise UserError(f"checkpoint {path} does not fit in memory: {NOT_A_CHECKPOINT}") from None
    except Exception as err:  # noqa: BLE001 - on foreign or damaged bytes torch.load fails with any exception type
        what, damaged = _sniff(path)
        if not damaged:
            raise UserError(f"checkpoint {path} {what}: {NOT_A_CHECKPOINT}") from None
        detail = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise UserError(f"checkpoint {path} {what if '(' in what else f'{what} ({detail})'}: {fix}") from None


def _describe(raw: Any) -> str:
    """A loaded object, for an error message: 'a Tensor', 'a list of 3', 'a dict with keys a, b'."""
    if isinstance(raw, dict):
        keys = ", ".join(str(k)[:30] for k in list(raw)[:4])
        return f"a dict with keys {keys}{', ...' if len(raw) > 4 else ''}" if raw else "an empty dict"
    if isinstance(raw, (list, tuple)):
        return f"a {type(raw).__name__} of {len(raw)}"
    return f"a {type(raw).__name__}"


def _arch_of(meta: Any) -> dict | None:
    """A model.pt's `arch` entry if it is well formed, else None."""
    if not isinstance(meta, dict):
        return None
    arch = {key: meta.get(key) for key in ("depth", "width", "num_classes")}
    if all(isinstance(v, int) and not isinstance(v, bool) for v in arch.values()):
        return arch
    return None


def load_model(path: str | os.PathLike, expect: dict | None = None,
               allow_unsafe: bool = False) -> tuple[WideResNet, dict]:
    """Load a WRN from our `model.pt` or an original repository's raw state dict.

    Returns the model and its metadata (`arch`, and for our files `dataset`, `mean`,
    `std`, `method`, `teacher`). `expect` (any of depth/width/num_classes) is checked
    against the file; a mismatch is a one-line `UserError`, and so is any file that is not
    a WRN (whatever it holds). `allow_unsafe`: see `read_checkpoint`.
    """
    raw = read_checkpoint(path, allow_unsafe)
    if isinstance(raw, dict) and raw.get("format") == MODEL_FORMAT:
        meta = {k: v for k, v in raw.items() if k != "state_dict"}
        state, arch = raw.get("state_dict"), _arch_of(raw.get("arch"))
        if arch is None or not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"checkpoint {path} is a damaged zskt model.pt (its arch or state_dict entry is not "
                            "what zskt writes): re-create it")
        meta["arch"] = arch
        if not isinstance(meta.get("teacher"), (dict, type(None))):
            meta["teacher"] = None
    elif isinstance(raw, dict):
        for wrapper in ("state_dict", "model_state_dict", "model", "student_state_dict"):
            if isinstance(raw.get(wrapper), dict):
                raw = raw[wrapper]
                break
        if not raw or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()):
            raise UserError(f"checkpoint {path} holds {_describe(raw)}, not a WRN state dict: "
                            "pass a model.pt or a *-dict.pth file")
        state = to_zskt_state_dict(raw)
        try:
            arch = infer_arch(state)
        except UserError:
            raise UserError(f"checkpoint {path} holds {_describe(raw)}: not a Wide ResNet state dict (no "
                            "block1.layer.*, block3.*, fc.* keys): pass a WRN's model.pt or state dict") from None
        meta = {"arch": arch, "dataset": None, "mean": None, "std": None, "method": None, "teacher": None}
    else:
        raise UserError(f"checkpoint {path} holds {_describe(raw)}, not a state dict: pass a model.pt or a *-dict.pth file")

    held = f"a WRN-{arch['depth']}-{arch['width']} with {arch['num_classes']} classes"
    for key, value in (expect or {}).items():
        if value is not None and arch.get(key) != value:
            wanted = f"{value} classes" if key == "num_classes" else f"{key} {value}"
            raise UserError(f"checkpoint {path} holds {held}, expected {wanted} ({key}={value}): "
                            "fix the config or pass the matching checkpoint")
    try:
        model = WideResNet(arch["depth"], arch["width"], arch["num_classes"])
    except UserError as err:
        raise UserError(f"checkpoint {path} does not describe a valid WRN ({err}): pass a model.pt or a *-dict.pth file") from None
    try:
        result = model.load_state_dict(state, strict=False)
    except (RuntimeError, ValueError, TypeError) as err:
        raise UserError(f"checkpoint {path} holds tensors that do not fit {held}: "
                        f"{str(err).strip().splitlines()[-1].strip()[:160]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise UserError(
            f"checkpoint {path} does not fit {held}: "
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
