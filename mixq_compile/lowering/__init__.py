"""Lowering: a frozen fake-quant graph to an integer program (:func:`.integer_program.lower`), and the rewrites of
integer programs that backends share (CSR aggregation, fused input linear, fused requantize)."""
