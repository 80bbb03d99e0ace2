"""method=dfq: one benchmark epoch of the module under a real Trainer against a plain loop of
docs/method.md#dfq written here (teacher forcing on gradients, as tests/test_reference_loop.py
explains), exact resume, the budget, and the refusal of a teacher without BatchNorm."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import zskt.run
from datafree_helpers import MEAN, STD, build, kd, plain_bn_loss, tensors_equal, tiny_overrides
from test_reference_loop import StepRecorder, assert_same_optimizer, assert_states_match, check_and_follow, \
    optimizer_of, random_teacher, snapshot, trainer
from zskt.checkpoints import load_model
from zskt.config import instantiate_node
from zskt.errors import UserError
from zskt.models import WideResNet
from zskt.models.pixel_generator import PixelGenerator
from zskt_test_helpers import compose_run_config, learning_curve, straight_and_resumed
from datafree_helpers import NORMALIZATION, STUDENT, NoBatchNormNet, tensorboard_view

BATCH, KD_STEPS, ROUNDS, EPOCHS, NOISE_SEED = 8, 2, 2, 3, 5


def test_one_dfq_epoch_follows_the_reference_loop(tmp_path):
    teacher = random_teacher(logit_scale=10.0)
    torch.manual_seed(0)
    module = build(tmp_path, "dfq", teacher, epochs=EPOCHS, epoch_steps=ROUNDS * KD_STEPS, kd_steps=KD_STEPS,
                   batch_size=BATCH, noise_seed=NOISE_SEED)
    recorder = StepRecorder("student", "generator")
    fitted = trainer(callbacks=[recorder])
    fitted.fit(module)
    assert [s.net for s in recorder.steps] == (["generator"] + ["student"] * KD_STEPS) * ROUNDS

    # the reference: FD's Generator (nz 256), Adam 1e-3 (0.5, 0.999) for it; SGD 0.1, momentum 0.9, wd 1e-4 for the
    # student, cosine over the epochs to 2e-4, stepped once per epoch
    student, generator = WideResNet(**STUDENT), PixelGenerator(**NORMALIZATION)
    nets = {"student": student, "generator": generator}
    for name, net in nets.items():
        net.load_state_dict(recorder.initial[name])
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_s = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_s, T_max=EPOCHS, eta_min=2e-4)
    noise = torch.Generator().manual_seed(NOISE_SEED)
    steps = iter(recorder.steps)
    for r in range(ROUNDS):
        # generator step: G train, teacher and student eval; x = (G(z) - mean) / std with G(z) in [0, 1]
        generator.train(), student.eval()
        z = torch.randn(BATCH, 256, generator=noise)
        pixels = generator.conv_blocks(generator.l1(z).view(BATCH, 128, 8, 8))
        assert 0 <= float(pixels.min()) and float(pixels.max()) <= 1
        x = (pixels - MEAN) / STD
        t, bn, _ = plain_bn_loss(teacher, x)
        s = student(x)
        # w_bn L_BN + w_oh CE(t, argmax t) - w_adv KL_1 + w_bal sum pbar log pbar, weights 1, 1, 1, 20
        p_bar = t.softmax(1).mean(0)
        loss_g = bn + F.cross_entropy(t, t.argmax(1)) - kd(s, t, 1.0) + 20.0 * (p_bar * p_bar.log()).sum()
        generator.zero_grad()
        loss_g.backward()
        check_and_follow(next(steps), "generator", nets, opt_g, f"round {r}: generator step")
        # KD_STEPS student steps, each on a fresh batch from G in eval mode, KL at tau = 1
        for k in range(KD_STEPS):
            generator.eval()
            with torch.no_grad():
                x_s = generator(torch.randn(BATCH, 256, generator=noise))
                t_s = teacher(x_s)
            generator.train(), student.train()
            loss_s = kd(student(x_s), t_s, 1.0)
            student.zero_grad()
            loss_s.backward()
            check_and_follow(next(steps), "student", nets, opt_s, f"round {r}: student step {k}")
    sched.step()  # one benchmark epoch

    assert_states_match(nets, {n: snapshot(getattr(module, n)) for n in nets}, "after the epoch")
    assert_states_match({"teacher": teacher}, {"teacher": snapshot(module.teacher)}, "teacher")  # frozen
    cosine = 2e-4 + (0.1 - 2e-4) * (1 + math.cos(math.pi / EPOCHS)) / 2
    assert_same_optimizer(optimizer_of(fitted, module.student), module.student, opt_s, student, cosine)
    assert_same_optimizer(optimizer_of(fitted, module.generator), module.generator, opt_g, generator, 1e-3)
    assert torch.equal(module.noise.get_state(), noise.get_state())  # the same noise, drawn in the same order


def test_the_benchmark_generator_has_its_parameter_count():
    assert sum(p.numel() for p in PixelGenerator(**NORMALIZATION).parameters()) == 2_328_899


def test_budget_scale_and_epochs_count_rounds(tmp_path):
    teacher = random_teacher()
    module = build(tmp_path, "dfq", teacher)
    # 200 epochs x 400 // 10 rounds: 8,000 rounds, 80,000 student steps of 256 images
    assert (module.total_iterations, module.max_epochs, module.rounds_per_epoch) == (8000, 200, 40)
    assert module.budget(1, 0)["student_images"] == 8000 * 10 * 256
    small = build(tmp_path, "dfq", teacher, budget_scale=0.01)
    assert (small.total_iterations, small.max_epochs) == (80, 2)
    tiny = build(tmp_path, "dfq", teacher, budget_scale=1e-5)  # debug=fast: one round
    assert (tiny.total_iterations, tiny.max_epochs, tiny.epoch_batches()) == (1, 1, 1)


def test_a_teacher_without_batchnorm_is_one_line(tmp_path):
    no_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    cfg = compose_run_config(tmp_path, ["method=dfq"])
    with pytest.raises(UserError, match="no BatchNorm layers.*method=dfq") as raised:  # what zskt.run prints as one line
        instantiate_node(cfg.method, "method", student=dict(STUDENT), teacher=no_bn, normalization=NORMALIZATION,
                         channels_last=False, compile=False)
    assert "\n" not in str(raised.value)


def test_resume_is_exact_and_the_teacher_stays_frozen(tmp_path, teacher_zoo):
    overrides = tiny_overrides(teacher_zoo, "dfq", "method.epochs=3", "method.epoch_steps=4", "method.kd_steps=2")
    straight, resumed, a, b = straight_and_resumed(tmp_path, overrides, kill_epoch=2)
    assert a["global_step"] == b["global_step"] == 3 * 2 * (1 + 2)
    for prefix in ("student.", "generator.", "teacher."):
        assert tensors_equal(a["state_dict"], b["state_dict"], prefix), prefix
    assert torch.equal(a["random_streams"]["noise"], b["random_streams"]["noise"])
    assert resumed["test_acc"] == straight["test_acc"] and learning_curve(resumed) == learning_curve(straight)
    assert straight["budget"] == {"iterations": 6, "epochs": 3, "budget_scale": 1.0, "student_images": 6 * 2 * 16}
    assert [e["student_images"] for e in straight["evaluations"]] == [64, 128, 192]
    # TensorBoard counts rounds: the evaluations at rounds 2, 4, 6, the losses at rounds 1 ... 6; sample grids
    scalars, images = tensorboard_view(tmp_path / "a" / "run")
    assert scalars["eval/acc"] == [2, 4, 6] and set(scalars["train/student_loss"]) <= set(range(1, 7))
    assert "generator/samples" in images
    teacher, _ = load_model(teacher_zoo / "digits" / "wrn-10-2-seed0.pt")
    assert tensors_equal(a["state_dict"], {f"teacher.{k}": v for k, v in teacher.state_dict().items()}, "teacher.")


def test_debug_fast_is_a_smoke_test(tmp_path, teacher_zoo):
    results = zskt.run.execute(compose_run_config(tmp_path, tiny_overrides(teacher_zoo, "dfq", "debug=fast")))
    assert results["budget"]["iterations"] == 1 and 0 <= results["test_acc"] <= 100


@pytest.mark.parametrize("method", ["dfq", "deepinversion", "fast"])
def test_a_teacher_without_batchnorm_stops_the_run_with_one_line(tmp_path, capsys, method):
    from zskt.checkpoints import save_model

    spec = {"family": "custom", "target": "datafree_helpers.NoBatchNormNet", "kwargs": {}, "num_classes": 10}
    path = tmp_path / "no-bn.pt"
    save_model(NoBatchNormNet(10), path, arch=spec, dataset="digits", mean=[0.0] * 3, std=[1.0] * 3, method="scratch")
    cfg = compose_run_config(tmp_path, [f"method={method}", "student.depth=10", f"teacher.checkpoint={path}", "debug=fast"])
    with pytest.raises(SystemExit) as stopped:
        zskt.run.run(cfg)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zskt: error: the teacher has no BatchNorm layers")
    assert f"method={method}" in err[0]
