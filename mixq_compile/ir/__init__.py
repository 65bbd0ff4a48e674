"""The intermediate representation every layer above shares: the integer instruction set (:mod:`.instructions`), the
integer program (:mod:`.program`), the input signature (:mod:`.signature`), the site plan (:mod:`.plan`), the op
tables that say what an ATen op means to quantization (:mod:`.rules`), the modules a captured graph holds
(:mod:`.modes`, :mod:`.structure_cache`) and the metadata keys (:mod:`.meta`).

Nothing here imports a pass, a backend or the public API: this package is the bottom of the stack.
"""
