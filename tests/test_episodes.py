"""Episodes for in-context continual learning: determinism, the layout (queries never show their answer, every
asked item was demonstrated with that answer), the ACL and current-task loss masks, clear errors, and the data
module that serves them to `hope fit` (padding, resumable position)."""

import dataclasses

import pytest
import torch

from hope.data.episodes import EpisodeConfig, EpisodeGenerator, EpisodeSet
from hope.lit.datamodule import TextDataModule
from hope.tokenizer import Tokenizer

TOKENIZER = Tokenizer.default()


def generator(**options) -> EpisodeGenerator:
    return EpisodeGenerator(EpisodeConfig(**options), TOKENIZER)


def lines(tokens: list[int], newline: list[int]) -> list[tuple[int, list[int]]]:
    """(start, tokens) of each newline-terminated line after BOS."""
    out, start = [], 1
    for p in range(1, len(tokens)):
        if tokens[p - len(newline) + 1 : p + 1] == newline:
            out.append((start, tokens[start : p + 1]))
            start = p + 1
    return out


def test_episodes_are_a_function_of_seed_split_and_index():
    g = generator()
    assert g.episode(3, "train") == generator().episode(3, "train")
    assert g.episode(3, "train").tokens != g.episode(4, "train").tokens
    assert g.episode(3, "train").tokens != g.episode(3, "val").tokens
    assert g.episode(3).tokens != generator(seed=1).episode(3).tokens


@pytest.mark.parametrize("kind", ["words", "facts"])
def test_every_query_asks_a_demonstrated_item_and_hides_its_answer(kind):
    g = generator(kind=kind, n_tasks=4, items_per_task=3, demos_per_task=5, queries_per_task=2)
    for index in range(5):
        episode = g.episode(index)
        shown: dict[tuple, int] = {}  # prompt tokens -> label id, from the demonstrations read so far
        queries = iter(episode.queries)
        for start, line in lines(episode.tokens, g.newline):
            body = line[: -len(g.newline)]
            if body[-len(g.unknown) :] == g.unknown:  # a query
                query = next(queries)
                prompt = tuple(body[: -len(g.unknown)])
                assert query.position == start + len(prompt) - 1
                assert shown[prompt] == g.label_ids[query.answer]  # the answer is the demonstrated label
                assert episode.labels[query.position] == g.label_ids[query.answer]  # scored (ACL)
            else:
                assert body[-1] in g.label_ids
                shown[tuple(body[:-1])] = body[-1]
        assert next(queries, None) is None
        counts = {}
        for q in episode.queries:
            counts[q.after, q.task] = counts.get((q.after, q.task), 0) + 1
        assert counts == {(i, j): 2 for i in range(4) for j in range(i + 1)}  # every seen task after every task
        assert sum(label != -100 for label in episode.labels) == len(episode.queries)


def test_current_objective_masks_the_backward_terms_of_the_same_tokens():
    acl, current = generator().episode(0), generator(objective="current").episode(0)
    assert acl.tokens == current.tokens and acl.queries == current.queries
    scored = [q for q in current.queries if current.labels[q.position] != -100]
    assert scored == [q for q in acl.queries if q.task == q.after]
    assert sum(label != -100 for label in current.labels) == len(scored)


def test_facts_tasks_use_distinct_relations():
    g = generator(kind="facts", n_tasks=3)
    text = TOKENIZER.decode(g.episode(0).tokens)
    assert len({line.split()[2] for line in text.splitlines() if line.strip()}) == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "poems"}, "data.episodes.kind='poems' is unknown"),
        ({"objective": "bwt"}, "data.episodes.objective='bwt' is unknown"),
        ({"demos_per_task": 2}, "data.episodes.demos_per_task=2 < items_per_task=4"),
        ({"queries_per_task": 5}, "data.episodes.queries_per_task=5 > items_per_task=4"),
        ({"n_labels": 1}, "data.episodes.n_labels=1 must be in 2..26"),
        ({"kind": "facts", "n_tasks": 9}, "data.episodes.n_tasks=9: kind='facts' has 8 relations"),
        ({"n_tasks": 0}, "data.episodes.n_tasks=0 must be >= 1"),
    ],
)
def test_bad_options_are_clear(options, message):
    with pytest.raises(ValueError, match=message):
        EpisodeConfig(**options)


def test_episode_set_pads_and_refuses_episodes_longer_than_seq_len():
    items = EpisodeSet(generator(), "val", 4, seq_len=256)
    batch = items[0]
    assert batch["input_ids"].shape == batch["labels"].shape == (256,)
    n = len(generator().episode(0, "val").tokens)
    assert (batch["labels"][n:] == -100).all() and (batch["input_ids"][n:] == TOKENIZER.eos_id).all()
    with pytest.raises(ValueError, match=r"more than data.seq_len=64. Fix: raise data.seq_len"):
        EpisodeSet(generator(), "val", 4, seq_len=64).check_lengths()


def test_datamodule_serves_episodes_and_resumes_at_the_same_batch():
    config = EpisodeConfig(n_train=40, n_val=8)
    data = TextDataModule(seq_len=256, batch_size=4, episodes=config)
    data.setup("fit")
    assert data.hparams["episodes"] == dataclasses.asdict(config)  # plain types in checkpoints
    loader = iter(data.train_dataloader())
    first, second = next(loader), next(loader)
    assert first["input_ids"].shape == first["labels"].shape == (4, 256)
    assert ((first["labels"] != -100).sum(1) == 24).all()  # 4 + 8 + 12 query answers per episode
    val = next(iter(data.val_dataloader()))
    assert torch.equal(val["input_ids"][0], data.val_blocks[0]["input_ids"])
    data.advance()
    resumed = TextDataModule(seq_len=256, batch_size=4, episodes=config)
    resumed.load_state_dict(data.state_dict())
    resumed.setup("fit")
    assert torch.equal(next(iter(resumed.train_dataloader()))["input_ids"], second["input_ids"])
    changed = TextDataModule(seq_len=256, batch_size=4, episodes=dataclasses.replace(config, objective="current"))
    with pytest.raises(ValueError, match="data settings changed since the checkpoint: episodes"):
        changed.load_state_dict(data.state_dict())
