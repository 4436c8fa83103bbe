"""Object ids: 64 lowercase hex characters that carry their namespace's check.

An id is 32 bytes written as hex: 24 bytes of body followed by an 8-byte check.

* Named ids (`id_from_name`): body = HMAC-SHA256(secret, b"name:" + name)[:24].
  Deterministic for a namespace, different across namespaces (each namespace has
  its own random secret, created with its class and kept in the runtime database;
  renames keep the secret, so ids survive renames and redeploys).
* Unique ids (`new_unique_id`): body = 24 random bytes.
* Check: HMAC-SHA256(secret, b"check:" + body)[:8].  `from_string` accepts a string
  only if its check verifies under the namespace's secret, so random hex, malformed
  strings and ids of other namespaces are rejected with `ValueError`.

Invariant: ids compare and hash by their hex only; `.name` is informational (the
name an id was derived from, when this process knows it).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

__all__ = ["DurableObjectId", "IdFactory", "is_id_string", "new_namespace_secret"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_BODY = 24


def is_id_string(s: object) -> bool:
    """True if `s` has the shape of an id (64 lowercase hex chars); no check verified."""
    return isinstance(s, str) and _HEX64.fullmatch(s) is not None


def new_namespace_secret() -> bytes:
    return os.urandom(32)


class DurableObjectId:
    """The identity of one object. `str(id)` is 64 lowercase hex characters."""

    __slots__ = ("_hex", "name")

    def __init__(self, hex: str, name: str | None = None) -> None:
        if not is_id_string(hex):
            raise ValueError(f"invalid object id {hex!r}: expected 64 lowercase hex characters")
        self._hex = hex
        # The name this id was derived from, or None for unique ids / unknown names.
        self.name = name

    def __str__(self) -> str:
        return self._hex

    def __repr__(self) -> str:
        if self.name is not None:
            return f"DurableObjectId({self._hex!r}, name={self.name!r})"
        return f"DurableObjectId({self._hex!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, DurableObjectId):
            return self._hex == other._hex
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._hex)

    def to_string(self) -> str:
        return self._hex

    @property
    def shard_key(self) -> int:
        """A stable 32-bit number derived from the id, used to pick its shard."""
        return int(self._hex[:8], 16)


# Names whose ids an IdFactory remembers (cleared whole when full).
_NAME_CACHE = 4096


class IdFactory:
    """Creates and verifies the ids of one namespace, given its secret."""

    __slots__ = ("_secret", "_by_name")

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        # name -> id hex of names seen lately (two HMACs saved per repeat lookup).
        self._by_name: dict[str, str] = {}

    def _check(self, body: bytes) -> bytes:
        return hmac.new(self._secret, b"check:" + body, hashlib.sha256).digest()[:8]

    def from_name(self, name: str) -> DurableObjectId:
        if not isinstance(name, str):
            raise TypeError(f"object name must be str, not {type(name).__name__}")
        hex_id = self._by_name.get(name)
        if hex_id is None:
            body = hmac.new(self._secret, b"name:" + name.encode("utf-8"), hashlib.sha256)
            digest = body.digest()[:_BODY]
            hex_id = (digest + self._check(digest)).hex()
            if len(self._by_name) >= _NAME_CACHE:
                self._by_name.clear()
            self._by_name[name] = hex_id
        return DurableObjectId(hex_id, name)

    def unique(self) -> DurableObjectId:
        body = os.urandom(_BODY)
        return DurableObjectId((body + self._check(body)).hex())

    def verifies(self, s: str) -> bool:
        if not is_id_string(s):
            return False
        raw = bytes.fromhex(s)
        return hmac.compare_digest(raw[_BODY:], self._check(raw[:_BODY]))

    def from_string(self, s: str) -> DurableObjectId:
        if not isinstance(s, str):
            raise TypeError(f"object id must be str, not {type(s).__name__}")
        if not is_id_string(s):
            raise ValueError(
                f"malformed object id {s[:80]!r}: expected 64 lowercase hex characters"
            )
        if not self.verifies(s):
            raise ValueError("object id does not belong to this namespace")
        return DurableObjectId(s)
