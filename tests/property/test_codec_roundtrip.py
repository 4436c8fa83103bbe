"""Property: every nesting of codec values round-trips exactly (SPEC §4)."""

from __future__ import annotations

from datetime import timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stateroom._codec import decode, encode
from stateroom._ids import DurableObjectId
from tests.codec_assert import assert_same

_DAY_US = 86_400 * 1_000_000

# Fixed-offset zones: any offset strictly inside +-24h, to the microsecond, sometimes named.
timezones = st.builds(
    lambda us, name: timezone(timedelta(microseconds=us), *([name] if name is not None else [])),
    st.integers(-_DAY_US + 1, _DAY_US - 1),
    st.none() | st.text(max_size=6),
)
maybe_tz = st.none() | timezones

object_ids = st.builds(
    DurableObjectId,
    st.binary(min_size=32, max_size=32).map(bytes.hex),
    st.none() | st.text(max_size=8),
)

ints = (
    st.integers() | st.integers(-(2**300), 2**300) | st.sampled_from([2**63, -(2**63) - 1, 2**64])
)

# Leaves that can sit in sets and dict keys (no NaN: NaN never finds itself in a set).
hashable_leaves = st.one_of(
    st.none(),
    st.booleans(),
    ints,
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.decimals(allow_nan=False),
    st.dates(),
    st.datetimes(timezones=maybe_tz),
    st.times(timezones=maybe_tz),
    st.timedeltas(),
    st.uuids(),
    object_ids,
)
hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.lists(inner, max_size=3).map(tuple) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)

leaves = st.one_of(
    hashable_leaves,
    st.floats(),  # with nan, inf, -0.0
    st.decimals(),  # with NaN, sNaN, Infinity
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(hashables, inner, max_size=4),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_any_codec_value_round_trips_exactly(value: Any) -> None:
    data = encode(value)
    assert type(data) is bytes
    assert_same(value, decode(data))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_value_error(data: bytes) -> None:
    try:
        decode(data)
    except ValueError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values, st.data())
def test_corrupted_encodings_decode_or_raise_value_error(value: Any, data: st.DataObject) -> None:
    encoded = bytearray(encode(value))
    position = data.draw(st.integers(0, len(encoded) - 1))
    if data.draw(st.booleans()):
        encoded[position] = data.draw(st.integers(0, 255))
    else:
        del encoded[position:]
    try:
        decode(bytes(encoded))
    except ValueError:
        pass
