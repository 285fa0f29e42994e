"""``hope generate``: sample text from a checkpoint, printed as it is drawn (as ``litgpt generate``).

    hope generate --checkpoint runs/debug/checkpoints/last.ckpt --prompt "def fibonacci(n):" --max_new_tokens 60
    hope generate --checkpoint runs/hope/ --prompt_file question.txt --temperature 0.7 --top_p 0.9 --seed 1
    hope generate --checkpoint runs/hope/checkpoints/last.ckpt --prompt "..." --ttl      # HOPE: learn from the prompt

The prompt is encoded as a training document starts (BOS, then its tokens); generation stops after
``max_new_tokens`` or at EOS. ``--ttl`` reads the prompt (and the generated tokens) through
``hope.ttl.TestTimeLearner``: the CMS levels of a HOPE model learn from it in context while generating
(``hope.generate`` explains how). Sampling: ``temperature`` 0 is greedy; ``top_k`` keeps the k most likely tokens
and ``top_p`` the smallest set whose probability (at the temperature) reaches p; with both, the k most likely of
that set. Tokens come from ``hope.generate.generate_stream`` as they are drawn.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from jsonargparse import CLI

from hope.evaluation.loading import load_for_eval
from hope.generate import generate_stream
from hope.ttl import TestTimeLearner

__all__ = ["generate_text", "main"]


def _prompt_text(prompt: str | None, prompt_file: str | None) -> str:
    if (prompt is None) == (prompt_file is None):
        raise ValueError("give exactly one of --prompt TEXT and --prompt_file PATH.")
    if prompt_file is None:
        return prompt
    path = Path(prompt_file)
    if not path.is_file():
        raise FileNotFoundError(f"--prompt_file={prompt_file!r} does not exist.")
    return path.read_text(encoding="utf-8")


def generate_text(
    *,
    checkpoint: str,
    prompt: str | None = None,
    prompt_file: str | None = None,
    max_new_tokens: int = 100,
    temperature: float = 0.8,
    top_k: int | None = 50,
    top_p: float | None = None,
    seed: int = 1234,
    ttl: bool = False,
    ttl_lr: float | None = None,
    tokenizer: str | None = None,
    device: str | None = None,
    stream: bool = True,
) -> str:
    """Generate a continuation of a prompt with a checkpoint and print it as it is sampled.

    Args:
        checkpoint: a ``hope fit``/``hope finetune`` ``.ckpt``, a ``.safetensors`` file, or a run directory (its
            newest checkpoint).
        prompt: the text to continue.
        prompt_file: a UTF-8 file holding the prompt (instead of ``prompt``).
        max_new_tokens: tokens to generate at most (generation also stops at EOS).
        temperature: softmax temperature; 0 is greedy.
        top_k: sample among the k most likely tokens (None: all).
        top_p: nucleus sampling: among the most likely tokens whose probability reaches p (None: off).
        seed: seed of the sampler.
        ttl: HOPE models: the CMS levels learn from the prompt and the generated text while generating
            (``hope.ttl.TestTimeLearner``).
        ttl_lr: with ``ttl``, the in-context step size of every level (default: the model's ``cms_inner_lr``).
        tokenizer: sentencepiece ``.model``; default: the checkpoint's (its ``config.yaml``), else the default.
        device: ``cpu``, ``cuda``, ...; default: CUDA if available.
        stream: print each piece of text as soon as it is sampled (else all at the end).
    """
    for name, value, ok in [
        ("max_new_tokens", max_new_tokens, max_new_tokens >= 1),
        ("temperature", temperature, temperature >= 0),
        ("top_k", top_k, top_k is None or top_k >= 1),
        ("top_p", top_p, top_p is None or 0 < top_p <= 1),
    ]:
        if not ok:
            raise ValueError(
                f"--{name}={value} is out of range (max_new_tokens >= 1, temperature >= 0, top_k >= 1, 0 < top_p <= 1)."
            )
    text = _prompt_text(prompt, prompt_file)
    model, tok = load_for_eval(checkpoint, tokenizer, device)
    learner = TestTimeLearner(model, inner_lr=ttl_lr) if ttl else None
    idx_BT = torch.tensor([tok.encode(text)], dtype=torch.long, device=next(model.parameters()).device)
    generator = torch.Generator(idx_BT.device).manual_seed(seed)
    new: list[int] = []
    shown = ""
    if stream:
        print(text, end="", flush=True)
    drawn = generate_stream(model, idx_BT, max_new_tokens, temperature, top_k, None, generator, learner, top_p)
    for token in drawn:
        if token.item() == tok.eos_id:
            break
        new.append(token.item())
        if stream:  # decode the whole continuation: pieces join differently than they decode one by one
            continuation = tok.decode(new)
            print(continuation[len(shown) :], end="", flush=True)
            shown = continuation
    continuation = tok.decode(new)
    print(continuation[len(shown) :] if stream else text + continuation, flush=True)
    return continuation


def main(argv: Sequence[str] | None = None) -> None:
    """``hope generate ARGS``."""
    CLI(generate_text, args=list(sys.argv[1:] if argv is None else argv), prog="hope generate")
