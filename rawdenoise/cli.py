"""What every stage's command line shares: the --contest option and the expected-failure exit."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from rawdenoise.errors import InputError

EXIT_INPUT_ERROR = 2


def add_contest_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--contest",
        default="zte2022",
        metavar="NAME|PATH",
        help="contest profile: a name in configs/contests/ or a path to a TOML file (default: %(default)s)",
    )


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a CLI's main; an InputError becomes one line on stderr and exit 2, never a traceback."""
    try:
        return int(main(argv) or 0)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
