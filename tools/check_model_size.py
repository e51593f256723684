"""The model-size gate: is a weights file, or every recipe's model, within the contest's limit?

    python tools/check_model_size.py                       # every recipe and every runs/*/model.pth
    python tools/check_model_size.py runs/demo/model.pth   # given weights files
    python tools/check_model_size.py --model convnext_unet --model-args '{"widths": [128, 256, 512, 1024]}'

Exit 0 when everything is within the limit, 1 when anything is over (a verdict, not an error),
2 on bad input. The size is the fp32 state_dict as torch.save writes it: what ships as model.pth.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import torch

from rawdenoise import cli
from rawdenoise.contest import load_contest
from rawdenoise.errors import InputError
from rawdenoise.models import build_model
from rawdenoise.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent


def serialized_size(model: torch.nn.Module) -> tuple[int, int]:
    """(parameter count, bytes of the fp32 state_dict saved by torch.save)."""
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return sum(v.numel() for v in state.values()), buffer.getbuffer().nbytes


def weights_size(path: Path) -> tuple[int, int]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except Exception as err:  # torch raises many types for a file that is not a weights file
        raise InputError(f"{path}: not a loadable state_dict ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(f"{path}: not a plain state_dict of tensors")
    return sum(v.numel() for v in state.values()), path.stat().st_size


def checks(args) -> list[tuple[str, int, int]]:
    """(what, parameters, bytes) for everything asked for."""
    found = []
    if args.model:
        model_args = cli.model_args(args.model_args)
        found.append((f"{args.model} {json.dumps(model_args)}", *serialized_size(build_model(args.model, **model_args))))
    for weights in args.weights:
        found.append((str(weights), *weights_size(Path(weights))))
    if args.recipes or not (args.model or args.weights):
        for recipe_path in sorted((ROOT / "configs" / "train").glob("*.toml")):
            recipe = load_recipe(recipe_path)
            model = build_model(recipe["model"]["name"], **recipe["model"]["args"])
            found.append((f"recipe {recipe_path.stem}", *serialized_size(model)))
    if not (args.model or args.weights or args.recipes):
        for weights in sorted(ROOT.glob("runs/*/model.pth")):
            found.append((str(weights.relative_to(ROOT)), *weights_size(weights)))
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Check model weights against the contest's size limit (exit 1 when over).",
        epilog="With no argument: every recipe in configs/train and every runs/*/model.pth.",
    )
    parser.add_argument("weights", nargs="*", help="weights files (state_dicts) to check")
    parser.add_argument("--recipes", action="store_true", help="check every recipe's model (built untrained)")
    parser.add_argument("--model", help="a registered model name to build and check")
    parser.add_argument("--model-args", metavar="JSON", help='its arguments, e.g. \'{"widths": [32, 64]}\'')
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON only")
    cli.add_contest_argument(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.model_args and not args.model:
        raise InputError("--model-args needs --model")
    contest = load_contest(args.contest)
    limit = contest.submission.max_model_bytes
    rows = [
        {"source": what, "params": params, "bytes": size, "mb": size / 1e6, "mib": size / 2**20,
         "limit_bytes": limit, "within": size <= limit}
        for what, params, size in checks(args)
    ]  # fmt: skip
    if args.json:
        print(json.dumps(rows))
    else:
        width = max(len(r["source"]) for r in rows)
        print(f"{contest.name} limit: {limit:,} bytes ({limit / 1e6:.1f} MB, {limit / 2**20:.2f} MiB)")
        for r in rows:
            verdict = "ok" if r["within"] else "OVER THE LIMIT"
            print(f"  {r['source']:<{width}}  {r['params']:>12,} parameters  {r['mb']:8.2f} MB  {r['mib']:8.2f} MiB  {verdict}")
    return 0 if all(r["within"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(cli.run(main))
