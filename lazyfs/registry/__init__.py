"""Talking to registries: credentials, the token dance, transport, and the
client that fetches manifests, blobs and ranges."""

from .client import RegistryClient
from .transport import RegistryOptions

__all__ = ["RegistryClient", "RegistryOptions"]
