"""csra: batch image tagging with CSRA (class-specific residual attention)."""
__version__ = "0.1.0"

from .api import load_model  # noqa: E402
from .model import CSRAModel, create_model  # noqa: E402

__all__ = ["load_model", "create_model", "CSRAModel", "__version__"]
