"""State-dict key maps of the original repositories' Wide ResNets onto ours.

The reproducibility study and the paper's authors released raw WRN state dicts whose keys
name the same tensors differently; renaming them lets their published checkpoints load as
zskt WRNs (teachers or students) without conversion scripts.
"""

from __future__ import annotations

import re

from torch import Tensor

from zskt.errors import UserError

# The reproducibility study's WRN: block<g>.nblockLayer.<i>.{batch_norm1,conv1,batch_norm2,conv2,conv_inp}, batch_norm, fc
STUDY_KEYS = [
    (r"^block(\d)\.nblockLayer\.", r"block\1.layer."),
    (r"\.batch_norm1\.", ".bn1."),
    (r"\.batch_norm2\.", ".bn2."),
    (r"\.conv_inp\.", ".shortcut."),
    (r"^batch_norm\.", "bn."),
]
# The paper authors' WRN: block<g>.layer.<i>.{bn1,conv1,bn2,conv2,convShortcut}, bn1, fc
AUTHORS_KEYS = [
    (r"\.convShortcut\.", ".shortcut."),
    (r"^bn1\.", "bn."),
]


def _rename(state: dict[str, Tensor], rules: list[tuple[str, str]]) -> dict[str, Tensor]:
    renamed = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        renamed[key] = value
    return renamed


def strip_wrappers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keys without the prefixes DDP (`module.`) and torch.compile (`_orig_mod.`) add when saved wrapped."""
    return {re.sub(r"^(module\.|_orig_mod\.)", "", k): v for k, v in state.items()}


def to_zskt_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map a raw WRN state dict of ours, the study's or the paper authors' code onto our key names."""
    state = strip_wrappers(state)
    if any(".nblockLayer." in k for k in state):
        return _rename(state, STUDY_KEYS)
    if any(".convShortcut." in k for k in state) or "bn1.weight" in state:
        return _rename(state, AUTHORS_KEYS)
    return state


def infer_arch(state: dict[str, Tensor]) -> dict:
    """Depth, width and class count of a WRN from its (our-named) state dict."""
    try:
        n = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"block1\.layer\.(\d+)\.", k)))
        width = state["block3.layer.0.conv1.weight"].shape[0] // 64
        num_classes = state["fc.weight"].shape[0]
    except (ValueError, KeyError, IndexError, AttributeError):
        raise UserError("the checkpoint is not a Wide ResNet state dict (no block1.layer.*, block3.*, fc.* keys): "
                        "pass a WRN's model.pt or state dict") from None
    return {"depth": 6 * n + 4, "width": int(width), "num_classes": int(num_classes)}
