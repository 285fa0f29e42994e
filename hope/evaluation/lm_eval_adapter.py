"""lm-evaluation-harness adapter: hope checkpoints as an lm-eval model named ``hope``.

lm-eval (0.4.x) finds models only in its own registry and has no plugin entry point (EleutherAI/
lm-evaluation-harness issue #3282), so importing this module registers the class; these all do that first::

    hope eval lm-eval --model hope --model_args checkpoint=runs/debug/checkpoints/last.ckpt --tasks wikitext
    python -m hope.evaluation.lm_eval_adapter --model hope --model_args checkpoint=... --tasks ...

    import hope.evaluation.lm_eval_adapter, lm_eval
    lm_eval.simple_evaluate(model="hope", model_args="checkpoint=...", tasks=[...])

``--model_args``: ``checkpoint`` (required), ``tokenizer``, ``device``, ``max_length`` (default: the model's
``max_seq_len``), ``state`` (``document``: the recurrent state is carried across the windows of one document in
``loglikelihood_rolling`` and reset between documents, lm-eval's "each document separately"; ``reset``: every
window starts fresh), ``max_gen_toks`` (default 256).

Learning while reading (``hope.online``): ``ttl=true`` (HOPE's CMS levels learn in context; ``ttl_inner_lr``,
``ttl_objective``) or ``dynamic=true`` (dynamic evaluation, every family; ``dynamic_lr``, ``dynamic_rule``,
``dynamic_segment``, ``dynamic_decay``); any ``ttl_*`` / ``dynamic_*`` key alone turns it on. Every token is scored
before anything learns from it. A rolling log-likelihood learns along its document (with ``state=document``; per
window with ``reset``), a ``loglikelihood`` request along its context and each continuation on its own, and
generation along its prompt; every request starts from the checkpoint's weights::

    hope eval lm-eval --model hope --model_args checkpoint=...,ttl=true,ttl_inner_lr=1e-3 --tasks wikitext
    hope eval lm-eval --model hope --model_args checkpoint=...,dynamic_lr=1e-4 --tasks wikitext

Requests are scored with ``hope.evaluation.scoring``, so ``loglikelihood_rolling`` here and ``hope eval
perplexity --protocol rolling`` give the same numbers. Every context starts with BOS, as training documents do
(lm-eval itself adds one only to empty contexts), and padded logits are excluded. Generation is greedy and has
no KV cache (each new token re-runs the window), which is fine for short answers and slow for long ones.
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from hope.evaluation.loading import load_for_eval
from hope.evaluation.scoring import continuation_token_scores, read_context, rolling_windows, score_windows, summed
from hope.online import learning_from_args, online_model

log = logging.getLogger(__name__)


@register_model("hope")
class HopeEvalLM(TemplateLM):
    """A hope checkpoint behind lm-eval's ``loglikelihood``, ``loglikelihood_rolling`` and ``generate_until``."""

    def __init__(
        self,
        checkpoint: str,
        tokenizer: str | None = None,
        device: str | None = None,
        max_length: int | None = None,
        state: str = "document",
        max_gen_toks: int = 256,
        **kwargs,
    ) -> None:  # kwargs: ttl*/dynamic* (see the module docstring); lm-eval's batch_size, ...: not needed here
        super().__init__()
        if state not in ("document", "reset"):
            raise ValueError(f"state={state!r}: choose 'document' or 'reset'")
        if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's CLI passes device="cuda" unless told otherwise; on a CPU-only machine that means "the CPU"
            log.warning("device=%r but CUDA is not available: using the CPU", device)
            device = "cpu"
        self.model, self.hope_tokenizer = load_for_eval(checkpoint, tokenizer, device)
        ttl, dynamic = learning_from_args(kwargs)
        if ttl is not None and ttl.consolidate:
            raise ValueError("ttl_consolidate: lm-eval scores every request on its own; nothing is consolidated")
        self.reader = online_model(self.model, ttl, dynamic)  # the model itself without learning
        self.max_length = int(max_length or self.model.config.max_seq_len)
        if self.max_length > self.model.config.max_seq_len:
            raise ValueError(f"max_length={self.max_length} exceeds the model's max_seq_len")
        self.state, self.max_gen_toks = state, int(max_gen_toks)

    # -- tokenization ------------------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        """End-of-text id for lm-eval: the tokenizer's EOS, or BOS if it has none."""
        tok = self.hope_tokenizer
        return tok.eos_id if tok.eos_id is not None else tok.bos_id

    @property
    def prefix_token_id(self) -> int:
        """Documents start with BOS in training, so BOS (not EOS) conditions an empty context."""
        tok = self.hope_tokenizer
        return tok.bos_id if tok.bos_id is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Token ids of ``string``, with BOS in front only when lm-eval asks for special tokens."""
        return self.hope_tokenizer.encode(string, bos=bool(add_special_tokens))

    def tok_decode(self, tokens: list[int], **kwargs) -> str:
        """Text of the token ids ``tokens``."""
        return self.hope_tokenizer.decode(tokens)

    @property
    def tokenizer_name(self) -> str:
        """Path of the SentencePiece model, which lm-eval records as the tokenizer's name."""
        return str(self.hope_tokenizer.path)

    # -- scoring -----------------------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """Requests with the same context (multiple-choice options) are scored in one batch."""
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        bos = self.prefix_token_id
        for i, (_, context, _) in enumerate(requests):
            # Training documents start with BOS; lm-eval adds it only to empty contexts.
            groups[tuple(context if context[:1] == [bos] else [bos, *context])].append(i)
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for context, indices in tqdm(groups.items(), desc="loglikelihood", disable=disable_tqdm):
            continuations = [requests[i][2] for i in indices]
            scores = summed(
                continuation_token_scores(self.reader, list(context), continuations, window=self.max_length)
            )
            for i, (ll, greedy) in zip(indices, scores, strict=True):
                results[i] = (ll, greedy)
                if self.cache_hook is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], (ll, greedy))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each string scored on its own as ``[BOS] + tokens``, in rolling windows of ``max_length``."""
        out = []
        for request in tqdm(requests, desc="loglikelihood_rolling", disable=disable_tqdm):
            (string,) = request.args
            seq = [self.prefix_token_id] + self.tok_encode(string)
            scored = score_windows(
                self.reader, seq, rolling_windows(len(seq), self.max_length), carry=self.state == "document"
            )
            ll = float(scored.logprobs.sum())
            out.append(ll)
            if self.cache_hook is not None:
                self.cache_hook.add_partial("loglikelihood_rolling", (string,), ll)
        return out

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding until a stop string, EOS or ``max_gen_toks`` tokens."""
        out = []
        for request in tqdm(requests, desc="generate_until", disable=disable_tqdm):
            context, gen_kwargs = request.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            text = self._greedy(context, until, max_new)
            out.append(text)
            if self.cache_hook is not None:
                self.cache_hook.add_partial("generate_until", request.args, text)
        return out

    def _greedy(self, context: str, until: list[str], max_new: int) -> str:
        prompt = [self.prefix_token_id] + self.tok_encode(context)
        generated: list[int] = []
        device = next(self.model.parameters()).device
        for _ in range(max_new):
            window, state = read_context(self.reader, prompt + generated, self.max_length, None)
            logits, _ = self.reader(torch.tensor([window], device=device), state)
            next_id = int(logits[0, -1, : self.model.config.vocab_size].argmax())
            if next_id == self.eot_token_id:
                break
            generated.append(next_id)
            text = self.tok_decode(generated)
            stops = [text.index(s) for s in until if s and s in text]
            if stops:
                return text[: min(stops)]
        return self.tok_decode(generated)


def run_lm_eval(argv: list[str]) -> None:
    """lm-eval's command line (``lm_eval ARGS``) with the ``hope`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    run_lm_eval(sys.argv[1:])
