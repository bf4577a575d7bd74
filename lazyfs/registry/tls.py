"""The TLS context of the registry client."""

from __future__ import annotations

import ssl


class OnDemandTrust(ssl.SSLContext):
    """``ssl.create_default_context()``, except that the system's trust store
    (tens of milliseconds to parse) is loaded at the first TLS handshake:
    a mount from a plain-HTTP registry never pays for it."""

    trusted = False
    """Whether the trust store was loaded: a TLS handshake was begun."""

    def _trust(self) -> None:
        if not self.trusted:
            self.load_default_certs(ssl.Purpose.SERVER_AUTH)
            self.trusted = True

    def wrap_bio(self, *args, **kw):
        self._trust()
        return super().wrap_bio(*args, **kw)

    def wrap_socket(self, *args, **kw):
        self._trust()
        return super().wrap_socket(*args, **kw)
