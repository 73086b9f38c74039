"""wasi:http/types ``fields`` (headers and trailers).

Fields keep their entries as ``(name, value)`` pairs in insertion order, with
repeated names as separate entries and names in their original casing (the
WIT says ``entries`` returns "the original casing"); names match
case-insensitively. Values are ``bytes``.

Rules, as ``wasmtime serve`` applies them by default:

* names must be RFC 9110 tokens, values RFC 9110 ``field-value``s (visible
  ASCII, obs-text, inner SP/HTAB; no CR, LF, NUL or other controls, no
  leading/trailing whitespace); ``content-length`` values must be ``1*DIGIT``.
  Violations give ``header-error.invalid-syntax``;
* the hop-by-hop names in :data:`FORBIDDEN_HEADERS` give ``forbidden`` and
  are dropped from fields received from a peer;
* fields handed to a request/response, or obtained from one, are immutable
  (``immutable``); ``clone`` gives a mutable copy;
* one fields value holds at most :data:`FIELDS_SIZE_LIMIT` bytes (growing past
  it traps, as in wasmtime: a guest cannot exhaust host memory through it).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable

from .ctx import WasiCtx
from .http_interface import types_interface
from .interface import Case, Err, HostInterface, HostResource, Trap

INTERFACES: tuple[HostInterface, ...] = ()

# wasmtime's DEFAULT_FORBIDDEN_HEADERS: connection management belongs to the host.
FORBIDDEN_HEADERS: frozenset[str] = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "transfer-encoding", "upgrade", "host", "http2-settings",
})

FIELDS_SIZE_LIMIT = 128 * 1024
# Accounted per entry on top of name and value, so empty values still cost something.
_ENTRY_OVERHEAD = 32

# RFC 9110 tchar, and the bytes a field-value may hold (VCHAR, obs-text, SP, HTAB).
# Set and bytes.translate checks are cheaper than regular expressions here.
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_FIELD_VALUE_BYTES = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])

INVALID_SYNTAX = Case("invalid-syntax")
FORBIDDEN = Case("forbidden")
IMMUTABLE = Case("immutable")

Entries = list[tuple[str, bytes]]


@lru_cache(maxsize=1024)
def field_key(name: str) -> str | None:
    """The lower-case key of a valid (token) field name; None when invalid.

    Cached: guests use the same few names on every request.
    """
    if name and _TOKEN_CHARS.issuperset(name):
        return name.lower()
    return None


def valid_field_name(name: str) -> bool:
    return field_key(name) is not None


def valid_field_value(name_lower: str, value: bytes) -> bool:
    if name_lower == "content-length":
        return value.isdigit()  # bytes.isdigit: 1*DIGIT, ASCII only
    # Only allowed bytes, and no leading/trailing SP or HTAB (strip returns an
    # unchanged bytes object itself, so the comparison is then an identity check).
    return not value.translate(None, _FIELD_VALUE_BYTES) and value.strip(b" \t") == value


def _entry_size(name: str, value: bytes) -> int:
    return len(name) + len(value) + _ENTRY_OVERHEAD


@types_interface.resource("fields")
class Fields(HostResource):
    """A ``fields`` value; ``mutable`` is False once it belongs to a message."""

    __slots__ = ("_entries", "mutable", "_size")

    def __init__(self, entries: Entries | None = None, *, mutable: bool = True, size: int | None = None) -> None:
        """``size``: the entries' accounted size when the caller already knows it."""
        # Immutable fields may share this list with other immutable views.
        if entries is None:
            entries, size = [], 0
        self._entries: Entries = entries
        self.mutable = mutable
        self._size = size if size is not None else sum(_entry_size(n, v) for n, v in entries)

    @classmethod
    def received(cls, entries: Iterable[tuple[str | bytes, bytes]]) -> Fields:
        """Immutable fields from an HTTP peer; forbidden (hop-by-hop) names are dropped.

        Names given as ``bytes`` (raw from the wire) are decoded as latin-1 and
        lower-cased, as hyper presents incoming header names.
        """
        kept: Entries = []
        for name, value in entries:
            if isinstance(name, bytes):
                name = key = name.decode("latin-1").lower()
            else:
                key = name.lower()
            if key not in FORBIDDEN_HEADERS:
                kept.append((name, bytes(value)))
        return cls(kept, mutable=False)

    @classmethod
    def from_list(cls, entries: Iterable[tuple[str, bytes]]) -> Fields:
        """``fields.from-list``: each entry checked as ``append`` does, in order."""
        checked: Entries = []
        size = 0
        for name, value in entries:
            value = _checked_entry(name, value)
            size += _entry_size(name, value)
            if size > FIELDS_SIZE_LIMIT:
                raise Trap(f"fields exceed the {FIELDS_SIZE_LIMIT}-byte limit")
            checked.append((name, value))
        return cls(checked, mutable=True, size=size)

    def view(self) -> Fields:
        """A new immutable handle on the same entries (``headers()`` getters)."""
        return Fields(self._entries, mutable=False, size=self._size)

    def freeze(self) -> None:
        self.mutable = False

    def copy(self) -> Fields:
        return Fields(list(self._entries), mutable=True, size=self._size)

    def entries(self) -> Entries:
        return list(self._entries)

    def get(self, name: str) -> list[bytes]:
        key = field_key(name)
        if key is None:
            return []
        return [value for n, value in self._entries if n.lower() == key]

    def has(self, name: str) -> bool:
        key = field_key(name)
        if key is None:
            return False
        return any(n.lower() == key for n, _ in self._entries)

    def content_length(self) -> int | None:
        """The declared ``content-length`` or None; ValueError when invalid or conflicting."""
        value: bytes | None = None
        for name, entry in self._entries:
            if name.lower() == "content-length":
                if value is not None and entry != value:
                    raise ValueError("conflicting content-length values")
                value = entry
        if value is None:
            return None
        if not value.isdigit():  # 1*DIGIT (bytes.isdigit is ASCII-only)
            raise ValueError(f"invalid content-length {value!r}")
        return int(value)

    # -- mutation (checks in wasmtime's order, so guests see the same error) ----------
    def _check_mutable(self) -> None:
        if not self.mutable:
            raise Err(IMMUTABLE)

    def _replace(self, entries: Entries) -> None:
        size = sum(_entry_size(n, v) for n, v in entries)
        if size > FIELDS_SIZE_LIMIT:
            raise Trap(f"fields exceed the {FIELDS_SIZE_LIMIT}-byte limit")
        self._entries = entries
        self._size = size

    def set(self, name: str, values: list[bytes]) -> None:
        key = _checked_key(name)
        self._check_mutable()
        new_values = [bytes(v) for v in values]
        if not all(valid_field_value(key, v) for v in new_values):
            raise Err(INVALID_SYNTAX)
        # The new values take the place of the first old one (serialization order).
        kept: Entries = []
        position: int | None = None
        for entry in self._entries:
            if entry[0].lower() == key:
                if position is None:
                    position = len(kept)
            else:
                kept.append(entry)
        if position is None:
            position = len(kept)
        self._replace(kept[:position] + [(name, v) for v in new_values] + kept[position:])

    def delete(self, name: str) -> None:
        key = _checked_key(name)
        self._check_mutable()
        self._replace([entry for entry in self._entries if entry[0].lower() != key])

    def append(self, name: str, value: bytes) -> None:
        value = _checked_entry(name, value)
        self._check_mutable()
        size = self._size + _entry_size(name, value)
        if size > FIELDS_SIZE_LIMIT:
            raise Trap(f"fields exceed the {FIELDS_SIZE_LIMIT}-byte limit")
        self._entries.append((name, value))
        self._size = size


def _checked_key(name: str) -> str:
    """The key of a name a guest may set; Err(header-error) otherwise."""
    key = field_key(name)
    if key is None:
        raise Err(INVALID_SYNTAX)
    if key in FORBIDDEN_HEADERS:
        raise Err(FORBIDDEN)
    return key


def _checked_entry(name: str, value: bytes) -> bytes:
    """The value (as bytes) of an entry a guest may add; Err(header-error) otherwise."""
    key = _checked_key(name)
    value = bytes(value)
    if not valid_field_value(key, value):
        raise Err(INVALID_SYNTAX)
    return value


# -- wasi:http/types fields functions ------------------------------------------------

@types_interface.func("[constructor]fields")
def fields_new(ctx: WasiCtx) -> Fields:
    return Fields()


@types_interface.func("[static]fields.from-list")
def fields_from_list(ctx: WasiCtx, entries: list[tuple[str, bytes]]) -> Fields:
    return Fields.from_list(entries)  # raises Err(header-error) on the first bad entry


@types_interface.func("[method]fields.get")
def fields_get(ctx: WasiCtx, self: Fields, name: str) -> list[bytes]:
    return self.get(name)


@types_interface.func("[method]fields.has")
def fields_has(ctx: WasiCtx, self: Fields, name: str) -> bool:
    return self.has(name)


@types_interface.func("[method]fields.set")
def fields_set(ctx: WasiCtx, self: Fields, name: str, value: list[bytes]) -> None:
    self.set(name, value)


@types_interface.func("[method]fields.delete")
def fields_delete(ctx: WasiCtx, self: Fields, name: str) -> None:
    self.delete(name)


@types_interface.func("[method]fields.append")
def fields_append(ctx: WasiCtx, self: Fields, name: str, value: bytes) -> None:
    self.append(name, value)


@types_interface.func("[method]fields.entries")
def fields_entries(ctx: WasiCtx, self: Fields) -> list[tuple[str, bytes]]:
    return self.entries()


@types_interface.func("[method]fields.clone")
def fields_clone(ctx: WasiCtx, self: Fields) -> Fields:
    return self.copy()
