"""`peft-sails` command line: `peft-sails <command> --help` for each command."""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "quickstart": ("peft_sails.quickstart", "Run the whole SAILS pipeline offline on a tiny model and SAEs built here."),
    "inspect": ("peft_sails.inspect", "Show what an adapter learned, in SAE features."),
    "card": ("peft_sails.card", "(Re)write the model card of a saved SAILS adapter."),
    "offline-world": ("peft_sails.world", "Build the tiny offline model, SAEs and data the tiny recipe runs on."),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="peft-sails", description="SAILS: LoRA initialised in an SAE subspace.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.print_help()
        raise SystemExit(0 if not argv or argv[0] in ("-h", "--help") else 2)
    module = importlib.import_module(COMMANDS[argv[0]][0])
    sys.argv = [f"peft-sails {argv[0]}", *argv[1:]]
    module.cli(argv[1:])


if __name__ == "__main__":
    main()
