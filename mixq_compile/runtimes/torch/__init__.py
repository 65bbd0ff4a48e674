"""The ``torch`` backend: the integer program as ``torch.export`` programs running the ``mixq::`` operators."""
