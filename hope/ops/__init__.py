"""Functional kernels behind the layers: attention, the Titans and self-modifying memory updates, the scan."""
