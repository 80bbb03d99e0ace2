"""Every data source on tiny files the tests write, the datamodule's batches, and data errors."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from torchvision.datasets import CIFAR10, SVHN

from zskt.data import sources
from zskt_test_helpers import write_image_folder
from zskt.data.augment import random_crop_flip
from zskt.data.datamodule import ImageDataModule
from zskt.errors import UserError


def write_cifar_batches(root: Path, n_per_batch: int = 6) -> np.ndarray:
    """torchvision's CIFAR-10 python format: 5 train batches and a test batch of random images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        first = data if first is None else first
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "labels": [i % 10 for i in range(n_per_batch)]}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, handle)
    return first


@pytest.fixture
def no_md5(monkeypatch):
    # the tiny files written here cannot match the real archives' checksums
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(SVHN, "_check_integrity", lambda self: True)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda path, md5=None: Path(path).is_file())


def test_cifar10_pickles(tmp_path, no_md5):
    first = write_cifar_batches(tmp_path)
    train = sources.load_cifar10(str(tmp_path), "train", download=False)
    assert train.images.shape == (30, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[0], torch.as_tensor(first[0]).view(3, 32, 32))
    assert train.labels[:3].tolist() == [0, 1, 2] and train.classes[0] == "c0"
    assert len(sources.load_cifar10(str(tmp_path), "test", download=False).labels) == 6


def test_svhn_mat_files_map_label_10_to_digit_0(tmp_path, no_md5):
    rng = np.random.default_rng(2)
    for split, n in (("train", 12), ("test", 5)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(n, 1)  # SVHN labels 1..10, 10 meaning the digit 0
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
    train = sources.load_svhn(str(tmp_path), "train", download=False)
    assert train.images.shape == (12, 3, 32, 32)
    assert train.labels.tolist()[:10] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    written = scipy.io.loadmat(tmp_path / "train_32x32.mat")["X"]
    assert torch.equal(train.images[1], torch.as_tensor(written[..., 1]).permute(2, 0, 1))


def test_download_fetches_only_what_is_missing(tmp_path, monkeypatch):
    # present files are left to setup's reader (torchvision's download path would decode the set once more)
    fetched = []
    monkeypatch.setattr(sources, "load_cifar10", lambda root, split, download: fetched.append((split, download)))
    write_cifar_batches(tmp_path / "here")
    sources.download("cifar10", str(tmp_path / "here"))
    assert fetched == []
    sources.download("cifar10", str(tmp_path / "empty"))
    assert fetched == [("train", True), ("test", True)]


def test_missing_torchvision_files_without_download(tmp_path):
    with pytest.raises(UserError, match="dataset.download=true"):
        sources.load_cifar10(str(tmp_path), "train", download=False)
    with pytest.raises(UserError, match="dataset.download=true"):
        sources.load_svhn(str(tmp_path), "train", download=False)


def test_image_folder_tree_is_used_for_cifar10_and_cached(tmp_path):
    write_image_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    cifar_mean, cifar_std = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
    dm = ImageDataModule("cifar10", root=str(tmp_path / "data"), download=False, cache_dir=str(cache),
                         mean=cifar_mean, std=cifar_std)
    dm.setup()
    assert dm.train_split.images.shape == (12, 3, 32, 32) and dm.num_classes == 3
    assert dm.mean == cifar_mean  # the configured constants, not the folder's
    cached = list(cache.glob("imagefolder-*.pt"))
    assert len(cached) == 2  # train and test
    again = sources.load_image_folder(str(tmp_path / "data"), "train", cache_dir=str(cache))
    assert torch.equal(again.images, dm.train_split.images)


def test_image_folder_computes_its_own_normalisation(tmp_path):
    write_image_folder(tmp_path)
    dm = ImageDataModule("image_folder", root=str(tmp_path))
    dm.setup()
    pixels = dm.train_split.images.float() / 255
    assert dm.mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert dm.test_inputs.dtype == torch.float32


def test_image_folder_errors(tmp_path):
    write_image_folder(tmp_path / "ok")
    (tmp_path / "ok" / "train" / "empty").mkdir()
    (tmp_path / "ok" / "test" / "empty").mkdir()
    with pytest.raises(UserError):
        sources.load_image_folder(str(tmp_path / "ok"), "train")
    write_image_folder(tmp_path / "big", size=40)
    with pytest.raises(UserError, match="not 32x32.*dataset.resize=true"):
        sources.load_image_folder(str(tmp_path / "big"), "train")
    resized = sources.load_image_folder(str(tmp_path / "big"), "train", resize=True)
    assert resized.images.shape == (12, 3, 32, 32)
    write_image_folder(tmp_path / "bad")
    (tmp_path / "bad" / "train" / "a" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="broken.png is not a readable image"):
        sources.load_image_folder(str(tmp_path / "bad"), "train")
    with pytest.raises(UserError, match="does not exist"):
        ImageDataModule("image_folder", root=str(tmp_path / "nowhere"))


def test_digits_split_is_fixed_and_32x32():
    train, test = sources.load_digits("train", 0, 0.2), sources.load_digits("test", 0, 0.2)
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype == torch.uint8
    assert len(train.labels) + len(test.labels) == 1797 and len(test.labels) == 359
    assert set(train.labels.tolist()) == set(range(10))
    assert torch.equal(sources.load_digits("test", 0, 0.2).labels, test.labels)


def test_batched_crop_and_flip():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    flipped_only = random_crop_flip(images, 0, torch.Generator().manual_seed(0))
    for original, out in zip(images, flipped_only):
        assert torch.equal(out, original) or torch.equal(out, original.flip(-1))
    cropped = random_crop_flip(images, 4, torch.Generator().manual_seed(1))
    assert cropped.shape == images.shape
    # every crop is a window of the reflect-padded image: its rows stay rows of the original
    assert not torch.equal(cropped, images)


def test_datamodule_batches_and_few_shot_subset(tmp_path):
    dm = ImageDataModule("digits", m=3, subset_seed=5, batch_size=8, output_dir=str(tmp_path), augment=True)
    dm.setup()
    assert len(dm.train_split.labels) == 30 and torch.bincount(dm.train_split.labels).tolist() == [3] * 10
    assert not (tmp_path / "few_shot_indices.json").exists()  # written once the run has checked every input
    dm.save_subset()
    recorded = json.loads((tmp_path / "few_shot_indices.json").read_text())
    assert recorded["indices"] == dm.indices.tolist() and (recorded["m"], recorded["seed"]) == (3, 5)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8
    normalised, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert normalised.dtype == torch.float32 and normalised.shape == (8, 3, 32, 32)
    test_images, _ = next(iter(dm.test_dataloader()))
    assert test_images.dtype == torch.float32  # evaluation batches arrive normalised
    with pytest.raises(UserError, match="smallest class"):
        ImageDataModule("digits", m=1000).setup()


# ---------------------------------------------------------------------------- any file in an ImageFolder tree
def _pixels(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


def _spoil(path: Path, kind: str) -> None:
    """Put a bad file at `path` (its suffix chooses the format)."""
    from PIL import Image

    if kind == "not an image":
        path.write_text("a text file named like an image")
    elif kind in ("truncated jpeg", "truncated png"):
        Image.fromarray(_pixels()).save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    elif kind == "corrupt png":
        Image.fromarray(_pixels()).save(path)
        data = bytearray(path.read_bytes())
        data[40:80] = bytes(40)  # inside the image data: the checksum no longer matches
        path.write_bytes(bytes(data))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "dangling symlink":
        path.symlink_to(path.parent / "gone.png")
    else:
        raise ValueError(kind)


@pytest.mark.parametrize(("kind", "name", "expected"), [
    ("not an image", "notes.png", "is not a readable image"),
    ("truncated jpeg", "cut.jpg", "is not a readable image"),
    ("truncated png", "cut.png", "is not a readable image"),
    ("corrupt png", "bad.png", "is not a readable image"),
    ("empty", "empty.jpg", "is not a readable image"),
    ("dangling symlink", "link.png", "cannot be read"),
])
def test_a_bad_file_in_the_tree_is_one_line_naming_it(tmp_path, kind, name, expected):
    write_image_folder(tmp_path, per_class=2)
    bad = tmp_path / "train" / "b" / name
    _spoil(bad, kind)
    with pytest.raises(UserError) as raised:
        sources.load_image_folder(str(tmp_path), "train", cache_dir=str(tmp_path / "cache"))
    message = str(raised.value)
    assert "\n" not in message and str(bad) in message and expected in message, message
    assert "remove it" in message


@pytest.mark.parametrize(("mode", "suffix"), [
    ("L", ".png"), ("LA", ".png"), ("RGBA", ".png"), ("P", ".png"), ("1", ".png"), ("I;16", ".png"),
    ("L", ".jpg"), ("CMYK", ".jpg"), ("L", ".bmp"), ("P", ".bmp"), ("RGBA", ".tif"), ("I;16", ".tif"),
])
def test_grayscale_alpha_palette_and_16_bit_images_become_8_bit_rgb(tmp_path, mode, suffix):
    from PIL import Image

    gray = _pixels(1)[..., 0]
    if mode == "I;16":  # full 16-bit range: 8-bit value v stored as v * 257
        image = Image.fromarray(gray.astype(np.uint16) * 257)
        expected = torch.as_tensor(gray).expand(3, -1, -1)
    else:
        image = Image.fromarray(_pixels(1)).convert(mode)
        expected = None
    path = tmp_path / f"image{suffix}"
    image.save(path)
    if expected is None:  # what PIL makes of the saved file (JPEG: lossy, so the file, not the array)
        expected = torch.as_tensor(np.asarray(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    decoded = sources.decode_rgb(str(path))
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 32, 32)
    assert (decoded.int() - expected.int()).abs().max() <= 1  # JPEG decoders may differ by one level


def test_a_class_in_one_split_only_and_an_empty_split_are_named(tmp_path):
    write_image_folder(tmp_path / "one", per_class=2)
    (tmp_path / "one" / "test" / "c").rename(tmp_path / "one" / "test_c_elsewhere")
    with pytest.raises(UserError, match=r"class folder\(s\) c are in .*one/train but not in .*one/test"):
        ImageDataModule("image_folder", root=str(tmp_path / "one")).setup()
    write_image_folder(tmp_path / "empty", per_class=2)
    for folder in (tmp_path / "empty" / "test").iterdir():
        for file in folder.iterdir():
            file.unlink()
        folder.rmdir()
    with pytest.raises(UserError, match=r"empty/test holds no class folders"):
        ImageDataModule("image_folder", root=str(tmp_path / "empty")).setup()


def test_a_damaged_cache_is_decoded_again(tmp_path):
    write_image_folder(tmp_path / "tree", per_class=2)
    first = sources.load_image_folder(str(tmp_path / "tree"), "train", cache_dir=str(tmp_path / "cache"))
    (cached,) = (tmp_path / "cache").iterdir()
    cached.write_bytes(cached.read_bytes()[:100])
    again = sources.load_image_folder(str(tmp_path / "tree"), "train", cache_dir=str(tmp_path / "cache"))
    assert torch.equal(first.images, again.images)
