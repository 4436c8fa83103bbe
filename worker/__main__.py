"""Entry point of a worker process: `python -m stateroom.worker --fd FD --index N`."""

from __future__ import annotations

import argparse

import trio

from .runtime import run_worker


def main() -> None:
    parser = argparse.ArgumentParser(prog="stateroom-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--commit-log", type=int, default=-1)
    args = parser.parse_args()
    trio.run(run_worker, args.fd, args.index, args.commit_log)


if __name__ == "__main__":
    main()
