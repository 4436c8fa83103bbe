import pytest

from stateroom._protocol import (
    Cancel,
    Fetch,
    FrameReader,
    HttpRequest,
    ProtocolError,
    Reply,
    Target,
    encode_frame,
    shard_of,
)


def test_frames_round_trip_when_split_and_coalesced():
    msgs = [
        Fetch(
            1, HttpRequest("GET", "http://x/", [("a", "b")], b"body"), Target("C", "ab" * 32, "n")
        ),
        Reply(1, True, value=b"\x00"),
        Cancel(7),
    ]
    data = b"".join(encode_frame(m) for m in msgs)
    reader = FrameReader()
    out = []
    for i in range(0, len(data), 3):
        out += reader.feed(data[i : i + 3])
    assert out == msgs


def test_garbage_frames_raise_protocol_error():
    reader = FrameReader()
    with pytest.raises(ProtocolError):
        reader.feed(b"\x00\x00\x00\x03abc")
    with pytest.raises(ProtocolError):
        FrameReader().feed(b"\xff\xff\xff\xff")


def test_shards_are_stable_and_cover_the_range():
    ids = [f"{i:08x}" + "0" * 56 for i in range(0, 2**20, 997)]
    shards = {shard_of(i, 256) for i in ids}
    assert shards == set(range(256))
    assert shard_of("ff" * 32, 256) == shard_of("ff" * 32, 256)
