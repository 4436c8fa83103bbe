"""The value codec (SPEC §4): exact round-trips, TypeError for other types, ValueError
for malformed input, and no code execution on decode."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgpack
import pytest

from stateroom._codec import decode, encode
from stateroom._ids import DurableObjectId
from tests.codec_assert import assert_same

ALICE = DurableObjectId("ab" * 32, "alice")


def _tz(**kw: float) -> timezone:
    return timezone(timedelta(**kw))


def roundtrip(value: Any) -> Any:
    data = encode(value)
    assert type(data) is bytes
    back = decode(data)
    assert_same(value, back)
    return back


# --------------------------------------------------------------------------- round-trips


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        1,
        -1,
        2**63 - 1,
        -(2**63),
        2**64 - 1,
        "",
        "héllo ✓ \x00",
        b"",
        b"\x00\xff" * 10,
        0.0,
        -0.0,
        1.5,
        float("inf"),
        float("-inf"),
        float("nan"),
        [],
        (),
        {},
        set(),
        frozenset(),
        (1,),
        [1, "a", None],
        ("a", 1, 2.5, b"x", None, True),
        {1, 2, "three"},
        frozenset({1, (2, 3)}),
    ],
    ids=repr,
)
def test_plain_values_round_trip(value: Any) -> None:
    roundtrip(value)


@pytest.mark.parametrize(
    "value",
    [2**64, 2**200, -(2**63) - 1, -(2**100), 10**400, -(10**400), -(2**64), 2**64 + 1],
    ids=lambda v: f"int{v.bit_length()}{'neg' if v < 0 else ''}",
)
def test_big_ints_round_trip(value: int) -> None:
    roundtrip(value)


def test_bool_stays_bool_and_int_stays_int() -> None:
    back = roundtrip([True, 1, False, 0, (True, 1)])
    assert back[0] is True and back[2] is False
    assert type(back[1]) is int and type(back[3]) is int


@pytest.mark.parametrize(
    "value",
    [
        datetime(2024, 2, 29, 12, 30, 45, 123456),
        datetime(1, 1, 1),
        datetime(9999, 12, 31, 23, 59, 59, 999999),
        datetime(2024, 1, 1, tzinfo=UTC),
        datetime(2024, 1, 1, 5, 4, 3, 2, tzinfo=_tz(hours=5, minutes=30)),
        datetime(2024, 1, 1, 5, 4, 3, 2, tzinfo=_tz(seconds=-30)),
        datetime(2024, 1, 1, tzinfo=_tz(hours=-23, minutes=-59, seconds=-59, microseconds=-1)),
        datetime(2024, 1, 1, tzinfo=_tz(microseconds=1)),
        datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=1), "CET")),
        datetime(2024, 11, 3, 1, 30, fold=1),
        date(2024, 2, 29),
        date(1, 1, 1),
        date(9999, 12, 31),
        time(),
        time(23, 59, 59, 999999),
        time(12, 0, tzinfo=_tz(hours=-3, minutes=-30)),
        time(12, 0, 1, 5, tzinfo=_tz(seconds=-30)),
        time(1, 30, fold=1),
        timedelta(),
        timedelta(days=-1, microseconds=1),
        timedelta(days=999999999, hours=23, minutes=59, seconds=59, microseconds=999999),
        timedelta(days=-999999999),
    ],
    ids=repr,
)
def test_temporal_values_round_trip(value: Any) -> None:
    roundtrip(value)


def test_aware_datetime_keeps_exact_offset() -> None:
    for off in (_tz(hours=5, minutes=30), _tz(seconds=-30), _tz(hours=-12, microseconds=7)):
        value = datetime(2030, 6, 1, 8, 0, 0, 654321, tzinfo=off)
        back = roundtrip(value)
        assert back.utcoffset() == off.utcoffset(None)
        assert back.microsecond == 654321
    naive = roundtrip(datetime(2030, 6, 1))
    assert naive.tzinfo is None


def test_zoneinfo_datetime_keeps_offset_as_fixed_timezone() -> None:
    zoneinfo = pytest.importorskip("zoneinfo")
    try:
        tz = zoneinfo.ZoneInfo("America/New_York")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no tz database")
    value = datetime(2024, 7, 1, 9, 0, tzinfo=tz)
    back = decode(encode(value))
    assert type(back) is datetime
    assert back == value
    assert back.utcoffset() == timedelta(hours=-4)


@pytest.mark.parametrize(
    "text",
    [
        "0",
        "-0",
        "1.10",
        "1E+3",
        "1e-7",
        "-0E-5",
        "123456789012345678901234567890.123456789",
        "NaN",
        "-NaN",
        "NaN123",
        "sNaN",
        "Infinity",
        "-Infinity",
        "0.000",
        "1.000E+999999",
    ],
)
def test_decimals_round_trip_with_identical_str(text: str) -> None:
    value = Decimal(text)
    back = roundtrip(value)
    assert str(back) == str(value)


def test_uuid_and_object_id_round_trip() -> None:
    roundtrip(uuid.UUID("12345678-1234-5678-1234-567812345678"))
    roundtrip(uuid.uuid4())
    back = roundtrip(ALICE)
    assert str(back) == "ab" * 32 and back.name == "alice"
    anon = roundtrip(DurableObjectId("0f" * 32))
    assert anon.name is None


def test_nested_structures_round_trip() -> None:
    value = {
        "users": [
            {"id": ALICE, "joined": datetime(2024, 1, 1, tzinfo=UTC), "tags": {"a"}},
            {"id": None, "balance": Decimal("-0.00"), "pos": (1.5, -0.0, float("nan"))},
        ],
        "matrix": [[1, 2], [3, (4, [5, (6,)])]],
        "deep": ((((((),),),),),),
        "frozen": frozenset({(1, 2), frozenset({3}), "x"}),
        "when": (date(2020, 1, 1), time(1, 2), timedelta(seconds=3)),
        "big": [2**200, -(2**100), {2**70: "k"}],
        "blob": b"\x00" * 1000,
        "uid": uuid.UUID(int=1),
    }
    roundtrip(value)


def test_list_and_tuple_are_distinguished_at_every_level() -> None:
    back = roundtrip([(1, [2, (3, [])])])
    assert type(back) is list and type(back[0]) is tuple
    assert type(back[0][1]) is list and type(back[0][1][1]) is tuple


def test_dict_keys_of_any_hashable_codec_type() -> None:
    value = {
        (1, "a"): 1,
        frozenset({1, 2}): 2,
        3: 3,
        -(2**100): 4,
        b"k": 5,
        None: 6,
        True: 7,
        2.5: 8,
        Decimal("1E+3"): 9,
        date(2024, 1, 1): 10,
        datetime(2024, 1, 1, tzinfo=_tz(hours=5, minutes=30)): 11,
        uuid.UUID(int=7): 12,
        ALICE: 13,
        ((1, 2), frozenset({"x"})): 14,
        "s": 15,
    }
    back = roundtrip(value)
    assert back[(1, "a")] == 1 and back[frozenset({1, 2})] == 2


def test_encoding_is_deterministic_for_equal_plain_values() -> None:
    value = {"a": [1, 2, (3, 4)], "b": {"c": Decimal("1.0")}}
    assert encode(value) == encode(value)


# --------------------------------------------------------------------------- refusals


class Foo:
    pass


class Color(enum.IntEnum):
    RED = 1


class MyStr(str):
    pass


class MyDict(dict):  # type: ignore[type-arg]
    pass


class MyTuple(tuple):  # type: ignore[type-arg]
    pass


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (Foo(), "Foo"),
        (Color.RED, "Color"),
        (MyStr("x"), "MyStr"),
        (object(), "object"),
        (lambda: None, "function"),
        ([1, Foo()], "Foo"),
        ({"k": [1, {"deep": Foo()}]}, "Foo"),
        ({Foo(): 1}, "Foo"),
        ((1, (2, Color.RED)), "Color"),
        ({2, Color.RED}, "Color"),
        (MyDict(), "MyDict"),
        (MyTuple(), "MyTuple"),
        (bytearray(b"x"), "bytearray"),
        (memoryview(b"x"), "memoryview"),
        ([b"ok", bytearray(b"x")], "bytearray"),
        ({"k": (memoryview(b"x"),)}, "memoryview"),
        (msgpack.ExtType(1, b"\x90"), "ExtType"),
        (msgpack.Timestamp(0, 0), "Timestamp"),
        (complex(1, 2), "complex"),
        (range(3), "range"),
        (Exception("boom"), "Exception"),
        (Foo, "type"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_unsupported_types_raise_type_error_naming_the_type(value: Any, type_name: str) -> None:
    with pytest.raises(TypeError, match=f"'{type_name}'") as info:
        encode(value)
    assert "stateroom codec cannot encode" in str(info.value)


def test_datetime_and_decimal_subclasses_are_refused() -> None:
    class MyDatetime(datetime):
        pass

    class MyDecimal(Decimal):
        pass

    with pytest.raises(TypeError, match="MyDatetime"):
        encode(MyDatetime(2024, 1, 1))
    with pytest.raises(TypeError, match="MyDecimal"):
        encode([MyDecimal("1")])


def test_self_containing_value_raises_value_error() -> None:
    value: list[Any] = []
    value.append(value)
    with pytest.raises(ValueError, match="nested too deeply or contains itself"):
        encode(value)


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\x91",  # array of one, truncated
        b"\x01\x02",  # trailing data
        b"\x81\x91\x01\x02",  # map with an unhashable (list) key
        b"\xd4\x05",  # truncated ext
        msgpack.packb(msgpack.ExtType(99, b"x")),  # unknown ext code
        b"\xd4\xfb\x00",  # ext code -5 (reserved range), unknown
        msgpack.packb(msgpack.ExtType(1, b"\xc1")),  # tuple with garbage payload
        msgpack.packb(msgpack.ExtType(1, msgpack.packb({"a": 1}))),  # tuple of a map
        msgpack.packb(msgpack.ExtType(2, msgpack.packb([[1]]))),  # set of a list
        msgpack.packb(msgpack.ExtType(4, b"")),  # empty big int
        msgpack.packb(msgpack.ExtType(5, msgpack.packb([2024, 13, 1, 0, 0, 0, 0, 0, None, None]))),
        msgpack.packb(msgpack.ExtType(5, msgpack.packb([2024, 1, 1]))),
        msgpack.packb(msgpack.ExtType(5, msgpack.packb([2024, 1, 1, 0, 0, 0, 0, 0, 10**12, None]))),
        msgpack.packb(msgpack.ExtType(6, msgpack.packb(["2024", 1, 1]))),
        msgpack.packb(msgpack.ExtType(7, msgpack.packb([25, 0, 0, 0, 0, None, None]))),
        msgpack.packb(msgpack.ExtType(8, msgpack.packb([10**12, 0, 0]))),
        msgpack.packb(msgpack.ExtType(9, b"not a number")),
        msgpack.packb(msgpack.ExtType(9, b"\xff")),
        msgpack.packb(msgpack.ExtType(10, b"short")),
        msgpack.packb(msgpack.ExtType(11, msgpack.packb(["zz", None]))),
        msgpack.packb(msgpack.ExtType(11, msgpack.packb(["ab" * 32, 5]))),
        b"\xdd\xff\xff\xff\xff",  # array claiming 4 billion items
        b"\x91" * 100_000,  # absurdly deep nesting
    ],
    ids=lambda d: d[:12].hex(),
)
def test_malformed_input_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match="stateroom codec cannot decode"):
        decode(data)


def test_nested_malformed_ext_raises_value_error() -> None:
    inner = msgpack.ExtType(99, b"")
    outer = msgpack.ExtType(1, msgpack.packb([1, inner]))
    with pytest.raises(ValueError, match="unknown extension type code 99"):
        decode(msgpack.packb({"k": outer}))


def test_decode_accepts_bytes_like_and_refuses_other_types() -> None:
    data = encode({"a": (1, 2)})
    assert decode(bytearray(data)) == {"a": (1, 2)}
    assert decode(memoryview(data)) == {"a": (1, 2)}
    with pytest.raises(TypeError):
        decode("not bytes")  # type: ignore[arg-type]


def test_decode_never_unpickles() -> None:
    import pickle

    payload = pickle.dumps(Foo())
    with pytest.raises(ValueError):
        decode(payload)
    with pytest.raises(ValueError):
        decode(msgpack.packb(msgpack.ExtType(1, payload)))
