"""The self-referential weight matrix (Irie et al., ICML 2022): ``srwm``, a loop over chunks with a hand-written
backward (``chunked.py``). The literal reference, which only tests and benchmarks import, is ``naive.py``."""

from hope.ops.srwm.chunked import srwm

__all__ = ["srwm"]
