"""Property: the KV store of one object database behaves like a dict (SPEC §5).

A hypothesis state machine drives `stateroom.worker.storage.Database` (the real APSW
file, WAL history included) with single and batch puts, gets and deletes, `list`
with every option, commits, rollbacks, `delete_all`, and close/reopen, and compares
each answer with a dict model in which keys order by their UTF-8 bytes.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from stateroom.worker.pitr import History
from stateroom.worker.storage import Database

# Few characters, so keys collide, share prefixes and cross UTF-8 length classes.
ALPHABET = ["a", "b", "\x00", "é", "\uffff", "😀", "z"]
keys = st.text(alphabet=ALPHABET, max_size=4)
values = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.tuples(st.integers(), st.text(max_size=2)),
    st.lists(st.integers(), max_size=3),
)


def order(key: str) -> bytes:
    return key.encode("utf-8")


def model_list(data, start, start_after, end, prefix, reverse, limit):
    items = sorted(data.items(), key=lambda kv: order(kv[0]))
    if start is not None:
        items = [kv for kv in items if order(kv[0]) >= order(start)]
    if start_after is not None:
        items = [kv for kv in items if order(kv[0]) > order(start_after)]
    if end is not None:
        items = [kv for kv in items if order(kv[0]) < order(end)]
    if prefix is not None:
        items = [kv for kv in items if order(kv[0]).startswith(order(prefix))]
    if reverse:
        items.reverse()
    if limit is not None:
        items = items[:limit]
    return items


class KvMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="stateroom-kv-"))
        self.db = self._open()
        # committed: what a crash or reopen would find; current: what reads see now.
        self.committed: dict = {}
        self.current: dict = {}

    def _open(self) -> Database:
        path = self.dir / "obj.sqlite"
        history = History(path, retention_s=3600, durability="process")
        return Database(path, "process", lambda: None, history=history)

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(key=keys, value=values)
    def put(self, key, value):
        self.db.kv_put_many({key: value})
        self.current[key] = value

    @rule(entries=st.dictionaries(keys, values, max_size=6))
    def put_many(self, entries):
        self.db.kv_put_many(entries)
        self.current.update(entries)

    @rule(key=keys)
    def get(self, key):
        assert self.db.kv_get(key) == self.current.get(key)

    @rule(ks=st.lists(keys, max_size=6))
    def get_many(self, ks):
        got = self.db.kv_get_many(ks)
        want = {k: self.current[k] for k in sorted(set(ks), key=order) if k in self.current}
        assert list(got.items()) == list(want.items())

    @rule(key=keys)
    def delete(self, key):
        assert self.db.kv_delete_many([key]) == (1 if key in self.current else 0)
        self.current.pop(key, None)

    @rule(ks=st.lists(keys, max_size=6))
    def delete_many(self, ks):
        want = len({k for k in ks if k in self.current})
        assert self.db.kv_delete_many(ks) == want
        for k in ks:
            self.current.pop(k, None)

    @rule(
        start=st.none() | keys,
        start_after=st.none() | keys,
        end=st.none() | keys,
        prefix=st.none() | keys,
        reverse=st.booleans(),
        limit=st.none() | st.integers(1, 5),
    )
    def list(self, start, start_after, end, prefix, reverse, limit):
        if start is not None and start_after is not None:
            start_after = None
        got = self.db.kv_list(
            start=start,
            start_after=start_after,
            end=end,
            prefix=prefix,
            reverse=reverse,
            limit=limit,
        )
        want = model_list(self.current, start, start_after, end, prefix, reverse, limit)
        assert list(got.items()) == want

    @rule()
    def commit(self):
        self.db.commit()
        self.committed = dict(self.current)

    @rule()
    def rollback(self):
        self.db.rollback()
        self.current = dict(self.committed)

    @rule()
    def delete_all(self):
        self.db.delete_all()
        self.current = {}

    @rule()
    def reopen(self):
        self.db.close()  # uncommitted writes are rolled back
        self.db = self._open()
        self.current = dict(self.committed)

    @invariant()
    def everything_lists_in_byte_order(self):
        got = self.db.kv_list()
        assert list(got.items()) == sorted(self.current.items(), key=lambda kv: order(kv[0]))


KvMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestKvAgainstADict = KvMachine.TestCase
