"""What every stage's command line shares: the --contest option and the expected-failure exit.

Expected failures end in one line on stderr and exit 2, never a traceback: bad input (InputError),
and the machine refusing a file (an output folder that is not writable or is a file, a disk that is
full, an unreadable input, a read-only or locked leaderboard database). Tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import math
from pathlib import Path
from typing import Callable, Sequence

from rawdenoise.contest import DEFAULT_CONTEST
from rawdenoise.errors import InputError
from rawdenoise.files import unwritable_reason

EXIT_INPUT_ERROR = 2


def add_contest_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--contest",
        default=DEFAULT_CONTEST,
        metavar="NAME|PATH",
        help="contest profile: a name in configs/contests/ or a path to a TOML file (default: %(default)s)",
    )


def add_quiet_argument(parser: argparse.ArgumentParser) -> None:
    """--quiet: no progress bar (run_all passes it when nobody watches stderr)."""
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def noise_choice(text: str):
    """--noise: "auto" (each frame's NoiseProfile tag, else its estimate), "estimate" (always the
    estimate, tag or not), or "A,B" for every frame."""
    if text in ("auto", "estimate"):
        return text
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, estimate or A,B such as 1e-3,1e-5, got {text!r}") from None
    if not (a >= 0 and b >= 0 and a + b > 0 and math.isfinite(a) and math.isfinite(b)):
        raise argparse.ArgumentTypeError(f"a and b must be finite, at least 0 and not both 0, got {text!r}")
    return a, b


def add_noise_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--noise", type=noise_choice, default="auto", metavar="auto|estimate|A,B",
        help="each frame's noise profile, variance A*x+B on normalised x: auto takes the DNG's NoiseProfile "
             "tag, else estimates it from the frame; estimate ignores tags; A,B is used for every frame "
             "(default: %(default)s)",
    )  # fmt: skip


def model_args(text: str | None) -> dict:
    """--model-args: a JSON object of the model's constructor arguments ({} when not given)."""
    try:
        parsed = json.loads(text or "{}")
    except json.JSONDecodeError as err:
        raise InputError(f"--model-args is not JSON: {err}") from None
    if not isinstance(parsed, dict):
        raise InputError(f"--model-args must be a JSON object, got {text}")
    return parsed


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: CUDA where there is a GPU, else the CPU (default: %(default)s)")  # fmt: skip


def device_from(choice: str):
    """--device auto|cpu|cuda -> the torch device to run on; asking for CUDA where there is none is bad
    input. (torch is imported here, not at the top: the scorer shares this module and never imports it.)"""
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available")
    return torch.device("cuda" if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()) else "cpu")


def describe_os_error(err: OSError) -> str:
    """"path: Permission denied" rather than "[Errno 13] Permission denied: 'path'"."""
    names = [str(n) for n in (err.filename, err.filename2) if n is not None]
    reason = unwritable_reason(Path(names[0]), err) if names else err.strerror or str(err)
    return f"{' -> '.join(names)}: {reason}" if names else reason


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run a CLI's main; an expected failure becomes one line on stderr and exit 2."""
    try:
        return int(main(argv) or 0)
    except InputError as err:
        message = str(err)
    except OSError as err:
        message = describe_os_error(err)
    except sqlite3.Error as err:  # leaderboard.py names the database; this is the backstop
        message = f"database error: {err}"
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"error: {message}", file=sys.stderr)
    return EXIT_INPUT_ERROR
