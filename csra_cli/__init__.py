"""csra: batch image tagging with CSRA (class-specific residual attention).

The public API is imported on first use, so ``import csra_cli`` (and ``csra --help``) stays
free of torch: ``from csra_cli import load_model, create_model``.
"""
__version__ = "0.1.0"

_LAZY = {"load_model": "models.loading", "create_model": "models.csra", "CSRAModel": "models.csra"}

__all__ = ["load_model", "create_model", "CSRAModel", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
