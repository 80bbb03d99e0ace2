"""CIFAR-100 on tiny files the tests write in torchvision's format: the source, the datamodule's
100 classes, normalisation and few-shot subsets, the config, and one run end to end."""

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torchvision.datasets import CIFAR100
from zskt_test_helpers import compose_run_config, write_image_folder

import zskt.run
from zskt.checkpoints import load_model
from zskt.data import sources
from zskt.data.datamodule import ImageDataModule
from zskt.data.few_shot import few_shot_indices
from zskt.errors import UserError
from zskt.models import WideResNet
from zskt.models.size_and_layout import count_parameters

CLASSES = 100
TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 1
MEAN, STD = [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar100(root: Path) -> dict[str, np.ndarray]:
    """torchvision's CIFAR-100 python format under `root/cifar-100-python/`: the `train` and `test`
    pickles (`data` as (N, 3072) uint8 rows, `fine_labels`, `coarse_labels`) and the `meta` pickle
    (`fine_label_names`, `coarse_label_names`), with random images, classes in turn. Returns the
    images written, by split."""
    folder = root / CIFAR100.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(100)
    written = {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        n = CLASSES * per_class
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [i % CLASSES for i in range(n)]
        with open(folder / split, "wb") as handle:
            pickle.dump({"filenames": [f"{i}.png" for i in range(n)], "batch_label": split, "data": data,
                         "fine_labels": fine, "coarse_labels": [label // 5 for label in fine]}, handle)
        written[split] = data
    with open(folder / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": [f"fine{i:02d}" for i in range(CLASSES)],
                     "coarse_label_names": [f"coarse{i:02d}" for i in range(CLASSES // 5)]}, handle)
    return written


@pytest.fixture
def cifar100_root(tmp_path, monkeypatch) -> Path:
    """A tiny CIFAR-100 (100 classes x 3 train, x 1 test images) whose checksums torchvision accepts:
    the class's file lists carry the md5s of the files written here instead of the real archive's."""
    root = tmp_path / "cifar100"
    write_cifar100(root)
    folder = root / CIFAR100.base_folder
    monkeypatch.setattr(CIFAR100, "train_list", [["train", _md5(folder / "train")]])
    monkeypatch.setattr(CIFAR100, "test_list", [["test", _md5(folder / "test")]])
    monkeypatch.setattr(CIFAR100, "meta", {**CIFAR100.meta, "md5": _md5(folder / "meta")})
    return root


def test_cifar100_pickles(cifar100_root):
    written = write_cifar100(cifar100_root.parent / "again")  # the same seed: the same images
    train = sources.load_cifar100(str(cifar100_root), "train", download=False)
    test = sources.load_cifar100(str(cifar100_root), "test", download=False)
    assert train.images.shape == (300, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (100, 3, 32, 32) and train.labels.dtype == torch.int64
    assert torch.equal(train.images[7], torch.as_tensor(written["train"][7]).view(3, 32, 32))
    assert torch.equal(test.images[99], torch.as_tensor(written["test"][99]).view(3, 32, 32))
    assert train.labels[:102].tolist() == [*range(100), 0, 1]  # the fine labels, not the 20 coarse ones
    assert torch.equal(torch.bincount(train.labels), torch.full((100,), 3))
    assert train.classes == test.classes == [f"fine{i:02d}" for i in range(100)]


def test_cifar100_checksums_are_checked(tmp_path):
    # torchvision's real md5s: tiny files that do not match them are refused in one line, as missing ones are
    write_cifar100(tmp_path)
    for root in (tmp_path, tmp_path / "empty"):
        with pytest.raises(UserError, match="CIFAR-100 not found under .*dataset.download=true.*cifar-100-python") as err:
            sources.load_cifar100(str(root), "train", download=False)
        assert "\n" not in str(err.value)


def test_cifar100_download_fetches_only_what_is_missing(tmp_path, monkeypatch):
    fetched = []
    monkeypatch.setattr(sources, "load_cifar100", lambda root, split, download: fetched.append((split, download)))
    write_cifar100(tmp_path / "here")
    sources.download("cifar100", str(tmp_path / "here"))
    assert fetched == []
    write_cifar100(tmp_path / "cifar10-only")  # another set's files are not CIFAR-100's
    (tmp_path / "cifar10-only" / CIFAR100.base_folder).rename(tmp_path / "cifar10-only" / "cifar-10-batches-py")
    sources.download("cifar100", str(tmp_path / "cifar10-only"))
    assert fetched == [("train", True), ("test", True)]


def test_datamodule_has_100_classes_and_cifar100_normalisation(cifar100_root):
    dm = ImageDataModule("cifar100", root=str(cifar100_root), download=False, mean=MEAN, std=STD)
    assert dm.num_classes == 100
    assert dm.train_split.images.shape == (300, 3, 32, 32) and dm.test_inputs.shape == (100, 3, 32, 32)
    assert dm.mean == MEAN and dm.std == STD  # the constants, not the tiny set's statistics
    expected = (dm.test_split.images.float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    assert torch.allclose(dm.test_inputs, expected, atol=1e-5)
    images, labels = next(iter(dm.train_dataloader()))
    batch, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert batch.dtype == torch.float32 and batch.shape == (128, 3, 32, 32) and labels.max() < 100


def test_few_shot_subset_of_cifar100(cifar100_root, tmp_path):
    dm = ImageDataModule("cifar100", root=str(cifar100_root), download=False, m=2, subset_seed=3,
                         mean=MEAN, std=STD, output_dir=str(tmp_path / "run"))
    assert dm.num_classes == 100
    assert len(dm.indices) == 200 and len(dm.train_split.labels) == 200
    assert torch.equal(torch.bincount(dm.train_split.labels, minlength=100), torch.full((100,), 2))
    dm.save_subset()
    record = json.loads((tmp_path / "run" / "few_shot_indices.json").read_text())
    assert record["dataset"] == "cifar100" and len(record["indices"]) == 200

    too_many = ImageDataModule("cifar100", root=str(cifar100_root), download=False, m=4, mean=MEAN, std=STD)
    with pytest.raises(UserError, match=r"dataset.m=4 is larger than the smallest class \(3 images\)") as err:
        too_many.setup()
    assert "\n" not in str(err.value)


def test_the_m_limit_follows_the_data():
    # real CIFAR-100 holds 500 train images per class (CIFAR-10: 5000): M = 500 is allowed, 501 is not
    labels = torch.arange(100).repeat(500)
    assert len(few_shot_indices(labels, 500, seed=0)) == 50_000
    with pytest.raises(UserError, match=r"dataset.m=501 is larger than the smallest class \(500 images\): "
                                        r"choose dataset.m <= 500 or dataset.m=all$"):
        few_shot_indices(labels, 501, seed=0)


def test_image_folder_tree_at_the_cifar100_root(tmp_path):
    write_image_folder(tmp_path / "cifar100")
    dm = ImageDataModule("cifar100", root=str(tmp_path / "cifar100"), download=True, mean=MEAN, std=STD)
    dm.prepare_data()  # an ImageFolder tree: nothing to download
    assert dm.num_classes == 3 and dm.train_split.images.shape == (12, 3, 32, 32)


def test_dataset_cifar100_composes(tmp_path):
    cfg = zskt.run.resolve_config(compose_run_config(tmp_path, ["method=kd_at", "dataset=cifar100", "dataset.m=50"]))
    assert cfg.dataset.name == "cifar100" and cfg.dataset.root == "data/cifar100" and cfg.dataset.download
    assert list(cfg.dataset.mean) == MEAN and list(cfg.dataset.std) == STD and cfg.dataset.augment
    assert dict(cfg.recipe) == {"scratch_epochs": 200, "finetune_epochs": 200, "zero_shot_iterations": 80000,
                                "reference_m": 500}
    # few-shot runs stretch the 200 epochs by the full set's 500 images per class over M
    assert cfg.method.full_epochs == 200 and cfg.method.reference_m == 500
    assert cfg.teacher.checkpoint == str(tmp_path / "outputs" / "models" / "cifar100" / "wrn-40-2-seed0.pt")
    scratch = zskt.run.resolve_config(compose_run_config(tmp_path, ["method=scratch", "dataset=cifar100", "dataset.m=50"]))
    module = instantiate(scratch.method, student={"depth": 10, "width": 1, "num_classes": 100}, m=50,
                         channels_last=False, compile=False, _convert_="all")
    assert module.max_epochs == int(200 * 500 / 50)
    zero_shot = zskt.run.resolve_config(compose_run_config(tmp_path, ["method=zero_shot", "dataset=cifar100"]))
    assert zero_shot.method.iterations == 80000


def test_scratch_run_on_cifar100_end_to_end(cifar100_root, tmp_path):
    cfg = compose_run_config(tmp_path, ["method=scratch", "dataset=cifar100", f"dataset.root={cifar100_root}",
                                        "student.depth=10", "student.width=1", "method.epochs=1"])
    results = zskt.run.execute(cfg)  # dataset.download=true: the files are there, nothing is fetched
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written == json.loads(json.dumps(results))
    assert written["status"] == "completed" and written["dataset"] == "cifar100" and written["m"] is None
    assert written["student"] == {"family": "wrn", "depth": 10, "width": 1, "name": "WRN-10-1",
                                  "params": count_parameters(WideResNet(10, 1, 100))}
    assert written["budget"]["epochs"] == 1 and written["budget"]["student_images"] == 300
    assert 0 <= written["test_acc"] <= 100
    model, meta = load_model(tmp_path / "run" / "model.pt", expect={"num_classes": 100})
    assert model.fc.out_features == 100 and meta["dataset"] == "cifar100" and meta["mean"] == MEAN
    assert (tmp_path / "outputs" / "models" / "cifar100" / "wrn-10-1-seed0.pt").is_file()
