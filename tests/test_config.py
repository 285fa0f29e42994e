"""Model config: presets and their parameter counts, overrides, and the errors for bad values."""

import re

import pytest
import torch

from hope.config import PRESETS, ModelConfig
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
