"""The ``onnx`` backend: the integer program as ONNX graphs run with onnxruntime."""
