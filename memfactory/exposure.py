"""Who can reach a server, and constant-time secret comparison: shared by ``app.py`` and ``memfactory serve``.

Both servers refuse to listen beyond this machine without credentials, because the web UI starts
training subprocesses and writes files, and the model server spends compute for whoever asks.
This module has no heavy imports so that a refusal costs nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine (127.0.0.0/8, ::1, localhost).

    Anything else counts as exposed, on purpose: ``0.0.0.0``, ``::``, an empty host (every
    interface), a LAN address, and any other host name (it might resolve to a public address;
    we do not resolve it to find out).
    """
    name = host.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])  # drop an IPv6 zone ("::1%lo")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1
    return address.is_loopback


def secret_equal(given: str | bytes, expected: str | bytes) -> bool:
    """``given == expected`` in time that depends on neither value nor length.

    Both sides are hashed first, so ``hmac.compare_digest`` compares two 32-byte digests: a client
    timing the answer learns neither a matching prefix nor the secret's length.
    """
    def digest(value: str | bytes) -> bytes:
        raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        return hashlib.sha256(raw).digest()

    return hmac.compare_digest(digest(given), digest(expected))
