"""Network families: every supported classifier as student or teacher, attention points by forward
hooks, model.pt with the family, and every method with non-WRN pairs (tiny networks, digits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import zskt.run
from zskt_test_helpers import TEACHER, WRN_GROUPS, TinyNet, cli, compose_run_config
from zskt.checkpoints import load_model, save_model
from zskt.config import zoo_path
from zskt.errors import UserError
from zskt.models.attention_points import AttentionPoints, pair_points
from zskt.models.families import arch_from_config, build_network, default_attention_layers, name_of, slug_of
from zskt.models.size_and_layout import count_parameters
from zskt.models.wide_resnet import WideResNet

FAST_RUN = ["method.batch_size=16", "method.n_student_steps=2", "method.iterations=2", "method.eval_every=2"]
RESNET8_TEACHER = ["teacher=resnet", "teacher.depth=8", "teacher.seed=0"]


def arch(family: str, **values) -> dict:
    return {"family": family, **values, "num_classes": values.pop("num_classes", 10)}


# ---------------------------------------------------------------------------- building
@pytest.mark.parametrize(("depth", "params"), [(18, 11_173_962), (34, 21_282_122)])
def test_cifar_resnets_have_the_benchmarks_parameter_counts(depth, params):
    net = build_network(arch("resnet", depth=depth))
    assert count_parameters(net) == params
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)  # no max-pool at 32x32


@pytest.mark.parametrize(("spec", "sizes"), [
    (arch("resnet", depth=8), [(32, 32), (16, 16), (8, 8)]),
    (arch("resnet", depth=20), [(32, 32), (16, 16), (8, 8)]),
    (arch("resnet", depth=18), [(32, 32), (16, 16), (8, 8), (4, 4)]),
    (arch("vgg", depth=11), [(32, 32), (16, 16), (8, 8), (4, 4)]),
    (arch("vgg", depth=13), [(32, 32), (16, 16), (8, 8), (4, 4)]),
    (arch("wrn", depth=10, width=1), [(32, 32), (16, 16), (8, 8)]),
])
def test_each_family_builds_with_its_default_attention_points(spec, sizes):
    net = build_network({**spec, "num_classes": 100})
    points = AttentionPoints(net, default_attention_layers(spec), "student")
    logits, features = points(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 100)
    assert points.sizes(32) == sizes == [tuple(f.shape[-2:]) for f in features]


def test_thin_resnet_depths_are_6n_plus_2_with_16_32_64_channels():
    net = build_network(arch("resnet", depth=20))
    assert [len(stage) for stage in (net.layer1, net.layer2, net.layer3)] == [3, 3, 3]
    assert [stage[-1].conv2.out_channels for stage in (net.layer1, net.layer2, net.layer3)] == [16, 32, 64]
    assert net.layer2[0].downsample is not None  # option B: a 1x1 conv where the shape changes


def test_hooked_wrn_points_equal_the_wrns_own_group_outputs():
    torch.manual_seed(0)
    net = WideResNet(10, 1, 10).eval()
    x = torch.randn(3, 3, 32, 32)
    logits, features = AttentionPoints(net, WRN_GROUPS, "teacher")(x)
    own_logits, own_features = net(x, return_features=True)
    assert torch.equal(logits, own_logits)
    assert all(torch.equal(a, b) for a, b in zip(features, own_features, strict=True))
    assert net(x).shape == (3, 10)  # a plain forward after capture still works, and records nothing


def test_torchvision_and_custom_networks_build_from_their_config(compose_cfg, tmp_path):
    cfg = compose_cfg(tmp_path, ["student=torchvision", "student.name=mobilenet_v3_small",
                                 "+student.kwargs.dropout=0.1"])
    spec = arch_from_config(cfg.student, 7)
    assert spec == {"family": "torchvision", "name": "mobilenet_v3_small", "kwargs": {"dropout": 0.1}, "num_classes": 7}
    assert build_network(spec)(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert default_attention_layers(spec) is None
    cfg = compose_cfg(tmp_path, ["student=custom", "student._target_=zskt_test_helpers.TinyNet",
                                 "+student.kwargs.width=2"])
    spec = arch_from_config(cfg.student, 5)
    net = build_network(spec)
    assert isinstance(net, TinyNet) and net.head.out_features == 5 and net.stage1[0].out_channels == 2
    assert (name_of(spec), slug_of(spec)) == ("zskt_test_helpers.TinyNet", "custom-zskt_test_helpers.TinyNet")


def test_zoo_names_carry_the_family_and_wrn_names_stay(compose_cfg, tmp_path):
    cfg = compose_cfg(tmp_path, [])
    assert cfg.teacher.checkpoint == zoo_path(cfg.paths.models, "digits", "wrn-40-2", 0)
    assert cfg.teacher.checkpoint.endswith("digits/wrn-40-2-seed0.pt")  # the existing zoo's files keep their names
    for overrides, name in ((["teacher=resnet"], "resnet-34"), (["teacher=vgg", "teacher.depth=13"], "vgg-13"),
                            (["teacher=torchvision", "teacher.name=resnet18"], "torchvision-resnet18")):
        cfg = compose_cfg(tmp_path, overrides)
        assert cfg.teacher.checkpoint.endswith(f"digits/{name}-seed0.pt")
        assert slug_of(arch_from_config(cfg.teacher, 10)) == name


# ---------------------------------------------------------------------------- pairing and bad input
def test_attention_points_that_do_not_pair_are_one_line_naming_both_lists():
    student = AttentionPoints(WideResNet(10, 1, 10), WRN_GROUPS, "student")
    teacher = AttentionPoints(build_network(arch("resnet", depth=18)), ["layer1", "layer2", "layer3", "layer4"], "teacher")
    with pytest.raises(UserError) as err:
        pair_points(student, teacher, 32)
    message = str(err.value)
    assert "\n" not in message and "block3 8x8" in message and "layer4 4x4" in message and "method.beta=0" in message
    # the same counts at other sizes do not pair either
    teacher = AttentionPoints(build_network(arch("resnet", depth=18)), ["layer2", "layer3", "layer4"], "teacher")
    with pytest.raises(UserError, match="layer2 16x16"):
        pair_points(student, teacher, 32)
    teacher = AttentionPoints(build_network(arch("resnet", depth=18)), ["layer1", "layer2", "layer3"], "teacher")
    pair_points(student, teacher, 32)  # the first three stages pair with a WRN's groups


def test_attention_points_the_network_lacks_are_one_line():
    with pytest.raises(UserError, match=r"names 'layer9'.*top-level modules: conv1, bn1, relu, layer1"):
        AttentionPoints(build_network(arch("resnet", depth=8)), ["layer1", "layer9"], "student")
    points = AttentionPoints(build_network(arch("resnet", depth=8)), ["fc"], "teacher")
    with pytest.raises(UserError, match="not a \\(batch, channels, height, width\\) map"):
        points.sizes(32)


@pytest.mark.parametrize(("overrides", "message"), [
    (["student=resnet", "student.depth=19"], "student: ResNet depth 19 is not built: choose one of 8, 18, 20, 32, 34, 56"),
    (["teacher=vgg", "teacher.depth=12"], "teacher: VGG depth 12 is not built: choose one of 11, 13, 16, 19"),
    (["student=torchvision", "student.name=resnet_9000"], "torchvision has no classification model 'resnet_9000'"),
    (["student=custom", "student._target_=no_such_pkg.Net"], "custom network no_such_pkg.Net does not import"),
    (["student=custom", "student._target_=collections.OrderedDict"], "is not an nn.Module class"),
    (["student=wrn", "student.depth=11"], "WRN depth 11 is invalid"),
])
def test_networks_that_cannot_exist_are_one_line_before_anything_is_written(tmp_path, overrides, message):
    cfg = compose_run_config(tmp_path, ["method=scratch", *overrides])
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        zskt.run.execute(cfg)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_cli_refuses_an_unknown_family_and_a_bad_depth_with_exit_2(tmp_path):
    done = cli(tmp_path, "student=densenet")
    assert done.returncode == 2 and "unknown student 'densenet': choose one of custom, resnet, torchvision, vgg, wrn" in done.stderr
    done = cli(tmp_path, "student=resnet", "student.depth=19", "dataset=digits", f"hydra.run.dir={tmp_path / 'r'}")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("zskt: error: student: ResNet depth 19")
    assert not (tmp_path / "r" / "results.json").exists()


# ---------------------------------------------------------------------------- checkpoints
def test_model_pt_records_the_family_and_reloads_without_flags(tmp_path):
    for spec in (arch("resnet", depth=8), arch("vgg", depth=11, num_classes=3),
                 arch("torchvision", name="mobilenet_v3_small", kwargs={}),
                 arch("custom", target="zskt_test_helpers.TinyNet", kwargs={"width": 2})):
        net = build_network(spec)
        save_model(net, tmp_path / "model.pt", arch=spec, dataset="digits", mean=[0] * 3, std=[1] * 3, method="scratch")
        loaded, meta = load_model(tmp_path / "model.pt")
        assert meta["arch"] == spec and type(loaded) is type(net)
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(loaded.eval()(x), net.eval()(x))
    with pytest.raises(UserError, match="holds a zskt_test_helpers.TinyNet with 10 classes, expected family resnet"):
        load_model(tmp_path / "model.pt", expect={"family": "resnet"})


def test_first_format_model_pt_still_loads_as_a_wrn(tmp_path):
    net = WideResNet(10, 1, 10)
    torch.save({"format": "zskt-wrn-1", "arch": {"depth": 10, "width": 1, "num_classes": 10}, "dataset": "digits",
                "mean": [0] * 3, "std": [1] * 3, "method": "scratch", "teacher": None, "state_dict": net.state_dict()},
               tmp_path / "old.pt")
    loaded, meta = load_model(tmp_path / "old.pt")
    assert isinstance(loaded, WideResNet) and meta["arch"] == {"family": "wrn", "depth": 10, "width": 1, "num_classes": 10}


def test_plain_state_dicts_load_with_the_family_given(tmp_path):
    spec = arch("resnet", depth=8)
    net = build_network(spec)
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "resnet8.pth")  # a DDP save
    loaded, meta = load_model(tmp_path / "resnet8.pth", family_arch=spec)
    assert meta["arch"] == spec and torch.equal(loaded.fc.weight, net.fc.weight)
    with pytest.raises(UserError, match="not a Wide ResNet state dict.*name the network's family"):
        load_model(tmp_path / "resnet8.pth")  # no family given: read as a WRN
    with pytest.raises(UserError, match="does not fit a ResNet-20 with 10 classes"):
        load_model(tmp_path / "resnet8.pth", family_arch=arch("resnet", depth=20))
    with pytest.raises(UserError, match="holds a ResNet-8 with 10 classes, expected 100 classes"):
        load_model(tmp_path / "resnet8.pth", family_arch=arch("resnet", depth=8), expect={"num_classes": 100})


# ---------------------------------------------------------------------------- every method, non-WRN pairs
@pytest.fixture(scope="module")
def resnet_zoo(tmp_path_factory) -> Path:
    """A model zoo holding a digits ResNet-8 teacher (seed 0), published by a scratch run."""
    root = tmp_path_factory.mktemp("resnet-zoo")
    done = zskt.run.execute(compose_run_config(root, ["method=scratch", "student=resnet", "student.depth=8",
                                                      "method.epochs=3"]))
    assert done["student"] == {"family": "resnet", "depth": 8, "name": "ResNet-8", "params": 78042}
    assert done["test_acc"] > 60.0
    assert (root / "outputs" / "models" / "digits" / "resnet-8-seed0.pt").is_file()
    return root / "outputs" / "models"


def test_zero_shot_from_a_resnet_teacher_to_a_wrn_student(tmp_path, resnet_zoo):
    done = zskt.run.execute(compose_run_config(tmp_path, ["method=zero_shot", "student.depth=10", *RESNET8_TEACHER,
                                                          f"paths.models={resnet_zoo}", *FAST_RUN]))
    assert done["teacher"]["name"] == "ResNet-8" and done["teacher"]["family"] == "resnet"
    assert done["student"]["name"] == "WRN-10-1" and done["status"] == "completed"
    _, meta = load_model(tmp_path / "run" / "model.pt")
    assert meta["teacher"]["name"] == "ResNet-8" and meta["arch"]["family"] == "wrn"


def test_modified_zero_shot_finetune_and_abm_with_a_resnet_student(tmp_path, teacher_zoo):
    zoo = [*TEACHER, f"paths.models={teacher_zoo}"]  # the session's WRN-10-2 teacher
    done = zskt.run.execute(compose_run_config(tmp_path, ["method=zero_shot_modified", "student=resnet",
                                                          "student.depth=8", *zoo, *FAST_RUN], tmp_path / "zs"))
    assert done["student"]["name"] == "ResNet-8" and done["teacher"]["name"] == "WRN-10-2"
    student = str(tmp_path / "zs" / "model.pt")
    # the default student config is a WRN: the model.pt's own family wins
    done = zskt.run.execute(compose_run_config(tmp_path, ["method=finetune", f"student.checkpoint={student}",
                                                          "dataset.m=2", "method.epochs=1", *zoo], tmp_path / "ft"))
    assert done["student"]["name"] == "ResNet-8" and "start_test_acc" in done
    done = zskt.run.execute(compose_run_config(tmp_path, ["method=abm", f"student.checkpoint={student}", "method.k=2",
                                                          "method.n_images=2", *zoo], tmp_path / "abm"))
    assert done["n_targets"] == 9 and 0.0 <= done["mte"] <= 1.0


def test_kd_at_between_families_pairs_points_or_says_how(tmp_path, resnet_zoo):
    common = ["method=kd_at", *RESNET8_TEACHER, f"paths.models={resnet_zoo}", "dataset.m=2", "method.epochs=1"]
    with pytest.raises(UserError, match=r"do not pair: student \[features.2 32x32, .*features.20 4x4\] vs teacher "
                                        r"\[layer1 32x32, layer2 16x16, layer3 8x8\]"):
        zskt.run.execute(compose_run_config(tmp_path, [*common, "student=vgg"], tmp_path / "a"))
    assert not (tmp_path / "a" / "results.json").exists()
    done = zskt.run.execute(compose_run_config(tmp_path, [*common, "student=vgg", "method.beta=0"], tmp_path / "b"))
    assert done["student"]["name"] == "VGG-11" and done["status"] == "completed"
    # the user's own network as the student, its attention points named on the command line
    done = zskt.run.execute(compose_run_config(tmp_path, [
        *common, "student=custom", "student._target_=zskt_test_helpers.TinyNet",
        "student.attention_layers=[stage1,stage2,stage3]"], tmp_path / "c"))
    assert done["student"]["name"] == "zskt_test_helpers.TinyNet"


def test_a_torchvision_teacher_without_attention_points_needs_them_or_beta_0(tmp_path):
    teacher = build_network(arch("torchvision", name="mobilenet_v3_small", kwargs={})).eval()
    path = tmp_path / "mobilenet.pt"
    save_model(teacher, path, arch=arch("torchvision", name="mobilenet_v3_small", kwargs={}), dataset="digits",
               mean=[0] * 3, std=[1] * 3, method="scratch")
    common = ["method=zero_shot", "student.depth=10", f"teacher.checkpoint={path}", *FAST_RUN]
    with pytest.raises(UserError, match="teacher network has no default attention points.*method.beta=0"):
        zskt.run.execute(compose_run_config(tmp_path, common, tmp_path / "a"))
    done = zskt.run.execute(compose_run_config(tmp_path, [*common, "method.beta=0"], tmp_path / "b"))
    assert done["teacher"]["name"] == "mobilenet_v3_small" and done["teacher"]["family"] == "torchvision"
    # and evaluate reloads a custom network's model.pt with no family flags
    done = zskt.run.execute(compose_run_config(tmp_path, ["method=evaluate", f"student.checkpoint={path}"], tmp_path / "c"))
    assert done["student"]["name"] == "mobilenet_v3_small"


def test_a_plain_resnet_state_dict_teacher_loads_with_teacher_resnet(tmp_path, resnet_zoo):
    net, _ = load_model(resnet_zoo / "digits" / "resnet-8-seed0.pt")
    torch.save(net.state_dict(), tmp_path / "resnet8-dict.pth")
    common = ["method=zero_shot", "student=resnet", "student.depth=8", f"teacher.checkpoint={tmp_path / 'resnet8-dict.pth'}",
              *FAST_RUN]
    with pytest.raises(UserError, match="not a Wide ResNet state dict"):
        zskt.run.execute(compose_run_config(tmp_path, common, tmp_path / "a"))
    done = zskt.run.execute(compose_run_config(tmp_path, [*common, "teacher=resnet", "teacher.depth=8"], tmp_path / "b"))
    assert done["teacher"]["name"] == "ResNet-8"
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["teacher"]["checkpoint"].endswith("resnet8-dict.pth")


def test_the_readmes_own_teacher_commands(tmp_path):
    """README "Your own teacher": a plain state dict of the user's class -> evaluate, zero-shot, abm."""
    mine = ["_target_=zskt_test_helpers.TinyNet", "+{}.kwargs.width=8"]
    zskt.run.execute(compose_run_config(tmp_path, ["method=scratch", "student=custom", f"student.{mine[0]}",
                                                   mine[1].format("student"), "method.epochs=3"], tmp_path / "train"))
    trained, _ = load_model(tmp_path / "train" / "model.pt")
    torch.save(trained.state_dict(), tmp_path / "mynet.pth")  # the user's plain state dict
    done = zskt.run.execute(compose_run_config(tmp_path, [
        "method=evaluate", "student=custom", "student._target_=zskt_test_helpers.TinyNet", "+student.kwargs.width=8",
        f"student.checkpoint={tmp_path / 'mynet.pth'}"], tmp_path / "eval"))
    assert done["student"]["name"] == "zskt_test_helpers.TinyNet" and 0 <= done["test_acc"] <= 100
    done = zskt.run.execute(compose_run_config(tmp_path, [
        "method=zero_shot", "teacher=custom", f"teacher.{mine[0]}", mine[1].format("teacher"),
        f"teacher.checkpoint={tmp_path / 'mynet.pth'}", "teacher.attention_layers=[stage1,stage2,stage3]",
        "student.depth=10", "method.iterations=10", "method.eval_every=10", "method.batch_size=32"], tmp_path / "zs"))
    assert done["teacher"]["kwargs"] == {"width": 8} and done["student"]["name"] == "WRN-10-1"
    done = zskt.run.execute(compose_run_config(tmp_path, [
        "method=abm", f"student.checkpoint={tmp_path / 'zs' / 'model.pt'}", "method.k=2", "method.n_images=2"],
        tmp_path / "abm"))
    assert done["teacher"]["name"] == "zskt_test_helpers.TinyNet"  # found through the student's model.pt
