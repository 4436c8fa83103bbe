"""Exact-equality assertion for values that went through the value codec."""

import math
from datetime import datetime, time
from decimal import Decimal
from typing import Any

from stateroom._ids import DurableObjectId


def assert_same(a: Any, b: Any, path: str = "value") -> None:
    """`b` is `a` rebuilt exactly: same types all the way down, same values.

    nan equals nan, -0.0 differs from 0.0, Decimals compare by `str`, aware
    datetimes/times compare by wall time, UTC offset, tzname and fold, object ids by hex
    and name.
    """
    assert type(a) is type(b), f"{path}: type {type(a).__name__} != {type(b).__name__}"
    kind = type(a)
    if kind is float:
        if math.isnan(a):
            assert math.isnan(b), f"{path}: {a!r} != {b!r}"
        else:
            assert a == b, f"{path}: {a!r} != {b!r}"
            assert math.copysign(1.0, a) == math.copysign(1.0, b), f"{path}: sign of zero"
    elif kind is Decimal:
        assert str(a) == str(b), f"{path}: {a!r} != {b!r}"
    elif kind in (list, tuple):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif kind in (set, frozenset):
        assert len(a) == len(b), f"{path}: size {len(a)} != {len(b)}"
        b_members = {m: m for m in b}
        for m in a:
            assert m in b_members, f"{path}: {m!r} missing"
            assert_same(m, b_members[m], f"{path}{{{m!r}}}")
    elif kind is dict:
        assert len(a) == len(b), f"{path}: size {len(a)} != {len(b)}"
        b_keys = {k: k for k in b}
        for k, v in a.items():
            assert k in b_keys, f"{path}: key {k!r} missing"
            assert_same(k, b_keys[k], f"{path} key {k!r}")
            assert_same(v, b[k], f"{path}[{k!r}]")
    elif kind in (datetime, time):
        assert a.replace(tzinfo=None) == b.replace(tzinfo=None), f"{path}: {a!r} != {b!r}"
        assert a.utcoffset() == b.utcoffset(), f"{path}: offset {a!r} != {b!r}"
        assert a.tzname() == b.tzname(), f"{path}: tzname {a!r} != {b!r}"
        assert a.fold == b.fold, f"{path}: fold {a!r} != {b!r}"
    elif kind is DurableObjectId:
        assert str(a) == str(b) and a.name == b.name, f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
