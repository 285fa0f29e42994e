"""CMS op: one level learning in context on its layer-local objective (``learn_level``, chunk by chunk).

The literal token-by-token reference, which only tests import, lives in ``hope.ops.cms.naive``.
"""

from hope.ops.cms.chunked import learn_level

__all__ = ["learn_level"]
