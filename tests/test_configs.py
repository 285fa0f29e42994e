"""Every shipped YAML parses through the real CLI parser and describes a valid model and data setup."""

from pathlib import Path

import pytest
import yaml

from hope.config import FAMILIES, ModelConfig
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
    assert CONFIGS / "pretrain" / "compare" / "titans-mac.yaml" in CLI_YAMLS


def test_compare_configs_share_one_schedule():
    """configs/pretrain/compare/: one file per family, identical but for the preset and the run folder."""
    paths = sorted((CONFIGS / "pretrain" / "compare").glob("*.yaml"))
    configs = {p.stem: yaml.safe_load(p.read_text()) for p in paths}
    assert sorted(configs) == sorted(FAMILIES)
    for family, config in configs.items():
        assert ModelConfig.from_preset(config["model"].pop("preset")).family == family
        assert config["trainer"].pop("default_root_dir") == f"runs/compare/{family}"
    shared = configs.pop("transformer")
    assert all(config == shared for config in configs.values())
    assert shared["data"]["seq_len"] == 256 and shared["trainer"]["max_steps"] >= 400  # a usable model, not a smoke run


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
