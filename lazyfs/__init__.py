"""lazyfs: mount container images from a registry, fetching only what is read."""

from .errors import *  # noqa: F401,F403
from .errors import LazyfsError

__version__ = "0.1.0"
