"""Command line: train and export the default model, or show any SavedModel's signatures.

python -m export --base-path models/deeplab --version 1 [--steps N --size S --seed K]
                 [--overwrite]
python -m export show --dir PATH [--tag_set serve] [--signature_def KEY] [--all]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers >= ``minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Train the DeepLab-style segmenter on synthetic images and export it as "
        "<base-path>/<version>. (Use 'python -m export show --help' to inspect a SavedModel.)",
    )
    parser.add_argument("--base-path", required=True, help="model base path, e.g. models/deeplab")
    parser.add_argument("--version", required=True, type=_int_at_least(0), help="version number")
    parser.add_argument("--steps", type=_int_at_least(1), help="training steps (default: full run)")
    parser.add_argument("--size", type=_int_at_least(8), help="training image size (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the version if it already exists"
    )
    return parser


def _show_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export show",
        description="Show a SavedModel's tag-sets and SignatureDefs (like saved_model_cli show).",
    )
    parser.add_argument("--dir", required=True, help="directory holding saved_model.pb")
    parser.add_argument("--tag_set", help="comma-separated tags of a MetaGraphDef, e.g. serve")
    parser.add_argument("--signature_def", help="signature key to show in full")
    parser.add_argument("--all", action="store_true", help="show every signature in full")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["show"]:
        options = _show_parser().parse_args(args[1:])
        from export.show import show

        try:
            print(show(options.dir, options.tag_set, options.signature_def, options.all))
        except (OSError, LookupError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0

    options = _export_parser().parse_args(args)
    from export.savedmodel import VersionExistsError, export_model

    try:
        export_model(
            options.base_path,
            options.version,
            steps=options.steps,
            size=options.size,
            seed=options.seed,
            overwrite=options.overwrite,
        )
    except VersionExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
