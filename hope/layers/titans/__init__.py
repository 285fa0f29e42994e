"""Titans blocks (Behrouz et al., 2025, §4): memory as context (MAC), as gate (MAG), as layer (MAL), and alone (LMM).

The memory itself is ``hope.layers.neural_memory.NeuralMemory``; the attention (with the persistent prefix) is
``hope.layers.attention.CausalSelfAttention``.
"""

from hope.layers.titans.blocks import HybridState, LMMBlock, MAGBlock, MALBlock
from hope.layers.titans.mac import MACBlock, MACState

__all__ = ["HybridState", "LMMBlock", "MACBlock", "MACState", "MAGBlock", "MALBlock"]
