"""The `lmsuite` command and its sub-commands."""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from lmsuite.errors import LmsuiteError


def cmd_model_info(args: argparse.Namespace) -> None:
    from lmsuite.config import load_suite
    from lmsuite.model.neox import config_for_size, count_parameters

    suite = load_suite(args.config)
    rows = []
    for size in suite.models:
        cfg = config_for_size(size, suite.data.vocab_size, suite.data.seq_len)
        rows.append({
            "name": size.name,
            "layers": size.layers,
            "d_model": size.d_model,
            "heads": size.heads,
            "total_params": count_parameters(cfg),
            "non_embedding_params": count_parameters(cfg, embeddings=False),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'name':<14}{'layers':>7}{'d_model':>9}{'heads':>7}{'total':>17}{'non-embedding':>17}")
    for r in rows:
        print(f"{r['name']:<14}{r['layers']:>7}{r['d_model']:>9}{r['heads']:>7}"
              f"{r['total_params']:>17,}{r['non_embedding_params']:>17,}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmsuite", description="Train and study suites of language models, as Pythia.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    # Leaf commands take --debug too; SUPPRESS keeps them from overriding the top-level flag.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model = commands.add_parser("model", help="model sizes of a suite")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    info = model_commands.add_parser("info", parents=[common],
                                    help="layers, width, heads and parameter counts")
    info.add_argument("config", help="suite TOML file")
    info.add_argument("--json", action="store_true", help="print a JSON list")
    info.set_defaults(func=cmd_model_info)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (LmsuiteError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"lmsuite: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("lmsuite: interrupted", file=sys.stderr)
        sys.exit(130)
