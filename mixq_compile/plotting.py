"""matplotlib, imported only when a plot is asked for: it is an optional extra (``pip install mixq-compile[plots]``)."""

from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or an ImportError that names the extra to install."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            "plots need matplotlib, an optional extra of mixq-compile: pip install 'mixq-compile[plots]'"
        ) from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
