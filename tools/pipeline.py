"""What run_all.sh asks of the project, so that run_all.sh only sequences stages.

    python tools/pipeline.py default-contest              the contest a command uses without --contest
    python tools/pipeline.py check-contest CONTEST        one line and exit 2 if the profile cannot be used
    python tools/pipeline.py layout CONTEST               "<test inputs folder> <test ground-truth folder>"
    python tools/pipeline.py patch-size RECIPE.toml       the patch store's side for that recipe
    python tools/pipeline.py bf16-cost RUN                the bf16 cost measured on the run's weights, as
                                                          predict's --precision auto reads it (or "none")
    python tools/pipeline.py code-hash SCRIPT... --contest CONTEST [--also FILE...]

code-hash is what a stage's stamp holds for its code: a hash of the content of every repository file
its scripts import, followed transitively (a change to any module a stage runs reruns it, and a change
to one it never imports does not), of the contest profile's file, and of the `--also` files (a recipe).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sys
import tomllib
from pathlib import Path

from rawdenoise import cli
from rawdenoise.contest import DEFAULT_CONTEST, load_contest, resolve_contest_path
from rawdenoise.errors import InputError
from rawdenoise.measured import read_measured

ROOT = Path(__file__).resolve().parent.parent
# Packages whose __init__ imports their modules by name at run time (the model registry), which no
# import statement shows: importing the package depends on every module in its folder.
LOADS_ITS_FOLDER = ("rawdenoise/models/__init__.py",)


def patch_size(recipe: Path) -> int:
    """Twice the recipe's training crop: room for random crops and flips inside each stored patch."""
    try:
        return 2 * int(tomllib.loads(recipe.read_text())["data"]["crop"])
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(f"{recipe}: no usable [data] crop ({type(err).__name__}: {err})") from None


def _module_file(name: str, root: Path) -> Path | None:
    """The repository file of a dotted module name, or None for one outside the repository."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path) -> set[str]:
    """Every module an import statement anywhere in the file may load (inside functions too: a lazy
    import is still a dependency), with the packages above each."""
    names = set()
    try:
        tree = ast.parse(path.read_text(), str(path))
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: cannot read its imports ({type(err).__name__}: {err})") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {".".join(name.split(".")[:k]) for name in names for k in range(1, name.count(".") + 2)}


def code_files(scripts: list[Path], root: Path = ROOT) -> list[Path]:
    """The scripts and every file under `root` (the repository) they import, transitively."""
    root = root.resolve()
    seen, todo = set(), [p.resolve() for p in scripts]  # a script outside the root: its imports inside it
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        found = [_module_file(name, root) for name in _imported_names(path)]
        if path.is_relative_to(root) and path.relative_to(root).as_posix() in LOADS_ITS_FOLDER:
            found += sorted(path.parent.glob("*.py"))
        todo.extend(f.resolve() for f in found if f is not None and f.resolve() not in seen)
    return sorted(seen)


def files_hash(files: list[Path]) -> str:
    """16 hex digits of the files' names (relative to the repository, so a moved clone keeps its
    stamps) and contents."""
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        try:
            digest.update(f"{name}\n".encode() + path.read_bytes())
        except OSError as err:
            raise InputError(f"{path}: cannot read ({err.strerror})") from None
    return digest.hexdigest()[:16]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("default-contest", help="the contest a command uses without --contest")
    commands.add_parser("check-contest", help="exit 2 with one line if the profile cannot be used").add_argument("contest")
    commands.add_parser("layout", help="the test inputs' and ground truth's folder names").add_argument("contest")
    commands.add_parser("patch-size", help="the patch store's side for a recipe").add_argument("recipe", type=Path)
    commands.add_parser("bf16-cost", help="the bf16 cost measured on a run's weights").add_argument("run", type=Path)
    hashing = commands.add_parser("code-hash", help="a hash of the code a stage runs")
    hashing.add_argument("scripts", nargs="+", type=Path)
    hashing.add_argument("--contest", required=True)
    hashing.add_argument("--also", nargs="*", type=Path, default=[], help="further files the stage reads (a recipe)")
    args = parser.parse_args(argv)
    if args.command == "default-contest":
        print(DEFAULT_CONTEST)
    elif args.command == "check-contest":
        load_contest(args.contest)
    elif args.command == "layout":
        layout = load_contest(args.contest).layout
        print(layout.test_noisy.folder, layout.test_gt.folder)
    elif args.command == "patch-size":
        print(patch_size(args.recipe))
    elif args.command == "bf16-cost":  # the one fact in inference.json that changes predictions (the radius does not)
        weights = args.run / "model.pth"
        record = read_measured(args.run, weights).get("bf16") if weights.is_file() else None
        print(json.dumps(record, sort_keys=True).replace(" ", "") if record else "none")
    else:
        print(files_hash(code_files(args.scripts) + [resolve_contest_path(args.contest)] + [p.resolve() for p in args.also]))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
