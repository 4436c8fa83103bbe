"""The commit log survives the death of the process that wrote it (real processes)."""

import signal
import subprocess
import sys

from stateroom._commitlog import SLOTS, CommitLog

CHILD = r"""
import os, sys
from stateroom._commitlog import CommitLog
log = CommitLog(int(sys.argv[1]))
for rid in map(int, sys.argv[2:]):
    log.announce(rid)
os.kill(os.getpid(), 9)
"""


def test_announcements_of_a_killed_process_are_read_back():
    log = CommitLog.create()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(log.fd), "7", "8", "1000000000001"],
            pass_fds=(log.fd,),
            check=False,
        )
        assert proc.returncode == -signal.SIGKILL
        assert log.announced() == {7, 8, 1000000000001}
    finally:
        log.close()


def test_the_ring_keeps_the_latest_announcements():
    log = CommitLog.create()
    try:
        for rid in range(1, SLOTS + 11):
            log.announce(rid)
        seen = log.announced()
        assert len(seen) == SLOTS
        assert min(seen) == 11 and max(seen) == SLOTS + 10
    finally:
        log.close()
