"""Checking a credential against a registry before it is kept, as
``docker login`` does: the registry's ``/v2/`` asked with it, through
whichever challenge (Basic, or a Bearer token for the registry as a whole)
the registry sends.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import Unauthorized
from ..reference import Reference
from .auth import RegistryAuth, TokenCache
from .credentials import Credential
from .transport import AuthFactory, RegistryOptions, Transport


def fixed_auth(credential: Credential) -> AuthFactory:
    """An auth factory that answers every registry with ``credential``,
    whatever the credential files say (``--creds``, a login being checked)."""
    cache = TokenCache()
    return lambda registry, scope: RegistryAuth(registry, credential, scope, cache=cache)


async def check_login(registry: str, credential: Credential,
                      options: RegistryOptions | None = None) -> None:
    """Raise ``Unauthorized`` unless ``registry`` accepts ``credential``."""
    options = replace(options or RegistryOptions(), auth=fixed_auth(credential))
    async with Transport(options) as transport:
        endpoint = transport.upstream(Reference(registry=registry))
        try:
            async with transport.open(endpoint, "GET", "/v2/", f"the registry API of {registry}",
                                      scope=""):
                pass
        except Unauthorized:
            raise Unauthorized(f"unauthorized: incorrect username or password for "
                               f"{registry}") from None
