"""The value codec: how RPC arguments, results and KV storage values become bytes.

Every value that crosses a process boundary or is written to storage goes through
`encode` and comes back through `decode`. The wire format is MessagePack (the
`msgpack` C implementation does the common case: None, bool, int, float, str, bytes,
list and dict), with MessagePack extension types for everything else the codec
supports: tuple, set, frozenset, ints outside the 64-bit range, datetime, date, time,
timedelta, Decimal, UUID and DurableObjectId, nested in any way. Dict keys may be any
hashable codec value.

Invariants:

* Exact round-trip: `decode(encode(v))` equals `v` and has the same type, recursively
  (a tuple comes back a tuple, a bool a bool, -0.0 stays -0.0, nan stays nan, an aware
  datetime keeps its exact UTC offset, `str()` of a Decimal is unchanged). The one
  normalization: an aware datetime/time comes back with a fixed-offset
  `datetime.timezone` (a zoneinfo zone becomes its offset at that instant).
* Only the exact types above are accepted. Anything else -- subclasses of str, int or
  dict, enum members, bytearray, memoryview, custom objects, functions -- raises
  `TypeError` naming the type. `encode` is all-or-nothing: it raises before returning
  any bytes, so nothing partial is ever sent or written.
* Decoding never runs code: there is no pickle, only MessagePack and a fixed table of
  extension decoders building plain values. Malformed or truncated input raises
  `ValueError`, and every value `decode` returns is a codec value.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

import msgpack

from ._ids import DurableObjectId

__all__ = ["decode", "encode"]

# Extension type codes. Part of the storage format: never renumber, only append.
EXT_TUPLE: Final = 1
EXT_SET: Final = 2
EXT_FROZENSET: Final = 3
EXT_BIGINT: Final = 4
EXT_DATETIME: Final = 5
EXT_DATE: Final = 6
EXT_TIME: Final = 7
EXT_TIMEDELTA: Final = 8
EXT_DECIMAL: Final = 9
EXT_UUID: Final = 10
EXT_OBJECT_ID: Final = 11

# Initial size of each packer's buffer; it grows as needed.
_INITIAL_BUFFER: Final = 4096

# Types msgpack packs itself under strict_types that are *not* codec values: they would
# silently come back as something else (bytes, a raw ExtType, a Timestamp), so
# `encode` looks for them before packing.
_FOREIGN_NATIVE: Final[frozenset[type]] = frozenset(
    {bytearray, memoryview, msgpack.ExtType, msgpack.Timestamp}
)
# Container types whose members the pre-pack scan has to look at.
_NESTING: Final[frozenset[type]] = frozenset({list, dict, tuple, set, frozenset})
_SCAN_NEEDED: Final[frozenset[type]] = _FOREIGN_NATIVE | _NESTING


def _type_error(value: object) -> TypeError:
    return TypeError(f"stateroom codec cannot encode value of type {type(value).__name__!r}")


# --------------------------------------------------------------------------- encode


def _pack(value: Any) -> bytes:
    # A fresh packer per call: Packer objects are not thread-safe, and `_default`
    # re-enters this function for the members of tuples and sets. A small initial
    # buffer keeps construction cheap (msgpack's default 256 KiB costs an mmap when
    # packers nest).
    packer = msgpack.Packer(
        default=_default, strict_types=True, use_bin_type=True, buf_size=_INITIAL_BUFFER
    )
    return packer.pack(value)


def _offset_us(tz_offset: _dt.timedelta | None) -> int | None:
    if tz_offset is None:
        return None
    return (tz_offset.days * 86_400 + tz_offset.seconds) * 1_000_000 + tz_offset.microseconds


def _tz_fields(value: _dt.datetime | _dt.time) -> list[Any]:
    """[offset in microseconds or None, custom timezone name or None]."""
    off = value.utcoffset()
    if off is None:
        return [None, None]
    name = None
    tz = value.tzinfo
    if type(tz) is _dt.timezone:
        # Keep an explicit name (timezone(offset, "IST")); the default one is implied.
        own = tz.tzname(None)
        if own != _dt.timezone(off).tzname(None):
            name = own
    return [_offset_us(off), name]


def _enc_tuple(v: tuple[Any, ...]) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_TUPLE, _pack(list(v)))


def _enc_set(v: set[Any]) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_SET, _pack(list(v)))


def _enc_frozenset(v: frozenset[Any]) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_FROZENSET, _pack(list(v)))


def _enc_int(v: int) -> msgpack.ExtType:
    # Only reached for ints outside [-2**63, 2**64): two's complement, big-endian.
    return msgpack.ExtType(EXT_BIGINT, v.to_bytes(v.bit_length() // 8 + 1, "big", signed=True))


def _enc_datetime(v: _dt.datetime) -> msgpack.ExtType:
    fields = [v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond, v.fold]
    return msgpack.ExtType(EXT_DATETIME, _pack(fields + _tz_fields(v)))


def _enc_date(v: _dt.date) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_DATE, _pack([v.year, v.month, v.day]))


def _enc_time(v: _dt.time) -> msgpack.ExtType:
    fields = [v.hour, v.minute, v.second, v.microsecond, v.fold]
    return msgpack.ExtType(EXT_TIME, _pack(fields + _tz_fields(v)))


def _enc_timedelta(v: _dt.timedelta) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_TIMEDELTA, _pack([v.days, v.seconds, v.microseconds]))


def _enc_decimal(v: Decimal) -> msgpack.ExtType:
    # str() is exact for every Decimal (sign, digits, exponent, NaN payloads, sNaN)
    # and Decimal(str) rebuilds it without rounding.
    return msgpack.ExtType(EXT_DECIMAL, str(v).encode("ascii"))


def _enc_uuid(v: uuid.UUID) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_UUID, v.bytes)


def _enc_object_id(v: DurableObjectId) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_OBJECT_ID, _pack([str(v), v.name]))


_ENCODERS: Final[dict[type, Callable[[Any], msgpack.ExtType]]] = {
    tuple: _enc_tuple,
    set: _enc_set,
    frozenset: _enc_frozenset,
    int: _enc_int,
    _dt.datetime: _enc_datetime,
    _dt.date: _enc_date,
    _dt.time: _enc_time,
    _dt.timedelta: _enc_timedelta,
    Decimal: _enc_decimal,
    uuid.UUID: _enc_uuid,
    DurableObjectId: _enc_object_id,
}


def _default(value: Any) -> msgpack.ExtType:
    """msgpack's hook for everything it does not pack itself (exact types only)."""
    enc = _ENCODERS.get(type(value))
    if enc is None:
        raise _type_error(value)
    return enc(value)


def _reject_foreign_native(value: Any) -> None:
    """Raise TypeError if `value` holds a type msgpack would pack but the codec refuses.

    Unknown types need no search (msgpack hands them to `_default`, which raises); only
    bytearray, memoryview, ExtType and Timestamp would slip through, so only containers
    are walked. A self-containing value ends in RecursionError (see `encode`).
    """
    kind = type(value)
    if kind is dict:
        for k, v in value.items():
            if type(k) in _SCAN_NEEDED:
                _reject_foreign_native(k)
            if type(v) in _SCAN_NEEDED:
                _reject_foreign_native(v)
    elif kind in _FOREIGN_NATIVE:
        raise _type_error(value)
    elif kind in _NESTING:
        for v in value:
            if type(v) in _SCAN_NEEDED:
                _reject_foreign_native(v)


def encode(value: Any) -> bytes:
    """Serialize a codec value to bytes; `TypeError` (naming the type) for anything else."""
    try:
        _reject_foreign_native(value)
        return _pack(value)
    except RecursionError:
        raise ValueError(
            "stateroom codec cannot encode value: nested too deeply or contains itself"
        ) from None


# --------------------------------------------------------------------------- decode


class _Malformed(ValueError):
    pass


def _unpack(data: bytes) -> Any:
    # timestamp=3: the msgpack timestamp extension (-1) is decoded by msgpack itself,
    # bypassing ext_hook; we never write it, but if input carries one it becomes an
    # aware UTC datetime (a codec value) rather than a msgpack.Timestamp.
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False, timestamp=3)


def _expect_list(data: bytes, length: int, what: str) -> list[Any]:
    fields = _unpack(data)
    if type(fields) is not list or len(fields) != length:
        raise _Malformed(f"malformed {what} extension")
    return fields


def _expect_ints(fields: list[Any], what: str) -> None:
    if any(type(f) is not int for f in fields):
        raise _Malformed(f"malformed {what} extension")


def _tzinfo(offset_us: Any, name: Any, what: str) -> _dt.timezone | None:
    if offset_us is None:
        if name is not None:
            raise _Malformed(f"malformed {what} extension")
        return None
    if type(offset_us) is not int or (name is not None and type(name) is not str):
        raise _Malformed(f"malformed {what} extension")
    offset = _dt.timedelta(microseconds=offset_us)
    return _dt.timezone(offset) if name is None else _dt.timezone(offset, name)


def _members(data: bytes, what: str) -> list[Any]:
    items = _unpack(data)
    if type(items) is not list:
        raise _Malformed(f"malformed {what} extension")
    return items


def _dec_tuple(data: bytes) -> tuple[Any, ...]:
    return tuple(_members(data, "tuple"))


def _dec_set(data: bytes) -> set[Any]:
    return set(_members(data, "set"))


def _dec_frozenset(data: bytes) -> frozenset[Any]:
    return frozenset(_members(data, "frozenset"))


def _dec_int(data: bytes) -> int:
    if not data:
        raise _Malformed("malformed int extension")
    return int.from_bytes(data, "big", signed=True)


def _dec_datetime(data: bytes) -> _dt.datetime:
    fields = _expect_list(data, 10, "datetime")
    _expect_ints(fields[:8], "datetime")
    tz = _tzinfo(fields[8], fields[9], "datetime")
    y, mo, d, h, mi, s, us, fold = fields[:8]
    return _dt.datetime(y, mo, d, h, mi, s, us, tzinfo=tz, fold=fold)


def _dec_date(data: bytes) -> _dt.date:
    fields = _expect_list(data, 3, "date")
    _expect_ints(fields, "date")
    return _dt.date(*fields)


def _dec_time(data: bytes) -> _dt.time:
    fields = _expect_list(data, 7, "time")
    _expect_ints(fields[:5], "time")
    tz = _tzinfo(fields[5], fields[6], "time")
    h, mi, s, us, fold = fields[:5]
    return _dt.time(h, mi, s, us, tzinfo=tz, fold=fold)


def _dec_timedelta(data: bytes) -> _dt.timedelta:
    fields = _expect_list(data, 3, "timedelta")
    _expect_ints(fields, "timedelta")
    return _dt.timedelta(days=fields[0], seconds=fields[1], microseconds=fields[2])


def _dec_decimal(data: bytes) -> Decimal:
    return Decimal(data.decode("ascii"))


def _dec_uuid(data: bytes) -> uuid.UUID:
    if len(data) != 16:
        raise _Malformed("malformed UUID extension")
    return uuid.UUID(bytes=data)


def _dec_object_id(data: bytes) -> DurableObjectId:
    hex_, name = _expect_list(data, 2, "object id")
    if type(hex_) is not str or (name is not None and type(name) is not str):
        raise _Malformed("malformed object id extension")
    return DurableObjectId(hex_, name)


_DECODERS: Final[dict[int, Callable[[bytes], Any]]] = {
    EXT_TUPLE: _dec_tuple,
    EXT_SET: _dec_set,
    EXT_FROZENSET: _dec_frozenset,
    EXT_BIGINT: _dec_int,
    EXT_DATETIME: _dec_datetime,
    EXT_DATE: _dec_date,
    EXT_TIME: _dec_time,
    EXT_TIMEDELTA: _dec_timedelta,
    EXT_DECIMAL: _dec_decimal,
    EXT_UUID: _dec_uuid,
    EXT_OBJECT_ID: _dec_object_id,
}


def _ext_hook(code: int, data: bytes) -> Any:
    dec = _DECODERS.get(code)
    if dec is None:
        raise _Malformed(f"unknown extension type code {code}")
    return dec(data)


def decode(data: bytes) -> Any:
    """Rebuild a value from `encode`'s bytes; `ValueError` if they are malformed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"decode() needs bytes, not {type(data).__name__!r}")
    try:
        return _unpack(data)
    except _Malformed as exc:
        raise ValueError(f"stateroom codec cannot decode data: {exc}") from None
    except Exception as exc:  # msgpack errors, bad field values, unhashable keys, ...
        raise ValueError(
            f"stateroom codec cannot decode data: {type(exc).__name__}: {exc}"
        ) from exc
