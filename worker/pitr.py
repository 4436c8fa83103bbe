"""Point-in-time recovery (PITR) from the object's archived WAL frames.

Mechanism: SQLite's write-ahead log already is a history. Every commit appends the
pages it changed to `<id>.sqlite-wal` as frames, the last of which is marked as a
commit frame; a checkpoint copies the frames into the database file. The runtime
owns checkpointing (installing a WAL hook turns SQLite's auto-checkpoint off), and
before each checkpoint it copies the WAL verbatim into the object's history folder
`<id>.pitr/` as a *segment*. So (base image) + (segments, in order) holds every
committed state of the database — KV entries, SQL tables and schema alike, since
they are all pages — without touching the write path beyond one WAL hook call per
commit. (The session extension was the alternative; it does not record DDL, so a
dropped table could not be brought back.)

Files in `<id>.pitr/`:
  * `NNNNNNNNNN.wal`: segment N, the WAL bytes up to its last commit frame;
  * `NNNNNNNNNN.log`: one label per commit of segment N: (epoch ms, frames in the
    WAL after that commit), packed `>QI`; written by the WAL hook as commits happen
    and rewritten when the segment is archived. The live segment's file is filled
    with zeros ahead of the labels (`LABEL_BLOCK` bytes at a time) so that writing
    a label never grows it: a file growing at every commit made each commit's fsync
    of the WAL also flush the label file (ext4 journals a size change together with
    its data). Readers stop at the first all-zero label (a real one has frames > 0);
  * `base.sqlite` + `base.meta`: the state at the start of the retention window
    (segments older than `pitr_retention` are folded into it); absent = empty;
  * `restore`: a bookmark to restore at the object's next start.

A commit's state is identified by (segment, frames): base + every earlier segment +
the first `frames` frames of its segment. A bookmark is the string
`TTTTTTTTTTTT-SSSSSSSS-FFFFFFFF` (hex epoch ms, segment, frames): opaque to users,
and strings sort in time order because label times never decrease.

When: after a commit that leaves `ARCHIVE_FRAMES` frames in the WAL, and when the
object is closed (evicted) with more than `KEEP_FRAMES` frames in its WAL. A smaller
WAL stays where it is at close, with its label file, and remains the live segment
when the object is opened again: an object woken for a few writes at a time (an
alarm every second, say) then costs no segment files and no fsyncs at close or
open, only its commits' own.

Invariants:
  * A segment is written (and fsynced under `full` durability) before the WAL it
    copies is checkpointed and restarted; a crash in between leaves the frames in
    the WAL, and the next open archives them again as the next segment (replaying a
    segment twice is harmless: it writes the same pages). A crash after the
    checkpoint but before the next commit leaves the WAL holding exactly the last
    segment (same header, same frames): the next open only truncates it.
  * The live segment is the WAL, and its labels are in `NNNNNNNNNN.log` (N = the
    live segment), one per commit. At open the WAL stays the live segment only if
    it ends exactly at the commit of the last label (`_kept_frames`: size, commit
    mark, salts), which holds after a clean close and after a crash whose labels
    all reached the file. Any other WAL a process left is archived first, so every
    segment starts with a fresh WAL. Commits whose labels were lost (power loss)
    get the WAL file's modification time.
  * Restoring never rewrites history: the rebuilt image is copied into the live
    database with the backup API as one new commit, so the restore itself can be
    undone with the bookmark `on_next_session_restore_bookmark` returns.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import os
import re
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import apsw

WAL_HEADER = 32
FRAME_HEADER = 24
# Archive and checkpoint once the WAL holds this many frames (SQLite's default).
ARCHIVE_FRAMES = 1000
# At close, a WAL of at most this many frames is left in place as the live segment
# (the next open reads it back: SQLite's WAL recovery scans every frame).
KEEP_FRAMES = 64
# Zeros written ahead of the live segment's labels at a time (see the module docstring).
LABEL_BLOCK = 16 * 1024
LABEL = struct.Struct(">QI")
_SEGMENT = re.compile(r"^(\d{10})\.wal$")
_BOOKMARK = re.compile(r"^([0-9a-f]{12})-([0-9a-f]{8})-([0-9a-f]{8})$")
DEFAULT_RETENTION_S = 7 * 86400.0


def now_ms() -> int:
    return int(time.time() * 1000)


def format_bookmark(time_ms: int, segment: int, frames: int) -> str:
    return f"{time_ms:012x}-{segment:08x}-{frames:08x}"


def parse_bookmark(bookmark: Any) -> tuple[int, int, int]:
    if not isinstance(bookmark, str):
        raise TypeError(f"a bookmark is a str, not {type(bookmark).__name__}")
    m = _BOOKMARK.match(bookmark)
    if m is None:
        raise ValueError(f"not a bookmark: {bookmark!r}")
    return int(m.group(1), 16), int(m.group(2), 16), int(m.group(3), 16)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes, fsync: bool) -> None:
    """Write `path` atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def _copy_file(src: str | Path, dst: Path, size: int, fsync: bool) -> None:
    """Write the first `size` bytes of `src` to `dst` atomically, copied by the kernel."""
    tmp = dst.with_name(dst.name + ".tmp")
    with open(src, "rb") as fi, open(tmp, "wb") as fo:
        done = 0
        while done < size:
            try:
                n = os.copy_file_range(fi.fileno(), fo.fileno(), size - done, done, done)
            except OSError:
                # Not supported here (old kernel, some file systems): copy through us.
                n = os.pwrite(
                    fo.fileno(), os.pread(fi.fileno(), min(size - done, 1 << 20), done), done
                )
            if n <= 0:
                raise OSError(f"{src} ended after {done} of {size} bytes")
            done += n
        if fsync:
            os.fsync(fo.fileno())
    os.replace(tmp, dst)


def _frame_step(head: bytes) -> int:
    """Bytes of one frame (frame header + page) of the WAL whose header is `head`."""
    return FRAME_HEADER + struct.unpack(">I", head[8:12])[0]


def apply_frames(image: Any, wal: bytes, frames: int | None = None) -> None:
    """Write the first `frames` frames of WAL bytes `wal` into the open file `image`.

    The image is then truncated to the database size recorded by the last commit
    frame applied. `frames` must end at a commit frame (None: every whole frame).
    """
    if len(wal) < WAL_HEADER:
        return
    step = _frame_step(wal)
    page_size = step - FRAME_HEADER
    total = (len(wal) - WAL_HEADER) // step
    n = total if frames is None else min(frames, total)
    db_pages = 0
    for i in range(n):
        off = WAL_HEADER + i * step
        page, commit = struct.unpack(">II", wal[off : off + 8])
        image.seek((page - 1) * page_size)
        image.write(wal[off + FRAME_HEADER : off + step])
        if commit:
            db_pages = commit
    if db_pages:
        image.truncate(db_pages * page_size)


def commit_frames(wal: bytes, frames: int) -> list[int]:
    """Frame counts after each commit among the first `frames` frames of `wal`."""
    if len(wal) < WAL_HEADER:
        return []
    step = _frame_step(wal)
    out = []
    for i in range(frames):
        off = WAL_HEADER + i * step
        if struct.unpack(">I", wal[off + 4 : off + 8])[0]:
            out.append(i + 1)
    return out


class History:
    """The WAL history of one object database (see the module docstring).

    Fields:
      dir: the history folder `<id>.pitr` next to the database file.
      segment: number of the live WAL's segment; None until `attach`.
      labels: (time ms, frames) of the commits in the live segment, oldest first.
      last_time: the latest label time handed out (label times never decrease).
    """

    def __init__(self, db_path: Path, *, retention_s: float, durability: str) -> None:
        db_path = Path(db_path)
        self.dir = db_path.with_name(db_path.stem + ".pitr")
        self.retention_ms = int(float(retention_s) * 1000)
        self.fsync = durability == "full"
        self.segment: int | None = None
        self.labels: list[tuple[int, int]] = []
        self.last_time = 0
        self._frames = 0
        self._label_fd: int | None = None
        # Bytes of the open label file known to be written (labels or zeros ahead).
        self._label_room = 0
        self._wal_path: str | None = None

    # ------------------------------------------------------------- files

    def _seg_path(self, n: int, ext: str) -> Path:
        return self.dir / f"{n:010d}.{ext}"

    def segments(self) -> list[int]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for m in map(_SEGMENT.match, names) if m)

    def base(self) -> tuple[int, int] | None:
        """(first segment not folded into the base, time ms of the base) or None."""
        try:
            text = (self.dir / "base.meta").read_text()
        except FileNotFoundError:
            return None
        nxt, t = text.split()
        return int(nxt), int(t)

    def _read_labels(self, n: int) -> list[tuple[int, int]]:
        """Labels of segment `n` (the live one from memory)."""
        if n == self.segment:
            return list(self.labels)
        return self._read_label_file(n)

    def _read_label_file(self, n: int) -> list[tuple[int, int]]:
        try:
            data = self._seg_path(n, "log").read_bytes()
        except FileNotFoundError:
            return []
        usable = len(data) - len(data) % LABEL.size
        labels = []
        for i in range(0, usable, LABEL.size):
            label = LABEL.unpack_from(data, i)
            if label[1] == 0:
                break  # the zeros written ahead of the labels
            labels.append(label)
        return labels

    def restore_pending(self) -> bool:
        return (self.dir / "restore").exists()

    def pending_restore(self) -> str | None:
        try:
            return (self.dir / "restore").read_text().strip()
        except FileNotFoundError:
            return None

    def set_pending_restore(self, bookmark: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_file(self.dir / "restore", bookmark.encode(), fsync=True)

    def clear_pending_restore(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.dir / "restore")

    def remove(self) -> None:
        """Forget the whole history (the object's data is being deleted)."""
        self._close_labels()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.segment = None
        self.labels = []
        self._frames = 0

    # ------------------------------------------------------------- the live WAL

    def attach(self, conn: apsw.Connection) -> None:
        """Take over checkpointing of a freshly opened connection."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._wal_path = conn.filename_wal
        segs = self.segments()
        base = self.base()
        self.segment = segs[-1] + 1 if segs else (base[0] if base else 0)
        self.labels = self._read_label_file(self.segment)  # left by a crashed predecessor
        last = [lb for s in reversed(segs) for lb in self._read_label_file(s)[-1:]][:1]
        self.last_time = max(
            [t for t, _ in self.labels] + [t for t, _ in last] + [base[1] if base else 0]
        )
        self._frames = 0
        conn.set_wal_hook(self._on_commit)
        kept = self._kept_frames()
        if kept is not None:
            # The WAL a close left in place (or a crash, every label written): it
            # stays the live segment, with its labels.
            self._frames = kept
            return
        if self._holds_last_segment(conn, segs):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)", can_cache=False)
        else:
            self._archive(conn)
        # The live WAL is empty now: labels left for its segment are stale.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._seg_path(self.segment, "log"))
        self.labels = []

    def _holds_last_segment(self, conn: apsw.Connection, segs: list[int]) -> bool:
        """True when the WAL is the last archived segment, not restarted since."""
        if not segs or self._wal_path is None:
            return False
        try:
            with open(self._wal_path, "rb") as f:
                head = f.read(WAL_HEADER)
            with open(self._seg_path(segs[-1], "wal"), "rb") as f:
                seg_head = f.read(WAL_HEADER)
                seg_bytes = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            return False
        if len(head) < WAL_HEADER or head != seg_head:
            return False
        step = _frame_step(head)
        busy, frames, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)", can_cache=False).get
        return not busy and WAL_HEADER + frames * step == seg_bytes

    def _kept_frames(self) -> int | None:
        """Frames of the WAL if it can stay the live segment (see the invariants), else None.

        True when the labels read for the live segment end at a commit frame salted
        like the WAL header, and no frame of the same salts follows it (the file may
        go on with frames of an earlier generation: a restarted WAL is not truncated).
        """
        if not self.labels or self._wal_path is None:
            return None
        frames = self.labels[-1][1]
        if frames <= 0 or any(b[1] <= a[1] for a, b in itertools.pairwise(self.labels)):
            return None
        try:
            with open(self._wal_path, "rb") as f:
                head = f.read(WAL_HEADER)
                if len(head) < WAL_HEADER:
                    return None
                step = _frame_step(head)
                f.seek(WAL_HEADER + (frames - 1) * step)
                last = f.read(FRAME_HEADER)
                f.seek(WAL_HEADER + frames * step)
                after = f.read(FRAME_HEADER)
        except FileNotFoundError:
            return None
        if len(last) < FRAME_HEADER or last[4:8] == bytes(4) or last[8:16] != head[16:24]:
            return None
        if len(after) == FRAME_HEADER and after[8:16] == head[16:24]:
            return None  # a frame written after the last label (its label was lost)
        return frames

    def _on_commit(self, conn: apsw.Connection, dbname: str, frames: int) -> int:
        """WAL hook: runs after every commit with the number of frames in the WAL."""
        t = max(now_ms(), self.last_time)
        self.last_time = t
        self._frames = frames
        self.labels.append((t, frames))
        offset = (len(self.labels) - 1) * LABEL.size
        if self._label_fd is None:
            self._label_fd = os.open(
                self._seg_path(self.segment or 0, "log"), os.O_WRONLY | os.O_CREAT, 0o644
            )
            self._label_room = 0
        if offset + LABEL.size > self._label_room:
            # Zeros ahead, written (not fallocated) so later labels overwrite blocks
            # the file already has.
            room = offset + LABEL_BLOCK
            os.pwrite(self._label_fd, bytes(room - offset), offset)
            self._label_room = room
        os.pwrite(self._label_fd, LABEL.pack(t, frames), offset)
        return apsw.SQLITE_OK

    def after_commit(self, conn: apsw.Connection) -> None:
        if self._frames >= ARCHIVE_FRAMES:
            self._archive(conn)

    def before_close(self, conn: apsw.Connection) -> None:
        """The object is being closed: archive its WAL unless it is small (`KEEP_FRAMES`).

        A WAL left with no live frames is truncated, so the next open does not read
        back (and archive again) the frames of a segment already archived; a kept one
        is cut to its live frames.
        """
        if self._frames > KEEP_FRAMES:
            self._archive(conn)
        if self._frames == 0 and self._wal_path and os.path.exists(self._wal_path):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)", can_cache=False)
        elif self._frames and self._wal_path:
            # A kept WAL restarted after an archive goes on with the old generation's
            # frames (up to ARCHIVE_FRAMES pages): cut them, or every object once hot
            # would keep megabytes of them on disk while evicted.
            with open(self._wal_path, "r+b") as f:
                live = WAL_HEADER + self._frames * _frame_step(f.read(WAL_HEADER))
                if os.fstat(f.fileno()).st_size > live:
                    f.truncate(live)
        self._close_labels()

    def _close_labels(self) -> None:
        if self._label_fd is not None:
            os.close(self._label_fd)
            self._label_fd = None

    def _archive(self, conn: apsw.Connection) -> None:
        """Copy the WAL into the next segment, then checkpoint it and restart it.

        RESTART, not TRUNCATE: the next commit writes the WAL from its start over the
        blocks the file already has, so its fsync flushes data only. A WAL truncated
        at every archive grew again commit by commit, and each of those fsyncs also
        journalled the file's new size (~0.2 ms per sequential request here).

        The bytes are copied by the kernel (`copy_file_range`), and when the live
        segment's labels name every commit in the WAL (always, short of a crash) the
        commit frames are taken from them: the WAL is not read into this process
        (4 MB read, parsed and written from Python took ~15 ms per archive; now ~5).
        """
        if self.segment is None:
            return
        frames = self._frames
        if not self._labels_cover(frames):
            busy, frames, _done = conn.execute(
                "PRAGMA wal_checkpoint(PASSIVE)", can_cache=False
            ).get
            if busy or frames <= 0:
                return
        wal_path = self._wal_path or conn.filename_wal
        with open(wal_path, "rb") as f:
            size = WAL_HEADER + frames * _frame_step(f.read(WAL_HEADER))
        if self._labels_cover(frames):
            labels = list(self.labels)
        else:
            labels = self._recover_labels(wal_path, size, frames)
        self.last_time = max(self.last_time, labels[-1][0] if labels else 0)
        self._close_labels()
        seg = self.segment
        _copy_file(wal_path, self._seg_path(seg, "wal"), size, self.fsync)
        _write_file(
            self._seg_path(seg, "log"), b"".join(LABEL.pack(*lb) for lb in labels), self.fsync
        )
        if self.fsync:
            _fsync_dir(self.dir)
        conn.execute("PRAGMA wal_checkpoint(RESTART)", can_cache=False)
        self.segment = seg + 1
        self.labels = []
        self._frames = 0
        self._fold_expired()

    def _labels_cover(self, frames: int) -> bool:
        """True when the live segment's labels end at `frames` (so they name every commit)."""
        return frames > 0 and bool(self.labels) and self.labels[-1][1] == frames

    def _recover_labels(self, wal_path: str, size: int, frames: int) -> list[tuple[int, int]]:
        """Labels of the WAL's commits when some were lost: read the commit marks, and
        give unlabelled commits the WAL file's modification time."""
        with open(wal_path, "rb") as f:
            wal = f.read(size)
        known = dict((n, t) for t, n in self.labels)
        fallback = max(self.last_time, int(os.path.getmtime(wal_path) * 1000))
        labels: list[tuple[int, int]] = []
        prev = 0
        for n in commit_frames(wal, frames):
            t = max(known.get(n, fallback), prev)
            labels.append((t, n))
            prev = t
        return labels

    def _fold_expired(self) -> None:
        """Fold segments whose every commit left the retention window into the base."""
        cutoff = now_ms() - self.retention_ms
        fold: list[int] = []
        base_time = 0
        for s in self.segments():
            if self.segment is not None and s >= self.segment:
                break
            labels = self._read_labels(s)
            if labels and labels[-1][0] >= cutoff:
                break
            fold.append(s)
            if labels:
                base_time = labels[-1][0]
        if not fold:
            return
        base = self.base()
        tmp = self.dir / "base.sqlite.tmp"
        if base is not None and (self.dir / "base.sqlite").exists():
            shutil.copyfile(self.dir / "base.sqlite", tmp)
            base_time = max(base_time, base[1])
        else:
            tmp.write_bytes(b"")
        with open(tmp, "r+b") as image:
            for s in fold:
                apply_frames(image, self._seg_path(s, "wal").read_bytes())
            if self.fsync:
                image.flush()
                os.fsync(image.fileno())
        os.replace(tmp, self.dir / "base.sqlite")
        _write_file(self.dir / "base.meta", f"{fold[-1] + 1} {base_time}".encode(), self.fsync)
        for s in fold:
            for ext in ("wal", "log"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._seg_path(s, ext))

    # ------------------------------------------------------------- bookmarks

    def _window_start(self) -> int:
        return now_ms() - self.retention_ms

    def current(self) -> str:
        """The bookmark of the latest commit (the object must be open)."""
        if self.labels:
            t, n = self.labels[-1]
            return format_bookmark(t, self.segment or 0, n)
        for s in reversed(self.segments()):
            labels = self._read_labels(s)
            if labels:
                return format_bookmark(labels[-1][0], s, labels[-1][1])
        base = self.base()
        if base is not None:
            return format_bookmark(base[1], base[0], 0)
        return format_bookmark(0, 0, 0)

    def for_time(self, when_ms: int) -> str:
        """The bookmark of the last commit at or before `when_ms`."""
        if when_ms < self._window_start():
            raise ValueError(
                f"{_iso(when_ms)} is outside the point-in-time recovery window"
                f" ({self.retention_ms / 1000:g} s, --pitr-retention)"
            )
        candidates = [(self.segment or 0, self.labels)] if self.labels else []
        for s in reversed(self.segments()):
            candidates.append((s, self._read_labels(s)))
        for s, labels in candidates:
            for t, n in reversed(labels):
                if t <= when_ms:
                    return format_bookmark(t, s, n)
        base = self.base()
        if base is not None:
            if when_ms < base[1]:
                raise ValueError(f"{_iso(when_ms)} is older than the retained history")
            return format_bookmark(base[1], base[0], 0)
        return format_bookmark(0, 0, 0)

    def check(self, bookmark: Any) -> tuple[int, int, int]:
        """Parse `bookmark` and check it names a state the history can rebuild."""
        t, s, n = parse_bookmark(bookmark)
        base = self.base()
        first = base[0] if base else 0
        live = self.segment if self.segment is not None else first
        if s < first or (t and t < self._window_start()):
            raise ValueError(
                f"bookmark {bookmark} is outside the point-in-time recovery window"
                f" ({self.retention_ms / 1000:g} s, --pitr-retention)"
            )
        if s > live or (n and (t, n) not in self._read_labels(s)):
            raise ValueError(f"bookmark {bookmark} does not name a state of this object")
        return t, s, n

    def build_image(self, segment: int, frames: int, out: Path) -> None:
        """Write the database as of (segment, frames) to the file `out`."""
        base = self.base()
        first = base[0] if base else 0
        if base is not None and (self.dir / "base.sqlite").exists():
            shutil.copyfile(self.dir / "base.sqlite", out)
        else:
            out.write_bytes(b"")
        with open(out, "r+b") as image:
            for s in range(first, segment):
                path = self._seg_path(s, "wal")
                if not path.exists():
                    raise ValueError(f"the history of this object is missing segment {s}")
                apply_frames(image, path.read_bytes())
            if frames:
                if segment == self.segment:
                    assert self._wal_path is not None
                    with open(self._wal_path, "rb") as f:
                        wal = f.read()
                else:
                    wal = self._seg_path(segment, "wal").read_bytes()
                apply_frames(image, wal, frames)
            if image.seek(0, os.SEEK_END) >= 20:
                image.seek(18)
                image.write(b"\x01\x01")  # a plain file: opened without a WAL of its own


def _iso(ms: int) -> str:
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.UTC).isoformat()


class Pitr:
    """The PITR API of `ctx.storage`, for the objects of one worker."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker

    @property
    def retention_s(self) -> float:
        return float(self.worker.settings.get("pitr_retention", DEFAULT_RETENTION_S))

    def history_for(self, db_path: Path) -> History | None:
        retention = self.retention_s
        if retention <= 0:
            return None
        return History(
            db_path,
            retention_s=retention,
            durability=self.worker.settings.get("durability", "full"),
        )

    def _history(self, host: Any) -> History:
        history = host.db.history
        if history is None:
            raise ValueError("point-in-time recovery is off (--pitr-retention 0)")
        return history

    def current_bookmark(self, host: Any) -> str:
        history = self._history(host)
        host.commit()
        if host.db.open(create=False) is None:
            return format_bookmark(0, 0, 0)
        return history.current()

    def bookmark_for_time(self, host: Any, when: Any) -> str:
        from .context import to_epoch_ms

        history = self._history(host)
        when_ms = min(to_epoch_ms(when), now_ms())
        host.commit()
        if host.db.open(create=False) is None:
            if when_ms < now_ms() - history.retention_ms:
                raise ValueError("that time is outside the point-in-time recovery window")
            return format_bookmark(0, 0, 0)
        return history.for_time(when_ms)

    def restore_on_next_session(self, host: Any, bookmark: Any) -> str:
        """Arrange the restore; returns the bookmark of the state it will replace."""
        history = self._history(host)
        host.commit()
        if host.db.open(create=False) is None:
            parse_bookmark(bookmark)
            if bookmark != format_bookmark(0, 0, 0):
                raise ValueError(f"bookmark {bookmark} does not name a state of this object")
            return bookmark
        history.check(bookmark)
        undo = history.current()
        history.set_pending_restore(bookmark)
        return undo

    def before_open(self, host: Any) -> None:
        """At the object's start: apply a pending restore (one commit, undoable)."""
        db = host.db
        history = db.history
        if history is None or not history.restore_pending():
            return
        bookmark = history.pending_restore() or ""
        try:
            db.open(create=True)
            _t, segment, frames = history.check(bookmark)
            tmp = history.dir / "restore-image.sqlite"
            try:
                history.build_image(segment, frames, tmp)
                source = apsw.Connection(str(tmp), flags=apsw.SQLITE_OPEN_READWRITE)
                try:
                    db.replace_with(source)
                finally:
                    source.close()
            finally:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(str(tmp) + suffix)
        finally:
            history.clear_pending_restore()
        alarms = self.worker.alarms
        notify = getattr(alarms, "on_state_replaced", None) or getattr(alarms, "_announce", None)
        if notify is not None:
            notify(host)
