"""On-policy GKD and sequence-level KD train on what their papers define (issue 16 item 1):
GKD's KD term on the student's own samples, scored by the teacher token by token, with alpha and
the CE term on the data like every mode; sequence-level KD on the teacher's greedy outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm4all.distill.args import KDConfig
from llm4all.distill.losses import kd_and_ce
from llm4all.distill.step import on_policy_loss, student_samples, teacher_generations
from tinymodels import build_tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from llm4all.models.load import load

    root = tmp_path_factory.mktemp("policy")
    teacher, _ = load(build_tiny_model(root / "teacher", layers=2, seed=1))
    student, _ = load(build_tiny_model(root / "student", layers=1, seed=2))
    return teacher, student


def data(seed=0, shape=(2, 16)):
    ids = torch.from_numpy(np.random.default_rng(seed).integers(4, 64, size=(shape[0], shape[1] + 1)))
    return ids[:, :-1], ids[:, 1:]


def test_student_samples_continue_the_prefix_and_mask_it(pair):
    _, student = pair
    inputs, _ = data()
    torch.manual_seed(0)
    x, y = student_samples(student, inputs, prefix=5)
    assert x.shape == inputs.shape and torch.equal(x[:, :5], inputs[:, :5])
    assert (y[:, :4] == -100).all() and torch.equal(y[:, 4:-1], x[:, 5:])  # only sampled tokens scored
    torch.manual_seed(0)  # sampled at temperature 1 from the student itself: the same draw again
    again, _ = student_samples(student, inputs, prefix=5)
    assert torch.equal(x, again)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_gkd_scores_the_students_samples_with_the_teacher_and_keeps_ce_on_the_data(pair, alpha):
    teacher, student = pair
    kd = KDConfig(mode="on_policy", on_policy_fraction=1.0, prompt_tokens=5, divergence="jsd",
                  kd_options={"beta": 0.5}, alpha=alpha)
    inputs, labels = data()
    torch.manual_seed(0)
    loss, parts = on_policy_loss(teacher, kd, seed=0)(student, inputs, labels)
    torch.manual_seed(0)
    x, y = student_samples(student, inputs, prefix=5)  # what the loss must have trained on
    with torch.no_grad():
        kd_term, _ = kd_and_ce("jsd", student(input_ids=x).logits, teacher(input_ids=x).logits, y, beta=0.5)
        logits = student(input_ids=inputs).logits
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
    assert parts["on_policy"] == 1.0
    assert parts["kd"] == pytest.approx(kd_term.item(), rel=1e-5)
    if alpha < 1:
        assert parts["ce"] == pytest.approx(ce.item(), rel=1e-5)  # the data's CE, not the samples'
    assert loss.item() == pytest.approx(alpha * kd_term.item() + (1 - alpha) * parts["ce"], rel=1e-5)
    loss.backward()  # differentiable through the student
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    student.zero_grad()


def test_gkd_off_policy_batches_are_the_data(pair):
    teacher, student = pair
    kd = KDConfig(mode="on_policy", on_policy_fraction=0.0, divergence="forward_kl", alpha=0.5)
    inputs, labels = data(1)
    loss, parts = on_policy_loss(teacher, kd, seed=0)(student, inputs, labels)
    with torch.no_grad():
        s_logits, t_logits = student(input_ids=inputs).logits, teacher(input_ids=inputs).logits
        kd_term, ce = kd_and_ce("forward_kl", s_logits, t_logits, labels)
    assert parts["on_policy"] == 0.0 and parts["kd"] == pytest.approx(kd_term.item(), rel=1e-5)
    assert loss.item() == pytest.approx(0.5 * kd_term.item() + 0.5 * ce.item(), rel=1e-5)


def test_sequence_kd_trains_on_the_teachers_greedy_outputs(pair, tmp_path):
    """Kim & Rush 2016: the student's targets are the teacher's beam (here greedy) outputs for data
    prompts, not the data: every cached window is the prompt followed by the teacher's argmax."""
    teacher, _ = pair
    tokens = np.random.default_rng(3).integers(4, 64, size=2000)
    path = tmp_path / "g.pt"
    windows = teacher_generations(teacher, tokens, path, seq_len=12, prompt_tokens=4, n=6, seed=0)
    assert windows.shape == (6, 13)
    starts = np.random.default_rng(0).integers(0, tokens.size - 4 - 1, size=6)
    for row, start in zip(windows, starts, strict=True):
        assert row[:4].tolist() == tokens[start:start + 4].tolist()  # a data prompt
        ids = row[:4][None]
        for _ in range(9):  # then, token by token, the teacher's argmax
            with torch.no_grad():
                nxt = teacher(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], 1)
        assert torch.equal(ids[0], row)
    assert torch.equal(teacher_generations(teacher, tokens, path, 12, 4, 6, 0), windows)  # cached
