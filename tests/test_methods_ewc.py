"""EWC: the penalty is 0 at the anchor and grows (quadratically) with the distance; Fisher and anchor follow tasks."""

import torch

from hope.continual.methods import EWC
from hope.continual.methods.ewc import diagonal_fisher
from tests.test_finetune_params import random_batch, snapshot, tiny_model, train_steps


def consolidated():
    model, method = tiny_model(), EWC(lam=10.0, fisher_blocks=4)
    batch = random_batch(0, batch_size=4)
    method.consolidate(model, batch["input_ids"], batch["labels"])
    return model, method


def test_penalty_zero_at_anchor_and_growing_with_distance():
    model, method = consolidated()
    assert method.penalty(model).item() == 0.0
    direction = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    anchor = snapshot(model)
    penalties = []
    for scale in (1e-3, 2e-3, 4e-3):
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(anchor[name] + scale * direction[name])
        penalties.append(method.penalty(model).item())
    assert 0 < penalties[0] < penalties[1] < penalties[2]
    assert abs(penalties[1] / penalties[0] - 4) < 1e-2 and abs(penalties[2] / penalties[1] - 4) < 1e-2  # quadratic


def test_fisher_is_mean_squared_gradient():
    model = tiny_model()
    batch = random_batch(1, batch_size=2)
    fisher = diagonal_fisher(model, batch["input_ids"], batch["labels"], batch_size=1)
    assert all((f >= 0).all() for f in fisher.values()) and fisher["head.weight"].sum() > 0
    assert set(fisher) == {n for n, p in model.named_parameters() if p.requires_grad}


def test_penalty_holds_weights_nearer_the_anchor():
    free_model, free = tiny_model(), EWC(lam=0.0)
    held_model, held = consolidated()
    held.lam = 1e4
    anchor = snapshot(held_model)
    train_steps(free, free_model, steps=3)
    train_steps(held, held_model, steps=3)

    def distance(model):
        return sum(((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters()).item()

    assert distance(held_model) < distance(free_model)


def test_end_task_accumulates_fisher_and_moves_anchor():
    model, method = consolidated()
    first = {n: f.clone() for n, f in method._fisher.items()}
    train_steps(method, model, steps=1)
    batch = random_batch(5, batch_size=4)
    method.end_task(model, batch["input_ids"], batch["labels"])
    assert all((method._fisher[n] >= first[n]).all() for n in first)  # gamma = 1: a sum
    assert method.penalty(model).item() == 0.0  # the anchor is the model after the task
    state = method.state_dict()
    restored = EWC(lam=10.0)
    restored.load_state_dict(state)
    assert restored.penalty(model).item() == 0.0 and set(restored._fisher) == set(first)
