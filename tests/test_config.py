"""Model config: presets and their parameter counts, overrides, and the errors for bad values."""

import json
import re
from pathlib import Path

import pytest
import torch

from hope.config import PRESETS, CMSLevel, ModelConfig
from hope.model import HopeLM


def nominal_size(name: str) -> float | None:
    match = re.search(r"-(\d+(?:\.\d+)?)([mb])$", name)
    if not match:
        return None
    return float(match.group(1)) * (1e6 if match.group(2) == "m" else 1e9)


SIZED = [name for name in PRESETS if nominal_size(name)]


def count_params(name: str) -> int:
    with torch.device("meta"):
        return HopeLM(ModelConfig.from_preset(name)).num_parameters()


def test_there_are_sized_presets():
    assert {"transformer-170m", "transformer-340m", "transformer-760m", "transformer-1.3b"} <= set(SIZED)


@pytest.mark.parametrize("name", SIZED)
def test_parameter_count_matches_name(name):
    n = count_params(name)
    print(f"{name}: {n / 1e6:.1f}M parameters")
    assert abs(n - nominal_size(name)) / nominal_size(name) < 0.05


def test_debug_preset_is_tiny():
    assert count_params("debug") < 5e6


def test_override_and_padding():
    cfg = ModelConfig.from_preset("debug", n_layer=2, vocab_size=1000)
    assert cfg.n_layer == 2 and cfg.name == "debug"
    assert cfg.padded_vocab_size == 1024


def test_unknown_preset_is_clear():
    with pytest.raises(ValueError, match=r"model.preset='transfomer-170m'.*Did you mean \['transformer-170m'"):
        ModelConfig.from_preset("transfomer-170m")


def test_unknown_key_is_clear():
    with pytest.raises(ValueError, match=r"Unknown model config key 'n_layers'.*Did you mean \['n_layer'\]"):
        ModelConfig.from_preset("debug", n_layers=3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_embd": 100, "n_head": 3}, "not divisible by model.n_head=3"),
        ({"attn_backend": "xformers"}, "attn_backend='xformers' is unknown"),
        ({"family": "mamba"}, "family='mamba' is unknown"),
        ({"sliding_window": 0}, "sliding_window=0"),
        ({"n_layer": 0}, "n_layer=0 must be >= 1"),
    ],
)
def test_invalid_values_are_clear(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelConfig.from_preset("debug", **overrides)


# -- CMS levels -----------------------------------------------------------------------------------------------------
def test_presets_are_literal_entries():
    """Every preset has its own entry in hope/presets.py, so `grep NAME` finds its definition."""
    source = (Path(__file__).parents[1] / "hope" / "presets.py").read_text()
    assert [name for name in PRESETS if f'"{name}": {{' not in source] == []


def test_cms_levels_from_yaml_mappings():
    levels = [{"hidden": 64, "tokens_per_update": 8, "steps_per_update": 2, "rule": "sgd", "lr_scale": 0.5}, {}]
    cfg = ModelConfig.from_preset("hope-debug", cms_levels=levels)
    assert cfg.cms_levels == [CMSLevel(64, 8, 2, "sgd", 0.5), CMSLevel()]  # omitted keys take CMSLevel's defaults
    assert cfg.resolved_cms_hidden == [64, cfg.resolved_intermediate_size]
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg  # what a checkpoint stores reads back the same


@pytest.mark.parametrize("old", ["cms_periods", "cms_level_periods", "cms_hidden", "cms_level_rules"])
def test_flat_cms_fields_are_refused_with_the_new_form(old):
    values = {
        "cms_periods": [4, 8],
        "cms_level_periods": [1, 2],
        "cms_hidden": [32, 64],
        "cms_level_rules": ["sgd"] * 2,
    }
    with pytest.raises(ValueError, match=re.escape(f"model.{old}")) as err:
        ModelConfig.from_preset("hope-debug", **{old: values[old]})
    new_form = json.loads(str(err.value).split("The same setting is: ")[1])
    assert "were replaced by model.cms_levels" in str(err.value)
    ModelConfig.from_preset("hope-debug", **new_form)  # the suggestion is a valid override
    level = dict(
        zip(
            ["cms_periods", "cms_level_periods", "cms_hidden", "cms_level_rules"],
            ["tokens_per_update", "steps_per_update", "hidden", "rule"],
            strict=True,
        )
    )[old]
    assert [lv[level] for lv in new_form["cms_levels"]] == values[old]


def test_checkpoint_configs_with_flat_cms_fields_still_load():
    """A config stored before cms_levels existed reads into the same levels (old defaults for missing lists)."""
    stored = ModelConfig.from_preset("hope-debug").to_dict()
    stored.pop("cms_levels")
    stored |= {"cms_hidden": [128, 96, 64], "cms_periods": [16, 64, 256], "cms_level_periods": [1, 2, 4]}
    stored |= {"cms_level_rules": ["adamw", "sgd", "deep_momentum"], "cms_level_lr_scale": [1.0, 0.5, 0.1]}
    cfg = ModelConfig.from_dict(stored)
    assert cfg.cms_levels == [
        CMSLevel(128, 16, 1, "adamw", 1.0),
        CMSLevel(96, 64, 2, "sgd", 0.5),
        CMSLevel(64, 256, 4, "deep_momentum", 0.1),
    ]
    assert (
        ModelConfig.from_dict({**stored, "cms_level_rules": None, "cms_level_lr_scale": None}).cms_levels[1].rule
        == "adamw"
    )
