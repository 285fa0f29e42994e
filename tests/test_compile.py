"""``model.compile`` of ``hope fit``: the whole model through torch.compile, in place (checkpoint keys unchanged),
and the same trained weights as eager."""

import pytest
import torch

from hope.cli import main
from hope.lit.module import HopeLitModule
from tests.test_cli import fit_args


def test_compile_wraps_the_model_in_place():
    eager, compiled = HopeLitModule("debug"), HopeLitModule("debug", compile=True)
    assert compiled.model._compiled_call_impl is not None and eager.model._compiled_call_impl is None
    assert compiled.state_dict().keys() == eager.state_dict().keys()


@pytest.mark.slow  # torch.compile of a model takes a minute or more on 2 CPU cores
def test_compiled_fit_matches_eager(tmp_path, text_corpus):
    weights = {}
    for compile in (False, True):
        root = tmp_path / str(compile)
        main(fit_args(root, text_corpus, "--model.compile", str(compile).lower(), steps=2))
        weights[compile] = torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert weights[True].keys() == weights[False].keys()
    for name, eager in weights[False].items():
        torch.testing.assert_close(weights[True][name], eager, rtol=1e-4, atol=1e-5)
