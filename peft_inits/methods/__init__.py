"""The built-in methods, one module each; importing this package registers them in the order below."""

# ruff: noqa: I001  (the import order is the registration order, which lists and defaults follow)
from . import lora  # noqa: F401
from . import svfit  # noqa: F401
from . import loldu  # noqa: F401
from . import pissa  # noqa: F401
from . import milora  # noqa: F401
