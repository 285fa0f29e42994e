"""Every shipped YAML parses through the real CLI parser and describes a valid model and data setup."""

from pathlib import Path

import pytest

from hope.config import ModelConfig
from hope.data.episodes import EpisodeConfig
from hope.lit.cli import HopeCLI, build_cli
from hope.lit.datamodule import TextDataModule

CONFIGS = Path(__file__).parents[1] / "configs"
# `hope fit` configs; configs/finetune/*.yaml are checked by tests/test_finetune_configs.py.
CLI_YAMLS = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "finetune")


class ParseOnly(HopeCLI):
    """Parses and validates the config without building the (possibly 1B-parameter) model."""

    def instantiate_classes(self) -> None:
        pass


def test_configs_are_found():
    assert CONFIGS / "pretrain" / "debug.yaml" in CLI_YAMLS


@pytest.mark.parametrize("path", CLI_YAMLS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_yaml_loads_and_validates(path):
    cli = build_cli(["--config", str(path)], run=False, cli_class=ParseOnly)
    config = cli.config
    model = ModelConfig.from_preset(config.model.preset, **(config.model.overrides or {}))
    data_args = {k: v for k, v in vars(config.data).items() if not k.startswith("__")}
    if data_args.get("episodes") is not None:  # a nested dataclass, left as a Namespace by the parse-only CLI
        data_args["episodes"] = EpisodeConfig(**data_args["episodes"].as_dict())
    data = TextDataModule(**data_args)
    assert data.seq_len <= model.max_seq_len, f"{path.name}: data.seq_len exceeds model.max_seq_len"
    data.tokenizer.check_fits(model.vocab_size)
