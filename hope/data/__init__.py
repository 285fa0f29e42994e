"""Data, with no Lightning: document sources (``sources``: the built-in corpus, local files, hub datasets), splits of
them (``documents``), the tokenized memmap cache (``cache``), packing into blocks (``packing``, ``blocks``) and the
resumable training sampler (``sampler``). The Lightning data module is ``hope.lit.datamodule``."""
