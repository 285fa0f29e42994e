"""Building blocks of the models: attention, RoPE, norm, MLP, LoRA, product-key memory, Titans and HOPE layers."""
