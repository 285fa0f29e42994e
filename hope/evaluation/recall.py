"""Long-context recall: needle-in-a-haystack retrieval and multi-query associative recall (MQAR).

Needle in a haystack (passkey retrieval, Mohtashami & Jaggi 2023; RULER's single-needle variants): a fact (the
needle) is hidden at a relative ``depth`` of ``length`` tokens of irrelevant text (the hay), and a question at the
end asks for it. Kinds:

- ``passkey``: "The pass key is 71432. Remember it. 71432 is the pass key." ... "What is the pass key? The pass
  key is" -> " 71432" (5 digits).
- ``number``: "One of the special magic numbers for {key} is: 3815502." -> the 7-digit number.
- ``word``: "One of the special magic words for {key} is: {word}." -> the (made-up) word.

Hay is ``default`` (files of the default corpus's training split, i.e. Python source) or ``generated`` (the
passkey paper's repeated filler: "The grass is green. The sky is blue. ..."). ``length`` counts every token of the
prompt before the answer.

Multi-query associative recall (Zoology, Arora et al. 2023): ``n_pairs`` "key: value" lines, then every key again
in a shuffled order, each followed by its value; each value is a query.

Scoring is exact match of the answer under greedy decoding: the answer counts when each of its tokens is the
model's argmax given the prompt and the answer tokens before it (teacher-forced, which is the same as greedy
decoding of ``len(answer)`` tokens, in one forward pass). Inputs longer than the model's window: with
``state="carry"`` the tokens before the last window are read into the model's recurrent state (what Titans/HOPE
memories are for); a Transformer++ has none, so it only sees the last window either way; ``state="reset"``
drops them for every model (the context-window-only reference).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from hope.data.sources import default_corpus_files, is_validation
from hope.dynamic import DynamicConfig
from hope.evaluation.retention.tasks import encode_pair
from hope.evaluation.scoring import continuation_token_scores, rolling_windows, score_windows
from hope.online import TTLConfig, learning, learning_settings
from hope.tokenizer import Tokenizer

KINDS = ("passkey", "number", "word")
INTRO = "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it.\n"
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
_SYLLABLES = ["ba", "ko", "ri", "tu", "mel", "zan", "po", "ve", "lin", "dor", "sa", "qui", "fe", "no", "gar", "te"]


def pseudo_word(rng: random.Random) -> str:
    """A random three-syllable nonsense word (keys and values of the ``number``/``word`` needles)."""
    return "".join(rng.choice(_SYLLABLES) for _ in range(3))


def needle_and_question(kind: str, rng: random.Random) -> tuple[str, str, str]:
    """``(needle sentence, question ending right before the answer, answer)`` for one sample."""
    if kind == "passkey":
        v = str(rng.randint(10000, 99999))
        return f" The pass key is {v}. Remember it. {v} is the pass key. ", "What is the pass key? The pass key is", v
    key = pseudo_word(rng)
    if kind == "number":
        v = str(rng.randint(1000000, 9999999))
        return (
            f" One of the special magic numbers for {key} is: {v}. ",
            f"What is the special magic number for {key}? The special magic number for {key} is:",
            v,
        )
    if kind == "word":
        v = pseudo_word(rng)
        return (
            f" One of the special magic words for {key} is: {v}. ",
            f"What is the special magic word for {key}? The special magic word for {key} is:",
            v,
        )
    raise ValueError(f"unknown needle kind {kind!r}; choose from {KINDS}")


def hay_tokens(tokenizer: Tokenizer, n_tokens: int, hay: str = "default", seed: int = 0) -> list[int]:
    """At least ``n_tokens`` tokens of hay: default-corpus training files in a seeded order, or the filler."""
    if hay == "generated":
        unit = tokenizer.encode(FILLER, bos=False)
        return (unit * (n_tokens // len(unit) + 1))[:n_tokens]
    if hay != "default":
        raise ValueError(f"hay={hay!r}: choose 'default' or 'generated'")
    files = [p for rel, p in default_corpus_files() if not is_validation(rel, 0.01)]
    random.Random(seed).shuffle(files)
    tokens: list[int] = []
    for path in files:
        tokens += tokenizer.encode(path.read_text(encoding="utf-8", errors="replace") + "\n", bos=False)
        if len(tokens) >= n_tokens:
            break
    return tokens[:n_tokens]


def needle_sample(
    tokenizer: Tokenizer, hay: list[int], kind: str, length: int, depth: float, rng: random.Random
) -> tuple[list[int], list[int]] | None:
    """``(prompt tokens, answer tokens)`` with ``length`` prompt tokens, or ``None`` if ``length`` is too short."""
    needle, question, answer = needle_and_question(kind, rng)
    intro = ([tokenizer.bos_id] if tokenizer.bos_id is not None else []) + tokenizer.encode(INTRO, bos=False)
    needle_ids = tokenizer.encode(needle, bos=False)
    query, answer_ids = encode_pair(tokenizer, "\n" + question, " " + answer)
    n_hay = length - len(intro) - len(needle_ids) - len(query)
    if n_hay < 1:
        return None
    offset = rng.randint(0, max(len(hay) - n_hay, 0))
    piece = hay[offset : offset + n_hay]
    at = round(depth * len(piece))
    return intro + piece[:at] + needle_ids + piece[at:] + query, answer_ids


@dataclass
class Reading:
    """How the recall tests read a prompt: forward passes of ``window`` tokens (None: the model's max_seq_len); with
    ``carry`` the tokens before the last window go into the model's recurrent state, without it they are dropped.
    ``seed`` fixes every needle, key and value; ``progress`` shows progress bars. ``ttl`` / ``dynamic``: the model
    learns while it reads each prompt (``hope.online``; every token scored before it is learned from), starting
    afresh at every prompt."""

    window: int | None = None
    carry: bool = True
    seed: int = 0
    progress: bool = True
    ttl: TTLConfig | None = None
    dynamic: DynamicConfig | None = None


@torch.no_grad()
def evaluate_needles(
    model: nn.Module,
    tokenizer: Tokenizer,
    kinds: Sequence[str],
    lengths: Sequence[int],
    depths: Sequence[float],
    samples: int,
    hay: str,
    reading: Reading,
) -> dict:
    """Exact-match accuracy per kind, length and depth (``samples`` needles each)."""
    window, seed = reading.window, reading.seed
    hay_ids = hay_tokens(tokenizer, 2 * max(lengths), hay, seed)
    by_kind: dict = {}
    total = len(kinds) * len(lengths) * len(depths) * samples
    with tqdm(total=total, desc="needles", disable=not reading.progress, dynamic_ncols=True) as bar:
        for kind in kinds:
            by_kind[kind] = {}
            for length in lengths:
                by_depth, logprobs, token_hits = {}, [], []
                for depth in depths:
                    rng = random.Random(f"{seed}/{kind}/{length}/{depth}")
                    hits = 0
                    for _ in range(samples):
                        sample = needle_sample(tokenizer, hay_ids, kind, length, depth, rng)
                        if sample is None:
                            raise ValueError(f"length {length} is too short for a {kind} needle and its question")
                        prompt, answer = sample
                        if not reading.carry:
                            prompt = prompt[-(window + 1 - len(answer)) :]
                        lp, greedy = continuation_token_scores(model, prompt, [answer], window=window)[0]
                        hits += bool(greedy.all())
                        logprobs.append(float(lp.sum()))
                        token_hits.append(float(greedy.float().mean()))
                        bar.update()
                    by_depth[str(depth)] = hits / samples
                by_kind[kind][str(length)] = {
                    "accuracy": sum(by_depth.values()) / len(by_depth),
                    "by_depth": by_depth,
                    "token_accuracy": sum(token_hits) / len(token_hits),
                    "answer_logprob": sum(logprobs) / len(logprobs),
                    "samples": samples * len(depths),
                }
    return {"kinds": list(kinds), "lengths": list(lengths), "depths": list(depths), "hay": hay, "by_kind": by_kind}


def associative_sample(tokenizer: Tokenizer, n_pairs: int, rng: random.Random) -> tuple[list[int], list[list[int]]]:
    """``(tokens, for each query the target indices of its value)`` for one MQAR sequence.

    Lines are encoded piece by piece (``key:``, `` value``, newline) so the value tokens are known exactly; with
    the default tokenizer (digits split, no dummy prefix) this is also how the whole text would be tokenized.
    """
    keys: list[str] = []
    while len(keys) < n_pairs:
        k = pseudo_word(rng)
        if k not in keys:
            keys.append(k)
    values = {k: str(rng.randint(100, 999)) for k in keys}
    newline = tokenizer.encode("\n", bos=False)
    tokens = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    tokens += tokenizer.encode("Remember these pairs.", bos=False) + newline

    def line(key: str) -> tuple[list[int], list[int]]:
        return tokenizer.encode(f"{key}:", bos=False), tokenizer.encode(f" {values[key]}", bos=False)

    for k in keys:
        key_ids, value_ids = line(k)
        tokens += key_ids + value_ids + newline
    tokens += tokenizer.encode("Now recall them.", bos=False) + newline
    queries, targets = list(keys), []
    rng.shuffle(queries)
    for k in queries:
        key_ids, value_ids = line(k)
        tokens += key_ids
        targets.append(list(range(len(tokens) - 1, len(tokens) - 1 + len(value_ids))))  # target i is tokens[i+1]
        tokens += value_ids + newline
    return tokens, targets


@torch.no_grad()
def evaluate_associative(
    model: nn.Module, tokenizer: Tokenizer, pairs: Sequence[int], samples: int, reading: Reading
) -> dict:
    """Per ``n_pairs``: share of queries whose value is recalled exactly (greedy), over ``samples`` sequences."""
    by_pairs = {}
    for n in tqdm(pairs, desc="associative recall", disable=not reading.progress, dynamic_ncols=True):
        rng = random.Random(f"{reading.seed}/mqar/{n}")
        hits = token_hits = count = n_tokens = length = 0
        for _ in range(samples):
            tokens, targets = associative_sample(tokenizer, n, rng)
            length = len(tokens)
            scored = score_windows(model, tokens, rolling_windows(len(tokens), reading.window), carry=reading.carry)
            hits += sum(bool(scored.greedy[t].all()) for t in targets)
            token_hits += sum(int(scored.greedy[t].sum()) for t in targets)
            count += len(targets)
            n_tokens += sum(len(t) for t in targets)
        by_pairs[str(n)] = {
            "accuracy": hits / count,
            "token_accuracy": token_hits / n_tokens,
            "queries": count,
            "context_tokens": length,
        }
    return {"pairs": list(pairs), "by_pairs": by_pairs}


def evaluate_recall(
    model: nn.Module,
    tokenizer: Tokenizer,
    kinds: Sequence[str] = KINDS,
    lengths: Sequence[int] = (256, 512, 1024, 2048),
    depths: Sequence[float] = (0.1, 0.5, 0.9),
    samples: int = 4,
    hay: str = "default",
    pairs: Sequence[int] = (4, 16, 64),
    pair_samples: int = 4,
    reading: Reading | None = None,
) -> dict:
    """Both recall tests (``kinds`` empty skips the needles, ``pairs`` empty the associative recall); returns the
    report dict (accuracy tables)."""
    reading = reading or Reading()
    reading = dataclasses.replace(reading, window=reading.window or model.config.max_seq_len)
    if reading.window > model.config.max_seq_len:
        raise ValueError(f"window={reading.window} exceeds the model's max_seq_len={model.config.max_seq_len}")
    if reading.ttl is not None and reading.ttl.consolidate:
        raise ValueError("ttl.consolidate: recall learns each prompt afresh (a consolidated needle would leak)")
    started = time.perf_counter()
    was_training = model.training
    model.eval()
    report = {
        "window": reading.window,
        "state": "carry" if reading.carry else "reset",
        "seed": reading.seed,
        **learning_settings(reading.ttl, reading.dynamic),
    }
    with learning(model, reading.ttl, reading.dynamic) as reader:
        if kinds:
            report["needle"] = evaluate_needles(reader, tokenizer, kinds, lengths, depths, samples, hay, reading)
        if pairs:
            report["associative"] = evaluate_associative(reader, tokenizer, pairs, pair_samples, reading)
    model.train(was_training)
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report
