"""scripts/precision_compare.py on tiny random networks: fp32 against itself is exact, bf16 is
close but not equal, and the JSON holds what it says."""

from __future__ import annotations

import json

import torch

from scripts import precision_compare
from zskt.checkpoints import save_model
from zskt.models import Generator, WideResNet


def test_fp32_gradient_is_deterministic_and_leaves_the_networks_alone():
    torch.manual_seed(0)
    teacher, student, generator = WideResNet(10, 2).eval(), WideResNet(10, 1), Generator()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    z = torch.randn(4, 100)
    a, loss_a = precision_compare.generator_gradient(teacher, student, generator, z, bf16=False)
    b, loss_b = precision_compare.generator_gradient(teacher, student, generator, z, bf16=False)
    assert a.keys() == dict(generator.named_parameters()).keys()
    assert all(torch.equal(a[k], b[k]) for k in a) and loss_a == loss_b and loss_a <= 0.0  # -KL
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())  # BN statistics untouched


def test_script_writes_the_cosine_of_fp32_and_bf16_gradients(tmp_path):
    torch.manual_seed(1)
    teacher = WideResNet(10, 2)
    path = tmp_path / "teacher.pt"
    save_model(teacher, path, dataset="digits", mean=(0.5,) * 3, std=(0.25,) * 3, method="scratch")
    out = tmp_path / "precision.json"
    results = precision_compare.main(["--teacher", str(path), "--student", "10-1", "--seed", "3",
                                      "--batch-size", "4", "--device", "cpu", "--collapse-steps", "0", "--out", str(out)])
    assert json.loads(out.read_text()) == results
    assert results["seed"] == 3 and results["batch_size"] == 4 and results["device"] == "cpu"
    assert "collapsed" not in results
    for case in ("generator_step_bf16_mixed", "generator_step_generator_fp32", "student_step_bf16",
                 "student_step_bf16_with_attention"):
        # bf16 rounds: the directions agree closely but not exactly
        measured = results["fresh"][case]
        assert 0.9 < measured["cosine"] < 1.0, (case, measured)
        assert measured["relative_difference"] > 0.0 and measured["grad_norm_fp32"] > 0.0
    assert results["fresh"]["generator_step_bf16_mixed"]["per_parameter_cosine"]["bn3.weight"] > 0.9
    assert 0.25 <= results["fresh"]["top_class_share"] <= 1.0  # 4 images: at least one in the top class
    # the attention term adds to the student's loss (250 x a non-negative term)
    fresh = results["fresh"]
    assert fresh["student_step_bf16_with_attention"]["loss_fp32"] > fresh["student_step_bf16"]["loss_fp32"]


def test_a_generator_grown_to_collapse_puts_the_batch_in_one_class():
    torch.manual_seed(2)
    teacher, student, generator = WideResNet(10, 2).eval(), WideResNet(10, 1), Generator()
    z = torch.randn(8, 100)
    collapsed, steps = precision_compare.grow_collapsed(teacher, student, generator, z, max_steps=60, share=0.9, lr=1e-2,
                                                        confidence=0.2)
    assert steps < 60  # it got there
    measured = precision_compare.compare(teacher, student, collapsed, z)
    assert measured["top_class_share"] >= 0.875  # 7 or 8 of the 8 images in one class
    assert measured["teacher_max_prob"] >= 0.2  # and the (random) teacher is as sure as asked
    assert not torch.equal(collapsed.fc.weight, generator.fc.weight)  # the generator passed in is left alone
