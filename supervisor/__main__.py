"""`python -m stateroom.supervisor [serve flags]`: run one supervisor until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys

import trio

from .settings import add_serve_flags, settings_from_args


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="stateroom serve")
    add_serve_flags(parser)
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    from .app import Supervisor
    from .extensions import install_extensions
    from .fencing import DataFolderBusy, lock_data_folder

    try:
        # Held until this process dies: one supervisor per data folder (fencing.py).
        _lock = lock_data_folder(settings.data)  # noqa: F841
    except DataFolderBusy as exc:
        raise SystemExit(f"error: {exc}") from None

    async def run() -> None:
        sup = Supervisor(settings)
        install_extensions(sup)
        await sup.serve()

    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
