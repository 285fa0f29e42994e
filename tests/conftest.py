"""Shared test fixtures. Tests never touch the network, and never write to the hope token cache in ~/.cache."""

import os

# Must be set before `datasets`/`huggingface_hub` are imported: a hub lookup offline would retry for ~30 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Without a GPU, Triton kernels run in Triton's interpreter (tests/ops/test_titans_triton.py). Triton reads this when
# it is first imported (DeepSpeed imports it too), so it is set here, before any test module is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The test models are tiny: one thread avoids inter-thread synchronisation that costs more than it saves (and
# makes timings independent of how busy the machine is). Subprocess tests (Slurm, DeepSpeed) choose their own.
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _isolated_hope_cache(tmp_path_factory):
    """Token caches of the whole test session go to a temporary folder, not ~/.cache/hope."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOPE_CACHE", str(tmp_path_factory.mktemp("hope_cache")))
        yield


@pytest.fixture
def text_corpus(tmp_path):
    """A folder of 40 small, distinct .txt documents (about 12 kB in all)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(40):
        lines = [f"Document {i}, line {j}: the quick brown fox jumps over {i * j} lazy dogs." for j in range(4)]
        (folder / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
    return folder
