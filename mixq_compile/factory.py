"""A user's model factory named on the command line: ``package.module:function`` or ``path/to/file.py:function``.

The factory is called as ``factory(in_channels=..., out_channels=...)`` (plus any extra keyword arguments) and must
return an FP32 ``nn.Module``. Saved models record the factory (a file as its absolute path) and its arguments, so
``mixq-compile export`` and :func:`mixq_compile.load` can rebuild the FP32 model without being told again.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

from .errors import MixQError


class FactoryError(MixQError, ValueError):
    """A model factory cannot be found, imported or called, or it does not return an ``nn.Module``."""


def record(spec: str) -> dict:
    """How a saved model finds ``spec`` again from any working directory: a file path made absolute, or a module
    with the folder it was imported from (``factory_path``) unless it is installed."""
    module_name, _, name = _split(spec)
    if module_name.endswith(".py"):
        return {"factory": f"{Path(module_name).resolve()}:{name}", "factory_path": None}
    resolve(spec)
    module = sys.modules[module_name]
    file = getattr(module, "__file__", None)
    root = None
    if file is not None:
        root = Path(file).resolve().parents[module_name.count(".") + (Path(file).name == "__init__.py")]
        if any(part in ("site-packages", "dist-packages") for part in root.parts):
            root = None
    return {"factory": spec, "factory_path": None if root is None else str(root)}


def _split(spec: str) -> tuple[str, str, str]:
    module, sep, name = spec.rpartition(":")
    if not sep or not module or not name.isidentifier():
        raise FactoryError(
            f"model factory {spec!r} is not of the form MODULE:FUNCTION (e.g. my_models:make_gcn or "
            f"./models.py:make_gcn)"
        )
    return module, sep, name


def resolve(spec: str, path: str | None = None) -> Callable[..., nn.Module]:
    """The callable named by ``spec`` (``path``: a folder to import its module from); :class:`FactoryError` names
    what is missing."""
    module_name, _, attr = _split(spec)
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise FactoryError(f"model factory file {path} does not exist")
        name = f"mixq_user_{path.stem}"
        loader = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(loader)
        sys.modules[name] = module  # strict torch.export (Dynamo) looks the module of forward up by name
        try:
            loader.loader.exec_module(module)
        except Exception as error:
            del sys.modules[name]
            raise FactoryError(f"importing {path} failed: {type(error).__name__}: {error}") from error
    else:
        for entry in (path, ""):  # "": as `python -m`, modules in the working directory are found
            if entry is not None and entry not in sys.path:
                sys.path.insert(0, entry)
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise FactoryError(
                f"cannot import module {module_name!r} of model factory {spec!r}: {error}. Run from the folder "
                f"that holds it, set PYTHONPATH, or give a file path (./models.py:{attr})"
            ) from error
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise FactoryError(f"{module_name!r} has no callable {attr!r} (model factory {spec!r})")
    return factory


def build(spec: str, kwargs: dict, path: str | None = None) -> nn.Module:
    """``resolve(spec, path)(**kwargs)``, checked to be an ``nn.Module``."""
    factory = resolve(spec, path)
    try:
        model = factory(**kwargs)
    except FactoryError:
        raise
    except Exception as error:
        raise FactoryError(
            f"model factory {spec!r} failed when called with {kwargs}: {type(error).__name__}: {error}. It is "
            f"called as factory(in_channels=..., out_channels=...): accept those keyword arguments"
        ) from error
    if not isinstance(model, nn.Module):
        raise FactoryError(f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
