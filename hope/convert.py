"""``hope convert``: a training checkpoint -> one ``model.safetensors`` plus its ``model_config.yaml``.

    hope convert runs/debug/checkpoints/last.ckpt exported/debug
    hope convert runs/big/checkpoints/last.ckpt/ exported/big        # a DeepSpeed checkpoint *directory*
    hope convert runs/debug/checkpoints/last.ckpt exported/debug --overwrite     # replace an earlier export

The output loads with ``hope.checkpoint.load_model``, ``hope eval``, and
``--model.init_from exported/debug/model.safetensors``.
A DeepSpeed checkpoint (always a directory, sharded by ZeRO) is first consolidated to fp32 with Lightning's
``convert_zero_checkpoint_to_fp32_state_dict``, which needs ``deepspeed`` installed but no GPU. Optimizer state is
dropped: keep the original for resuming.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml
from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict
from safetensors.torch import save_file

from hope.checkpoint import atomic_write_bytes, load_checkpoint_file, run_checkpoint, tied_aliases


def _lightning_checkpoint(source: Path, workdir: Path) -> Path:
    """A single-file Lightning checkpoint for ``source``, consolidating a DeepSpeed directory if needed."""
    if source.is_file():
        return source
    if not (source / "latest").is_file() and not list(source.glob("*/mp_rank_00_model_states.pt")):
        raise ValueError(f"{str(source)!r} is a directory but not a DeepSpeed checkpoint (no 'latest' file).")
    out = workdir / "consolidated.ckpt"
    convert_zero_checkpoint_to_fp32_state_dict(str(source), str(out))
    return out


def convert(source: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/model_config.yaml``; return the safetensors path. An
    existing ``model.safetensors`` is replaced only with ``overwrite``."""
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise FileNotFoundError(f"checkpoint {str(source)!r} does not exist; pass a .ckpt file or a DeepSpeed dir.")
    source = run_checkpoint(source)
    if (out_dir / "model.safetensors").exists() and not overwrite:
        raise FileExistsError(
            f"{str(out_dir / 'model.safetensors')!r} already exists. Fix: pass --overwrite to replace it, or choose "
            "another output folder."
        )
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = load_checkpoint_file(_lightning_checkpoint(source, Path(tmp)))
    config = ckpt.get("model_config")
    if config is None:
        raise ValueError(f"{str(source)!r} stores no model_config; was it written by `hope fit`?")
    weights = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "model.safetensors"
    tmp_target = target.with_name(target.name + ".tmp")
    # safetensors refuses tensors that share memory (tied embeddings): save one, the loader re-ties them.
    unique = {k: v for k, v in weights.items() if k not in tied_aliases(weights)}
    save_file(unique, str(tmp_target), metadata={"format": "pt", "source": str(source)})
    tmp_target.replace(target)
    atomic_write_bytes(out_dir / "model_config.yaml", yaml.safe_dump(config).encode())
    run_config = (source if source.is_dir() else source.parent) / "config.yaml"
    if run_config.is_file():
        shutil.copyfile(run_config, out_dir / "config.yaml")
    return target


def main(argv: Sequence[str] | None = None) -> None:
    """``hope convert CHECKPOINT OUT_DIR``: parse the arguments, convert, print what was written."""
    parser = argparse.ArgumentParser(
        prog="hope convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="a Lightning .ckpt file or a DeepSpeed checkpoint directory")
    parser.add_argument("out_dir", help="folder to write model.safetensors and model_config.yaml into")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing out_dir/model.safetensors")
    args = parser.parse_args(argv)
    target = convert(args.checkpoint, args.out_dir, args.overwrite)
    print(f"[hope] wrote {target} and {target.parent / 'model_config.yaml'}")
