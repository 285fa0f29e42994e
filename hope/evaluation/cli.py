"""``hope eval``: perplexity, sequential-task retention, long-context recall, lm-evaluation-harness.

    hope eval perplexity --checkpoint runs/debug/checkpoints/last.ckpt --out runs/eval/ppl.json
    hope eval perplexity --checkpoint runs/hope-debug/checkpoints/last.ckpt --state document --ttl     # learns
    hope eval perplexity --checkpoint ... --state carry --dynamic.lr 1e-4                              # any family
    hope eval retention  --checkpoint ... --suite SyntheticFacts --method EpochFinetune --out_dir runs/eval/facts
    hope eval retention  --checkpoint ... --suite LocalDomains --suite.paths '[a/, b/]' --method TestTimeLearning
    hope eval recall     --checkpoint ... --lengths '[512, 1024, 2048]' --out_dir runs/eval/recall
    hope eval in-context-retention --checkpoint ... --out_dir runs/eval/in-context   # models meta-trained on episodes
    hope eval lm-eval    --model hope --model_args checkpoint=... --tasks wikitext     # lm_eval's own arguments

Each subcommand is a function below; its docstring is its ``--help`` (jsonargparse, as litgpt's CLI). A bare
``--ttl`` or ``--dynamic`` turns learning while reading on with its defaults (``--ttl.inner_lr 1e-3`` and the
like turn it on with those settings).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import CLI, lazy_instance, set_docstring_parse_options
from torch.utils.tensorboard import SummaryWriter

from hope.continual.method import ContinualMethod
from hope.continual.methods import EpochFinetune  # and every method, so --method takes their class names
from hope.data.documents import load_documents, resolve_split
from hope.dynamic import DynamicConfig
from hope.evaluation.in_context import in_context_retention
from hope.evaluation.loading import load_for_eval
from hope.evaluation.perplexity import evaluate_perplexity
from hope.evaluation.plots import draw_perplexity_by_position, draw_recall, save_figure
from hope.evaluation.recall import KINDS, Reading, evaluate_recall
from hope.evaluation.retention import SyntheticFacts, TaskSuite
from hope.evaluation.retention.harness import format_summary, general_perplexity_set, run_retention, write_outputs
from hope.online import TTLConfig

# jsonargparse builds these lazily, so each run gets fresh instances configured from the command line.
DEFAULT_SUITE = lazy_instance(SyntheticFacts)
DEFAULT_METHOD = lazy_instance(EpochFinetune)


def perplexity(
    *,
    checkpoint: str,
    source: str = "default",
    split: Literal["auto", "val", "train", "all"] = "auto",
    max_documents: int | None = None,
    tokenizer: str | None = None,
    protocol: Literal["rolling", "strided"] = "rolling",
    window: int | None = None,
    stride: int | None = None,
    state: Literal["reset", "carry", "document"] = "reset",
    bucket_size: int = 256,
    se_batch_tokens: int = 128,
    val_fraction: float = 0.01,
    text_field: str = "text",
    encoding: str | None = None,
    device: str | None = None,
    out: str | None = None,
    plot: str | None = None,
    progress: bool = True,
    ttl: TTLConfig | None = None,
    dynamic: DynamicConfig | None = None,
) -> None:
    """Perplexity, bits per byte and word perplexity of a checkpoint, and perplexity by position in the document.

    Args:
        checkpoint: a ``hope fit`` or ``hope finetune`` checkpoint (``.ckpt``) or a ``.safetensors`` file with
            ``model_config.yaml``.
        source: documents: ``default`` (the built-in corpus), a local file or folder, or a hub dataset
            ``name[:config][@split]`` (as ``data.source``).
        split: ``val``/``train``: the documents ``hope fit`` holds out / trains on (with ``val_fraction``);
            ``all``; ``auto``: ``val`` for ``default``, ``all`` otherwise.
        max_documents: score at most this many documents (after the split filter).
        tokenizer: sentencepiece ``.model``; default: the checkpoint's (its ``config.yaml``), else the default.
        protocol: ``rolling`` (lm-eval ``loglikelihood_rolling``: each document alone, maximal context) or
            ``strided`` (Hugging Face: one packed stream, a sliding window of ``window`` every ``stride``).
        window: tokens per window (default: the model's ``max_seq_len``); rolling: lm-eval's ``max_length``,
            strided: the HF guide's ``max_length`` (its last token is only a label).
        stride: strided protocol: tokens between window starts (default ``window // 2``).
        state: the model's recurrent state across windows and documents: ``reset``, ``carry``, or ``document``
            (rolling only: carried within a document, reset between documents). With ``--ttl``/``--dynamic``
            what was learned is part of the state: it lasts one window, one document or the whole stream.
        bucket_size: tokens per position bucket in the perplexity-by-position table and plot.
        se_batch_tokens: tokens per batch of the batch-means standard error of the mean NLL (consecutive scored
            tokens; longer than the text's correlation length, so that batch means are nearly independent).
        val_fraction: validation share used to split the source (``hope fit``'s ``data.val_fraction``).
        text_field: column with the text in json/parquet/hub sources.
        encoding: codec of local text/JSON files (default: UTF-8, or what a byte-order mark says).
        device: ``cpu``, ``cuda``, ...; default: CUDA if available.
        out: write the JSON report here (and the plot beside it, as ``.png``).
        plot: write the perplexity-by-position PNG here (default: ``out`` with ``.png``).
        progress: show a progress bar.
        ttl: test-time learning (hope, hope-attention): the CMS levels learn from every token after scoring it;
            ``--ttl`` alone, or ``--ttl.inner_lr``, ``--ttl.objective teach|reconstruction``, ``--ttl.max_step``
            (cap of each in-context step, a fraction of the weights' norm),
            ``--ttl.consolidate true`` (write the fast weights into the model at each document's end; rolling,
            ``--state document|carry``) and ``--ttl.max_change`` (cap of one consolidation per level).
        dynamic: dynamic evaluation (every family; Krause et al.): gradient steps on all weights, each segment
            scored before it is learned from; ``--dynamic`` alone, or ``--dynamic.lr``, ``--dynamic.rule
            rms|sgd``, ``--dynamic.segment`` (tokens per step), ``--dynamic.decay`` (pull toward the start).
    """
    model, tok = load_for_eval(checkpoint, tokenizer, device)
    split = resolve_split(source, split)
    docs = load_documents(source, split, max_documents, val_fraction, text_field, encoding)
    report = {
        "checkpoint": str(checkpoint),
        "model": model.config.name,
        "tokenizer": str(tok.path),
        "source": source,
        "split": split,
        "max_documents": max_documents,
    }
    report.update(
        evaluate_perplexity(
            model,
            tok,
            [text for _, text in docs],
            protocol,
            window,
            stride,
            state,
            bucket_size,
            progress,
            ttl,
            dynamic,
            se_batch_tokens,
        )
    )
    learning = "test-time learning" if ttl else "dynamic evaluation" if dynamic else "no learning"
    print(format_perplexity(report, protocol, state, learning))
    if out is not None:
        _write_json(report, out)
    plot = plot or (str(Path(out).with_suffix(".png")) if out else None)
    if plot is not None:
        save_figure(draw_perplexity_by_position, report, plot)
        print(f"[hope] plot: {plot}")
    check_finite(report, learning, out)


def check_finite(report: dict, learning: str, out: str | None) -> None:
    """Stop with a non-zero exit when the log-likelihood is NaN or infinite, after the report was written (so that
    its per-position figures show where it went wrong): a diverged inner loop must not pass for a result."""
    if math.isfinite(report["loglikelihood"]):
        return
    cause = (
        f"with {learning} the learning diverged; lower its step (--ttl.inner_lr / --dynamic.lr) or turn it off"
        if learning != "no learning"
        else "the model's own outputs are not finite; check the checkpoint (and its precision)"
    )
    kept = f" The report was written to {out}." if out else ""
    raise SystemExit(f"[hope] error: the log-likelihood is {report['loglikelihood']}: {cause}.{kept}")


WORD_TOKENS_MAX = 3.0
"""Tokens per whitespace word above which word perplexity is not a headline figure (prose has ~1.3-2; code ~8)."""


def format_perplexity(report: dict, protocol: str, state: str, learning: str = "no learning") -> str:
    """The headline line: token perplexity and bits per byte, and word perplexity where words are the text's
    units (at most ``WORD_TOKENS_MAX`` tokens per word). The JSON report keeps every figure."""
    per_word = report["tokens"] / max(report["words"], 1)
    word = (
        f", word perplexity {report['word_perplexity']:.3f}"
        if per_word <= WORD_TOKENS_MAX
        else f" (word perplexity left out: {per_word:.1f} tokens per whitespace word, not prose; it is in the JSON)"
    )
    return (
        f"[hope] {report['documents']} documents, {report['tokens']} tokens: token perplexity "
        f"{report['token_perplexity']:.3f}{_interval(report)}, bits/byte {report['bits_per_byte']:.4f}{word} "
        f"({protocol}, window {report['window']}, state {state}, {learning})"
    )


def _interval(report: dict) -> str:
    interval = report.get("token_perplexity_interval95")
    return f" (95% interval {interval[0]:.3f}-{interval[1]:.3f})" if interval else ""


def retention(
    *,
    checkpoint: str,
    suite: TaskSuite = DEFAULT_SUITE,
    method: ContinualMethod = DEFAULT_METHOD,
    tokenizer: str | None = None,
    general_tokens: int = 4096,
    out_dir: str = "runs/eval/retention",
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> None:
    """Learn a sequence of tasks with a continual-learning method and measure retention after each task.

    Writes ``retention.json`` (the score matrix R, average accuracy, BWT, FWT, forgetting, the general metric's
    relative drop), ``retention_matrix.png``, ``retention_curves.png`` and TensorBoard scalars (``tensorboard/``)
    to ``out_dir``.

    Args:
        checkpoint: the starting model (``.ckpt`` of ``hope fit`` or ``hope finetune``, or ``.safetensors``).
        suite: the task sequence, with ``--suite.OPTION value``: ``SyntheticFacts`` (facts about fictional people;
            accuracy ± standard error), ``DomainSequence`` (standard-library packages; perplexity),
            ``LocalDomains`` (your folders or files of text, ``--suite.paths '[dir_a, dir_b]'``; perplexity) or
            ``ClassIncremental``.
        method: how tasks are learned, with ``--method.OPTION value``: ``EpochFinetune`` (full finetuning, flat
            options ``--method.lr``, ``epochs``, ...), ``InContext``, ``TestTimeLearning`` (HOPE's CMS learn while
            reading the text; ``--method.ttl.inner_lr``, ``--method.ttl.consolidate true``,
            ``--method.ttl.max_change``), ``DynamicEvaluation`` (any family; ``--method.dynamic.lr``,
            ``--method.max_change``), any ``hope.continual.methods`` class by name (``FullFinetune``, ``LoRA``,
            ``EWC``, ``Replay``, ``CMSLevels``, ``SparseMemoryFinetune``, ...; options ``--method.loop.lr`` ...),
            several of them combined (``Compose``: ``--method.parts '[LoRA, Replay, LayerwiseLRDecay]'``), or
            any ``ContinualMethod`` subclass by import path.
        tokenizer: sentencepiece ``.model``; default: the checkpoint's, else the default tokenizer.
        general_tokens: tokens of the default corpus's validation split scored as the general metric
            (perplexity, before and after); 0 skips it.
        out_dir: where the report, plots and TensorBoard logs go.
        device: ``cpu``, ``cuda``, ...; default: CUDA if available.
        seed: torch seed (dropout-free models make runs deterministic on CPU anyway).
        progress: show a progress bar.
    """
    torch.manual_seed(seed)
    model, tok = load_for_eval(checkpoint, tokenizer, device)
    general = general_perplexity_set(general_tokens) if general_tokens > 0 else None
    writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))
    try:
        report = run_retention(model, tok, suite, method, general, writer, progress)
    finally:
        writer.close()
    report = {"checkpoint": str(checkpoint), "model": model.config.name, **report}
    paths = write_outputs(report, out_dir)
    print(format_summary(report))
    print(
        f"[hope] report: {paths['json']}  plots: {', '.join(v for k, v in paths.items() if k != 'json')}  "
        f"TensorBoard: {Path(out_dir) / 'tensorboard'}"
    )


def recall(
    *,
    checkpoint: str,
    kinds: list[Literal["passkey", "number", "word"]] | None = None,
    lengths: list[int] | None = None,
    depths: list[float] | None = None,
    samples: int = 4,
    hay: Literal["default", "generated"] = "default",
    pairs: list[int] | None = None,
    pair_samples: int = 4,
    state: Literal["carry", "reset"] = "carry",
    window: int | None = None,
    tokenizer: str | None = None,
    out_dir: str = "runs/eval/recall",
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
    ttl: TTLConfig | None = None,
    dynamic: DynamicConfig | None = None,
) -> None:
    """Long-context recall: needle-in-a-haystack retrieval and multi-query associative recall (exact match).

    Writes ``recall.json`` (accuracy per kind, length and depth; per number of pairs) and ``recall.png``.

    Args:
        checkpoint: the model (``.ckpt`` of ``hope fit`` or ``hope finetune``, or ``.safetensors``).
        kinds: needle kinds (default all: passkey, number, word); ``[]`` skips the needles.
        lengths: prompt lengths in tokens (default ``[256, 512, 1024, 2048]``; e.g. up to 16384).
        depths: relative needle positions in the hay (default ``[0.1, 0.5, 0.9]``).
        samples: needles per kind, length and depth.
        hay: ``default`` (Python source of the default corpus) or ``generated`` (repeated filler sentences).
        pairs: numbers of key-value pairs for associative recall (default ``[4, 16, 64]``); ``[]`` skips it.
        pair_samples: sequences per number of pairs.
        state: ``carry``: tokens before the last window go into the model's recurrent state; ``reset``: dropped.
        window: tokens per forward pass (default: the model's ``max_seq_len``).
        tokenizer: sentencepiece ``.model``; default: the checkpoint's, else the default tokenizer.
        out_dir: where ``recall.json`` and ``recall.png`` go.
        device: ``cpu``, ``cuda``, ...; default: CUDA if available.
        seed: every needle, key and value follows from it.
        progress: show progress bars.
        ttl: test-time learning (hope, hope-attention) while reading each prompt, afresh per prompt: ``--ttl``
            alone, or ``--ttl.inner_lr``, ``--ttl.objective`` (as ``hope eval perplexity``; no consolidation).
        dynamic: dynamic evaluation (every family) while reading each prompt, afresh per prompt: ``--dynamic``
            alone, or ``--dynamic.lr``, ``--dynamic.rule``, ``--dynamic.segment``, ``--dynamic.decay``.
    """
    model, tok = load_for_eval(checkpoint, tokenizer, device)
    report = {"checkpoint": str(checkpoint), "model": model.config.name}
    report.update(
        evaluate_recall(
            model,
            tok,
            KINDS if kinds is None else kinds,
            lengths or [256, 512, 1024, 2048],
            depths or [0.1, 0.5, 0.9],
            samples,
            hay,
            [4, 16, 64] if pairs is None else pairs,
            pair_samples,
            Reading(window, state == "carry", seed, progress, ttl, dynamic),
        )
    )
    print(format_recall(report))
    _write_json(report, Path(out_dir) / "recall.json")
    save_figure(draw_recall, report, Path(out_dir) / "recall.png")
    print(f"[hope] plot: {Path(out_dir) / 'recall.png'}")


def format_recall(report: dict) -> str:
    """Text of a recall report: needle accuracy by kind and context length, associative recall by number of pairs."""
    lines = []
    if "needle" in report:
        lengths = report["needle"]["lengths"]
        lines.append("needle accuracy   " + "".join(f"{n:>8}" for n in lengths))
        for kind, rows in report["needle"]["by_kind"].items():
            lines.append(f"  {kind:<16}" + "".join(f"{rows[str(n)]['accuracy']:8.2f}" for n in lengths))
    if "associative" in report:
        for n, row in report["associative"]["by_pairs"].items():
            lines.append(
                f"associative recall, {n} pairs ({row['context_tokens']} tokens): accuracy "
                f"{row['accuracy']:.2f}, token accuracy {row['token_accuracy']:.2f}"
            )
    return "\n".join(lines)


def _write_json(report: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"[hope] report: {path}")


def lm_eval(argv: Sequence[str]) -> None:
    """``hope eval lm-eval ARGS``: lm-evaluation-harness's own CLI with the ``hope`` model registered."""
    try:
        from hope.evaluation.lm_eval_adapter import run_lm_eval
    except ModuleNotFoundError as err:
        if err.name is None or not err.name.startswith("lm_eval"):
            raise
        raise SystemExit('lm-evaluation-harness is not installed. Fix: pip install -e ".[lm-eval]"') from err
    run_lm_eval(list(argv))


DESCRIPTION = """Evaluate hope checkpoints. Subcommands: perplexity, retention, recall, in_context_retention
(also spelled in-context-retention; below), and
lm-eval: lm-evaluation-harness's own arguments with the `hope` model registered
(hope eval lm-eval --model hope --model_args checkpoint=PATH --tasks TASKS)."""


def bare_flags(args: list[str], names: Sequence[str] = ("--ttl", "--dynamic")) -> list[str]:
    """``--ttl`` / ``--dynamic`` without a value (last, or before another option) as ``--ttl {}``: on, defaults."""
    out = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg in names and (i + 1 == len(args) or args[i + 1].startswith("--")):
            out.append("{}")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``hope eval``: ``lm-eval`` goes to lm-evaluation-harness, the rest to the perplexity/retention/recall CLI."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("lm-eval", "lm_eval"):
        lm_eval(args[1:])
        return
    if args and args[0] == "in-context-retention":
        args[0] = "in_context_retention"
    set_docstring_parse_options(attribute_docstrings=True)  # --ttl.help, --dynamic.help show the fields' docstrings
    commands = [perplexity, retention, recall, in_context_retention]
    CLI(commands, args=bare_flags(args), description=DESCRIPTION, prog="hope eval")
