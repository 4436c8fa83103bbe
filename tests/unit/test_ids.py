import pytest

from stateroom._ids import DurableObjectId, IdFactory, new_namespace_secret


def test_named_ids_are_deterministic_per_namespace():
    a, b = IdFactory(b"a" * 32), IdFactory(b"b" * 32)
    assert a.from_name("x") == a.from_name("x")
    assert a.from_name("x") != b.from_name("x")
    assert a.from_name("x") != a.from_name("y")
    assert a.from_name("x").name == "x"


def test_from_string_verifies_the_namespace_check():
    a, b = IdFactory(new_namespace_secret()), IdFactory(new_namespace_secret())
    u = a.unique()
    assert a.from_string(str(u)) == u and a.from_string(str(u)).name is None
    with pytest.raises(ValueError, match="namespace"):
        b.from_string(str(u))
    flipped = str(u)[:-1] + ("0" if str(u)[-1] != "0" else "1")
    with pytest.raises(ValueError):
        a.from_string(flipped)
    for bad in ["", "zz", "A" * 64, "a" * 63]:
        with pytest.raises(ValueError, match="malformed"):
            a.from_string(bad)
    with pytest.raises(TypeError):
        a.from_string(123)  # type: ignore[arg-type]


def test_ids_compare_and_hash_by_value():
    f = IdFactory(b"k" * 32)
    x, y = f.from_name("n"), DurableObjectId(str(f.from_name("n")))
    assert x == y and hash(x) == hash(y) and len({x, y}) == 1
    assert str(x) == x.to_string() and len(str(x)) == 64
