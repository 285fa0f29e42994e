"""Every configs/finetune YAML parses through the real `hope finetune` parser; its method and model settings are
valid (without building the model or reading its checkpoint)."""

from pathlib import Path

import pytest
from jsonargparse import ArgumentParser, Namespace

from hope.config import ModelConfig
from hope.continual.methods import FinetuneMethod
from hope.finetune.cli import FinetuneCLI
from hope.finetune.module import FinetuneLitModule
from hope.layers.memory_layer import MemoryLayerConfig
from hope.lit.cli import build_cli

YAMLS = sorted((Path(__file__).parents[1] / "configs" / "finetune").glob("*.yaml"))


class ParseOnly(FinetuneCLI):
    def instantiate_classes(self) -> None:
        pass


def test_finetune_configs_are_found():
    assert {"full.yaml", "lora.yaml", "ewc.yaml", "replay.yaml", "sparse-memory.yaml"} <= {p.name for p in YAMLS}


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_finetune_yaml_validates(path):
    config = build_cli(["--config", str(path)], run=False, cli_class=ParseOnly, model_class=FinetuneLitModule).config
    model = ModelConfig.from_preset(config.model.preset, **(config.model.overrides or {}))
    assert config.data.seq_len <= model.max_seq_len
    if config.model.memory_layers is not None:
        memory = config.model.memory_layers
        MemoryLayerConfig(**(vars(memory) if isinstance(memory, Namespace) else memory))
    parser = ArgumentParser()  # the method alone, built as the CLI builds it (Compose: its parts too)
    parser.add_argument("--method", type=FinetuneMethod)
    method = parser.instantiate(parser.parse_object({"method": config.method.as_dict()})).method
    assert isinstance(method, FinetuneMethod)
