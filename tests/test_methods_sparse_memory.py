"""Product-key memory layer and Sparse Memory Finetuning: exact top-k lookup, TF-IDF ranking, and an update that
touches only the selected slots' values."""

import math

import pytest
import torch

from hope.continual.methods import SparseMemoryFinetune
from hope.continual.params import configure_trainable
from hope.layers.memory_layer import MemoryLayerConfig, ProductKeyMemory, record_background, swap_mlp_for_memory
from tests.test_finetune_params import changed, random_batch, snapshot, tiny_model, train_steps

CONFIG = MemoryLayerConfig(blocks=[1], n_keys=8, heads=2, k=4, key_dim=8)


def memory_model():
    model = tiny_model()
    swap_mlp_for_memory(model, CONFIG)
    return model


def test_product_key_lookup_equals_brute_force_top_k():
    torch.manual_seed(0)
    layer = ProductKeyMemory(16, n_keys=8, heads=2, k=4, key_dim=8)
    x = torch.randn(2, 3, 16)
    slots, weights = layer.lookup(x)
    q = layer.query(x).view(2, 3, 2, 2, 4)
    # the full key of slot i1 * n_keys + i2 is [K1[i1], K2[i2]]: score q1 . K1[i1] + q2 . K2[i2]
    full = (
        torch.einsum("bthd,hnd->bthn", q[..., 0, :], layer.keys[:, 0]).unsqueeze(-1)
        + torch.einsum("bthd,hnd->bthn", q[..., 1, :], layer.keys[:, 1]).unsqueeze(-2)
    ).flatten(-2)
    best, best_slots = full.topk(4, dim=-1)
    assert torch.equal(slots.sort(-1).values, best_slots.sort(-1).values)
    torch.testing.assert_close(weights, best.softmax(-1))
    assert layer(x).shape == x.shape


def test_swap_replaces_the_mlp_and_keeps_the_rest():
    model = memory_model()
    assert isinstance(model.blocks[1].mlp, ProductKeyMemory) and not isinstance(model.blocks[0].mlp, ProductKeyMemory)
    assert model(random_batch()["input_ids"])[0].shape[-1] == model.config.padded_vocab_size
    with pytest.raises(ValueError, match="block 5 does not exist"):
        swap_mlp_for_memory(model, MemoryLayerConfig(blocks=[5]))


def test_tfidf_ranking_and_background():
    layer = memory_model().blocks[1].mlp
    layer.background_batches.fill_(9)
    layer.background_df.zero_()
    layer.background_df[:3] = torch.tensor([9.0, 0.0, 4.0])  # slot 0: in every background batch; slot 1: in none
    counts = torch.zeros(layer.n_slots, dtype=torch.long)
    counts[:3] = torch.tensor([10, 2, 4])
    scores = layer.slot_scores(counts)
    assert scores[0] == 0.0  # log(10 / 10): general slots never rank
    assert math.isclose(scores[1].item(), 2 / 16 * math.log(10 / 1), rel_tol=1e-6)
    assert math.isclose(scores[2].item(), 4 / 16 * math.log(10 / 5), rel_tol=1e-6)
    # slot 1 is read less than slot 2 in this batch but never in the background: it ranks first
    assert layer.slot_mask(counts, 1).nonzero().flatten().tolist() == [1]
    assert layer.slot_mask(counts, 2).nonzero().flatten().tolist() == [1, 2]
    assert layer.slot_mask(counts, 10).sum() == 3  # never more than the accessed slots
    model = memory_model()
    assert record_background(model, [random_batch(i)["input_ids"] for i in range(3)]) == 3
    df = model.blocks[1].mlp.background_df
    assert df.max() <= 3 and df.sum() > 0 and "blocks.1.mlp.background_df" in model.state_dict()


def test_masking_trick_keeps_the_value_and_gates_the_gradient():
    table = torch.randn(5, 3, requires_grad=True)
    mask = torch.tensor([1.0, 0, 1, 0, 0]).unsqueeze(1)
    masked = table * mask + table.detach() - (table * mask).detach()
    assert torch.equal(masked, table)
    masked.sum().backward()
    assert torch.equal(table.grad, mask.expand(5, 3))


def test_sparse_memory_finetuning_touches_only_selected_slots():
    model, method = memory_model(), SparseMemoryFinetune(top_t=5)
    record_background(model, [random_batch(10 + i)["input_ids"] for i in range(4)])
    method.prepare(model)
    assert configure_trainable(model, method.trains) == ["blocks.1.mlp.values.weight"]
    layer, before = model.blocks[1].mlp, snapshot(model)
    optimizer = train_steps(method, model, steps=1, lr=2.0)
    assert isinstance(optimizer, torch.optim.SGD)
    assert changed(model, before) == {"blocks.1.mlp.values.weight"}
    rows = (layer.values.weight != before["blocks.1.mlp.values.weight"]).any(1)
    assert 0 < rows.sum() <= 5 and not (rows & ~layer.last_mask).any()  # only selected slots moved
    assert layer.last_mask.sum() == 5
    assert torch.equal(layer.last_mask, layer.slot_mask(layer.last_counts, 5))
