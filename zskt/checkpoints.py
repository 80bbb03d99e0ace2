"""The portable `model.pt` format, safe loading of any checkpoint, and the Lightning checkpoint IO.

`model.pt` is a plain dict (loadable with `torch.load(..., weights_only=True)`):
`{"format": "zskt-model-2", "arch": {"family", <the family's arguments>, "num_classes"}, "dataset",
"mean", "std", "method", "teacher": {...} or None, "state_dict"}` (`zskt.models.families`: any
network rebuilds from its arch). Files of the first format, "zskt-wrn-1" (an arch without `family`:
a WRN), still load. Raw WRN state dicts of the original repositories load too
(`zskt.models.original_keys`), and raw state dicts of any family given the arch to build.
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
from zskt.models.families import ARCH_KEYS, FAMILIES, build_network, name_of
from zskt.models.original_keys import infer_arch, strip_wrappers, to_zskt_state_dict

MODEL_FORMAT = "zskt-model-2"
MODEL_FORMATS = ("zskt-wrn-1", MODEL_FORMAT)  # the first held WRNs only (an arch without family)


def save_model(model: torch.nn.Module, path: str | os.PathLike, *, dataset: str, mean, std, method: str,
               teacher: dict | None = None, arch: dict | None = None, run: dict | None = None) -> None:
    """Save a trained network with everything needed to use it elsewhere without extra flags.
    `arch`: its description (zskt.models.families); a WideResNet knows its own. `run`: which run
    made it (a model zoo entry records its results.json, accuracy and budget)."""
    if arch is None:
        arch = {"family": "wrn", **model.arch}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_torch_save(
        {
            "format": MODEL_FORMAT,
            "arch": dict(arch),
            "dataset": dataset,
            "mean": [float(x) for x in mean],
            "std": [float(x) for x in std],
            "method": method,
            "teacher": teacher,
            **({"run": run} if run is not None else {}),
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _arch_of(meta: Any) -> dict | None:
    """A model.pt's `arch` entry (with its family) if it is well formed, else None."""
    if not isinstance(meta, dict) or meta.get("family", "wrn") not in FAMILIES or not _is_int(meta.get("num_classes")):
        return None
    arch = {"family": meta.get("family", "wrn"), **{k: v for k, v in meta.items() if k != "family"}}
    for key in ARCH_KEYS[arch["family"]]:  # sizes are integers, names strings, kwargs a dict
        value = arch.get(key, {} if key == "kwargs" else None)
        if not (isinstance(value, dict) if key == "kwargs" else isinstance(value, str) if key in ("name", "target")
                else _is_int(value)):
            return None
    return arch


def _raw_state_dict(path: Path, raw: Any) -> dict:
    """The tensors of a raw state dict (unwrapped from the usual training-script containers)."""
    if not isinstance(raw, dict):
        raise UserError(f"checkpoint {path} holds {_describe(raw)}, not a state dict: pass a model.pt or a *-dict.pth file")
    for wrapper in ("state_dict", "model_state_dict", "model", "student_state_dict"):
        if isinstance(raw.get(wrapper), dict):
            raw = raw[wrapper]
            break
    if not raw or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()):
        raise UserError(f"checkpoint {path} holds {_describe(raw)}, not a network's state dict: "
                        "pass a model.pt or a *-dict.pth file")
    return raw


def load_model(path: str | os.PathLike, expect: dict | None = None, allow_unsafe: bool = False,
               family_arch: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """Load a network from our `model.pt` (any family: its arch is in the file) or a raw state dict.

    Returns the model and its metadata (`arch`, and for our files `dataset`, `mean`, `std`,
    `method`, `teacher`). A raw state dict is a WRN (its size read from the keys, the original
    repositories' names mapped) unless `family_arch`, the arch the command line configures, names
    another family: then that network is built and must take the tensors exactly. `expect` (any of
    family/depth/width/num_classes) is checked against the file; a mismatch is a one-line
    `UserError`, and so is any file that is not such a network (whatever it holds).
    `allow_unsafe`: see `read_checkpoint`.
    """
    path = Path(path)
    raw = read_checkpoint(path, allow_unsafe)
    if isinstance(raw, dict) and raw.get("format") in MODEL_FORMATS:
        meta = {k: v for k, v in raw.items() if k != "state_dict"}
        state, arch = raw.get("state_dict"), _arch_of(raw.get("arch"))
        if arch is None or not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UserError(f"checkpoint {path} is a damaged zskt model.pt (its arch or state_dict entry is not "
                            "what zskt writes): re-create it")
        meta["arch"] = arch
        if not isinstance(meta.get("teacher"), (dict, type(None))):
            meta["teacher"] = None
    else:
        raw = _raw_state_dict(path, raw)
        meta = {"dataset": None, "mean": None, "std": None, "method": None, "teacher": None}
        if family_arch is not None and family_arch.get("family", "wrn") != "wrn":
            state, arch = strip_wrappers(raw), dict(family_arch)
            if isinstance(state.get("fc.weight"), torch.Tensor) and state["fc.weight"].dim() == 2:
                arch["num_classes"] = int(state["fc.weight"].shape[0])  # checked against `expect` below
        else:
            state = to_zskt_state_dict(raw)
            try:
                arch = {"family": "wrn", **infer_arch(state)}
            except UserError:
                raise UserError(f"checkpoint {path} holds {_describe(raw)}: not a Wide ResNet state dict (no "
                                "block1.layer.*, block3.*, fc.* keys): pass a WRN's model.pt or state dict, or name "
                                "the network's family (student=resnet / teacher=vgg / ...)") from None
        meta["arch"] = arch

    held = f"a {name_of(arch)} with {arch['num_classes']} classes"
    for key, value in (expect or {}).items():
        if value is not None and arch.get(key, "wrn" if key == "family" else None) != value:
            wanted = f"{value} classes" if key == "num_classes" else f"{key} {value}"
            raise UserError(f"checkpoint {path} holds {held}, expected {wanted} ({key}={value}): "
                            "fix the config or pass the matching checkpoint")
    try:
        model = build_network(arch)
    except UserError as err:
        raise UserError(f"checkpoint {path} does not describe a network zskt can build ({err})") from None
    try:
        result = model.load_state_dict(state, strict=False)
    except (RuntimeError, ValueError, TypeError) as err:
        raise UserError(f"checkpoint {path} holds tensors that do not fit {held}: "
                        f"{str(err).strip().splitlines()[-1].strip()[:160]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise UserError(
            f"checkpoint {path} does not fit {held}: "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:2]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]}): "
            "pass a checkpoint of this network (or name its family: student=resnet / teacher=vgg / ...)"
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
