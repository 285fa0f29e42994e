"""How much a trained Titans checkpoint uses its test-time memory (issue 13).

For each checkpoint: perplexity (rolling, window 256, state reset, as bench/titans_ablations.py) with the inner loop
as trained, and with the memory frozen at its meta-learned initial weights (theta_t = alpha_t = 0: nothing is
written, nothing is forgotten, so every read sees M_0); and how far one window moves the memory,
||W_T - W_0|| / ||W_0|| per layer after T = 256 tokens, averaged over windows.

    python bench/titans_memory_probe.py --checkpoints runs/titans-ablations/mac-before-seed1234/checkpoints/last.ckpt \
        --out docs/titans-ablations/memory_probe.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from hope.data.documents import load_documents
from hope.evaluation.loading import load_for_eval
from hope.evaluation.perplexity import evaluate_perplexity
from hope.layers.neural_memory import NeuralMemory, NeuralMemoryState

WINDOW = 256


def freeze_memories(model: torch.nn.Module) -> int:
    """Set every Titans memory's step size and forget gate to exactly 0 (their logit biases to -inf); returns how
    many memories were frozen."""
    memories = [m for m in model.modules() if isinstance(m, NeuralMemory)]
    with torch.no_grad():
        for memory in memories:
            bias = memory.gate_proj.bias.view(3, memory.n_head)
            bias[0] = bias[2] = -float("inf")  # theta, alpha (eta is moot once theta = 0 and S_0 = 0)
    return len(memories)


def memory_states(state) -> list[NeuralMemoryState]:
    """Every NeuralMemoryState inside a model state (the blocks' states are tuples of various shapes)."""
    if isinstance(state, NeuralMemoryState):
        return [state]
    if isinstance(state, tuple | list):
        return [s for item in state for s in memory_states(item)]
    return []


@torch.no_grad()
def weight_movement(model: torch.nn.Module, windows_BT: torch.Tensor) -> list[float]:
    """Per memory, mean over windows of max over its layers of ||W_T - W_0|| / ||W_0|| after one window."""
    _, state = model(windows_BT)
    moved = []
    for memory, layer_state in zip(
        [m for m in model.modules() if isinstance(m, NeuralMemory)], memory_states(state), strict=True
    ):
        ratios = [
            (W - W0).flatten(1).norm(dim=1) / W0.norm()
            for W, W0 in zip(layer_state.weights, memory.memory_init, strict=True)
        ]
        moved.append(torch.stack(ratios).amax(dim=0).mean().item())
    return moved


def first_windows(tokenizer, texts: list[str], n: int) -> torch.Tensor:
    """The first WINDOW tokens of up to n documents that have that many ([n', WINDOW])."""
    ids = [t[:WINDOW] for t in tokenizer.encode_batch(texts, bos=True) if len(t) >= WINDOW]
    return torch.tensor(ids[:n])


def probe(checkpoint: str, sources: dict[str, list[str]], n_windows: int) -> dict:
    """The probe's numbers for one checkpoint."""
    result = {"checkpoint": checkpoint}
    for frozen in (False, True):
        model, tok = load_for_eval(checkpoint, device="cpu")
        if frozen and not freeze_memories(model):
            break  # no memory (Transformer++): nothing to freeze
        key = "frozen" if frozen else "trained"
        for name, texts in sources.items():
            report = evaluate_perplexity(model, tok, texts, "rolling", WINDOW, None, "reset", WINDOW, False)
            result[f"{name}_ppl_{key}"] = report["token_perplexity"]
        if not frozen:
            windows = first_windows(tok, [t for texts in sources.values() for t in texts], n_windows)
            result["memory_moved"] = weight_movement(model, windows)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True)
    parser.add_argument("--info", default="runs/corpora/info", help="bench/local_corpora.py's info domain")
    parser.add_argument("--info_docs", type=int, default=100)
    parser.add_argument("--val_docs", type=int, default=None, help="default: the whole validation split")
    parser.add_argument("--windows", type=int, default=32, help="windows for the weight movement")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--append", action="store_true", help="add to the checkpoints already in --out")
    args = parser.parse_args(argv)
    sources = {
        "val": [text for _, text in load_documents("default", "val", args.val_docs)],
        "info": [text for _, text in load_documents(args.info, "all", args.info_docs)],
    }
    results = json.loads(args.out.read_text()) if args.append and args.out and args.out.exists() else []
    for checkpoint in args.checkpoints:
        results.append(probe(checkpoint, sources, args.windows))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
