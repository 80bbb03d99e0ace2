"""Each supported data source, decoded once into in-memory uint8 tensors.

Small 32x32 datasets fit in memory many times over, so every source becomes
`ImageTensors(images uint8 (N, 3, 32, 32), labels int64 (N,), classes)` and the training
loop augments whole batches on the device instead of decoding and transforming
images one by one in worker processes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from zskt.errors import UserError
from zskt.io import new_folders_removed_on_failure

IMAGE_SIZE = 32


@dataclass
class ImageTensors:
    """A split of a dataset held in memory."""

    images: Tensor  # uint8, (N, 3, 32, 32)
    labels: Tensor  # int64, (N,)
    classes: list[str]


def _from_hwc(array, labels, classes) -> ImageTensors:
    images = torch.as_tensor(array).permute(0, 3, 1, 2).contiguous()
    return ImageTensors(images, torch.as_tensor(labels, dtype=torch.int64), list(classes))


def is_image_folder_tree(root: str | os.PathLike | None) -> bool:
    """True when `root` holds `train/` and `test/` class folders (the ImageFolder layout)."""
    return root is not None and (Path(root) / "train").is_dir() and (Path(root) / "test").is_dir()


# torchvision's CIFAR classes by dataset name, and the name the errors show
CIFAR = {"cifar10": ("CIFAR10", "CIFAR-10"), "cifar100": ("CIFAR100", "CIFAR-100")}
TORCHVISION = (*CIFAR, "svhn")  # the datasets torchvision reads and downloads


def _cifar_class(name: str):
    import torchvision.datasets

    return getattr(torchvision.datasets, CIFAR[name][0])


def _load_cifar(name: str, root: str, split: str, download: bool) -> ImageTensors:
    """CIFAR-10 or CIFAR-100 through torchvision (its python pickles under `root`; CIFAR-100's fine labels)."""
    cls, label = _cifar_class(name), CIFAR[name][1]
    try:
        ds = cls(root, train=split == "train", download=download)
    except RuntimeError as err:
        raise UserError(
            f"{label} not found under {root} ({err}): set dataset.download=true, or point "
            f"dataset.root at torchvision's {cls.base_folder} parent or an ImageFolder tree (train/, test/)"
        ) from None
    except OSError as err:
        raise UserError(
            f"{label} could not be downloaded to {root} ({err}): point dataset.root at a local copy"
        ) from None
    return _from_hwc(ds.data, ds.targets, ds.classes)


def load_cifar10(root: str, split: str, download: bool) -> ImageTensors:
    """CIFAR-10 through torchvision (`cifar-10-batches-py/` under `root`)."""
    return _load_cifar("cifar10", root, split, download)


def load_cifar100(root: str, split: str, download: bool) -> ImageTensors:
    """CIFAR-100 through torchvision (`cifar-100-python/` under `root`), with its 100 fine labels."""
    return _load_cifar("cifar100", root, split, download)


def load_torchvision(name: str, root: str, split: str, download: bool) -> ImageTensors:
    """A split of one of the `TORCHVISION` datasets."""
    loader = {"cifar10": load_cifar10, "cifar100": load_cifar100, "svhn": load_svhn}[name]
    return loader(root, split, download=download)


def download(name: str, root: str) -> None:
    """Fetch torchvision's files of `name` (one of `TORCHVISION`) into `root`, unless they are there already.

    The presence check comes first because torchvision's download path also decodes the whole set,
    which `setup` then does again (and Lightning calls `prepare_data` once more when it fits)."""
    from torchvision.datasets import SVHN

    if name in CIFAR:
        cls = _cifar_class(name)
        files = [Path(root) / cls.base_folder / file for file, _ in cls.train_list + cls.test_list]
    else:
        files = [Path(root) / SVHN.split_list[split][1] for split in ("train", "test")]
    if all(path.is_file() for path in files):  # their checksums are checked when `setup` reads them
        return
    with new_folders_removed_on_failure(root):  # a failed download leaves no empty data/<name> behind
        for split in ("train", "test"):
            load_torchvision(name, root, split, download=True)


def load_svhn(root: str, split: str, download: bool) -> ImageTensors:
    """SVHN cropped digits through torchvision (`train_32x32.mat`, `test_32x32.mat` under `root`)."""
    from torchvision.datasets import SVHN

    try:
        ds = SVHN(root, split=split, download=download)
    except RuntimeError as err:
        raise UserError(
            f"SVHN not found under {root} ({err}): set dataset.download=true, or point dataset.root "
            "at a folder with train_32x32.mat/test_32x32.mat or an ImageFolder tree (train/, test/)"
        ) from None
    except OSError as err:
        raise UserError(f"SVHN could not be downloaded to {root} ({err}): point dataset.root at a local copy") from None
    # torchvision already maps SVHN's label 10 to digit 0
    return ImageTensors(torch.as_tensor(ds.data), torch.as_tensor(ds.labels, dtype=torch.int64), [str(i) for i in range(10)])


def load_digits(split: str, split_seed: int, test_fraction: float) -> ImageTensors:
    """scikit-learn's bundled 8x8 digits, upscaled to 32x32 RGB, with a fixed seeded split."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) * (255.0 / 16.0)
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    n_test = int(round(len(labels) * test_fraction))
    chosen = order[:n_test] if split == "test" else order[n_test:]
    chosen = torch.sort(chosen).values
    return ImageTensors(images[chosen], labels[chosen], [str(i) for i in range(10)])


def _folder_signature(files: list[tuple[str, int]], resize: bool) -> str:
    digest = hashlib.sha1(f"resize={resize}".encode())
    for path, label in files:
        try:
            stat = os.stat(path)
        except OSError as err:  # a dangling symlink, a file removed while we look
            raise UserError(f"{path} cannot be read ({err.strerror}): remove it from the dataset folder") from None
        digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _check_same_classes(root: Path) -> None:
    """Both splits must hold the same class folders (checked before anything is decoded)."""
    from torchvision.datasets.folder import find_classes

    classes = {}
    for split in ("train", "test"):
        try:
            classes[split] = set(find_classes(str(root / split))[0])
        except FileNotFoundError:
            state = "holds no class folders" if (root / split).is_dir() else "does not exist"
            raise UserError(f"{root / split} {state}: dataset.root must hold train/<class>/* and test/<class>/* "
                            "folders") from None
    train, test = classes["train"], classes["test"]
    for here, there, only in (("train", "test", train - test), ("test", "train", test - train)):
        if only:
            raise UserError(f"class folder(s) {', '.join(sorted(only))} are in {root / here} but not in {root / there}: "
                            "every class needs images in both splits (add them, or remove the folder)")


def decode_rgb(path: str) -> Tensor:
    """An image file as a uint8 (3, H, W) tensor: grayscale, palette, RGBA and 16-bit images are
    converted to 8-bit RGB; what torchvision cannot decode (BMP, TIFF, ...) goes through PIL. A
    file that is not an image, or a truncated or corrupt one, is a one-line `UserError` naming it."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import pil_to_tensor, to_dtype

    try:
        image = decode_image(path, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        try:
            with Image.open(path) as pil:
                if pil.mode.startswith("I;16"):  # PIL's RGB conversion would clip 16-bit values at 255
                    image = torch.as_tensor(np.asarray(pil, dtype=np.uint16).astype(np.int32)).expand(3, -1, -1)
                    image = image.float().div(257).round().to(torch.uint8)
                else:
                    image = pil_to_tensor(pil.convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:  # PIL's decoders raise these
            reason = str(err).strip().splitlines()[0][:100] if str(err).strip() else type(err).__name__
            raise UserError(f"{path} is not a readable image ({reason}): remove it from the dataset folder") from None
    if image.dim() == 4:  # an animated image: its first frame
        image = image[0]
    return image if image.dtype == torch.uint8 else to_dtype(image, torch.uint8, scale=True)


def load_image_folder(root: str, split: str, resize: bool = False, cache_dir: str | None = None) -> ImageTensors:
    """An ImageFolder split (`root/<split>/<class>/<image>`), decoded once and cached.

    Images must be 32x32 unless `resize` is true. The decoded tensors are cached under
    `cache_dir` keyed by the files' paths, sizes and times, so a second run starts fast.
    """
    from torchvision.datasets import ImageFolder

    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise UserError(f"{split_dir} does not exist: dataset.root must hold train/<class>/* and test/<class>/* folders")
    _check_same_classes(Path(root))
    try:
        # allow_empty: our own check below names the empty class folders
        folder = ImageFolder(str(split_dir), allow_empty=True)
    except FileNotFoundError as err:
        raise UserError(f"{split_dir} holds no usable images ({err}): every class folder needs image files") from None
    empty = [c for c in folder.classes if folder.targets.count(folder.class_to_idx[c]) == 0]
    if empty:
        raise UserError(f"class folder(s) {', '.join(empty)} under {split_dir} hold no images: add images or remove them")

    cache_file = None
    if cache_dir is not None:
        key = hashlib.sha1(str(split_dir.resolve()).encode()).hexdigest()[:12]
        cache_file = Path(cache_dir) / f"imagefolder-{key}-{split}-{_folder_signature(folder.samples, resize)}.pt"
        if cache_file.is_file():
            try:
                cached = torch.load(cache_file, weights_only=True)
                return ImageTensors(cached["images"], cached["labels"], list(cached["classes"]))
            except Exception:  # noqa: BLE001 - a damaged cache is only a cache: decode the images again
                pass

    images = torch.empty((len(folder.samples), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    for i, (path, _) in enumerate(folder.samples):
        image = decode_rgb(path)
        if tuple(image.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
            if not resize:
                raise UserError(
                    f"{path} is {image.shape[2]}x{image.shape[1]}, not {IMAGE_SIZE}x{IMAGE_SIZE}: "
                    "resize the images or pass dataset.resize=true"
                )
            image = F.interpolate(image[None].float(), size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                                  antialias=True, align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        images[i] = image
    result = ImageTensors(images, torch.as_tensor(folder.targets, dtype=torch.int64), list(folder.classes))
    if cache_file is not None:
        from zskt.io import atomic_torch_save

        atomic_torch_save({"images": result.images, "labels": result.labels, "classes": result.classes}, cache_file)
    return result
