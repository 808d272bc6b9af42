"""``maas completion bash|zsh``: tab completion of every command, option and choice, generated from the
parser itself by shtab (so it never falls behind the commands)."""

from __future__ import annotations

# what shtab completes a positional argument with: file names (specs, model folders, notebooks)
FILES = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}
FILE_ARGUMENTS = ("spec", "specs", "source")


def add_parser(sub) -> None:
    c = sub.add_parser("completion", help="print the shell completion script for maas (bash or zsh)",
                       description="Example: maas completion bash > ~/.local/share/bash-completion/completions/"
                                   "maas (zsh: maas completion zsh > \"${fpath[1]}/_maas\")")
    c.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete in")
    c.set_defaults(func=cmd_completion)


def mark_files(parser) -> None:
    """Let spec and model-folder arguments complete to file names, everywhere in the command tree."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                mark_files(child)
        elif action.dest in FILE_ARGUMENTS and not action.option_strings:
            action.complete = FILES


def cmd_completion(args) -> int:
    import shtab

    parser = args.parser  # the whole command tree (main puts it there)
    mark_files(parser)
    print(shtab.complete(parser, shell=args.shell))
    return 0
