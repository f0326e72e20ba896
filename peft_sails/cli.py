"""`peft-sails` command line: `peft-sails <command> --help` for each command."""

from __future__ import annotations

import argparse
import importlib
import sys

from .quiet import quiet_libraries, verbose_requested

COMMANDS = {  # name: (module, function taking argv, help)
    "quickstart": ("peft_sails.quickstart", "cli", "Run the whole SAILS pipeline offline on a tiny model and SAEs built here."),
    "eval": ("peft_sails.eval.cli", "eval_cli", "Generate answers to prompt sets and judge them: safety rate, over-refusal."),
    "judge": ("peft_sails.eval.cli", "judge_cli", "Judge {prompt, response} rows of a JSONL file without generating."),
    "inspect": ("peft_sails.inspect", "cli", "Show what an adapter learned, in SAE features."),
    "card": ("peft_sails.card", "cli", "(Re)write the model card of a saved SAILS adapter."),
    "bench": ("peft_sails.bench.cli", "cli", "Benchmark SAILS against plain LoRA and controls on a world built here."),
    "offline-world": ("peft_sails.world", "cli", "Build the tiny offline model, SAEs and data the tiny recipe runs on."),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="peft-sails", description="SAILS: LoRA initialised in an SAE subspace.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.print_help()
        raise SystemExit(0 if not argv or argv[0] in ("-h", "--help") else 2)
    module_name, function, _ = COMMANDS[argv[0]]
    sys.argv = [f"peft-sails {argv[0]}", *argv[1:]]
    # every command prints its own bars and results only; its `--verbose` brings the libraries' output back
    with quiet_libraries(verbose_requested(argv[1:])):
        getattr(importlib.import_module(module_name), function)(argv[1:])


if __name__ == "__main__":
    main()
