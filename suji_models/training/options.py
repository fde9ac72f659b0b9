"""The scripts' option parser: dataclass defaults <- a script's overrides <- JSON ``--config`` <- ``--key value``.

Shared by `pretrain/run_*.py` and every `finetune/*.py` recipe, so every script reads the same way.
Options are dataclass fields declared with :func:`option` (a help text, shown with the default in
``--help``); a ``Literal[...]`` annotation makes the value a validated choice.

Why transformers' `HfArgumentParser` underneath and our precedence on top: it turns fields into
argparse options (help, defaults, Literal choices, ``--flag false`` booleans), but its JSON path
(`parse_json_file`) replaces the command line instead of sitting under it. Feeding the script's
overrides and the JSON file to argparse as defaults (`set_defaults`) keeps one precedence order;
choices are then checked for every source, since argparse checks only values typed on the line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path


def option(default, help: str, **metadata):
    """A dataclass field that is a command-line option: its default and its help text."""
    return dataclasses.field(default=default, metadata={"help": help.replace("%", "%%"), **metadata})  # argparse formats help


def _optional(convert):
    return lambda s: None if isinstance(s, str) and s.lower() == "none" else convert(s)


def _is_optional(annotation) -> bool:
    return type(None) in typing.get_args(annotation)


def build_parser(classes, **overrides) -> argparse.ArgumentParser:
    """The argparse parser of `classes` (their fields' help, defaults and choices), with `overrides`
    as defaults."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(classes)
    parser.add_argument("--config", help="JSON file of option values; options given on the command line override it")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    hints = {f.name: h for cls in classes for f in dataclasses.fields(cls)
             for h in [typing.get_type_hints(cls)[f.name]]}
    for action in parser._actions:
        if action.dest in hints and _is_optional(hints[action.dest]) and action.type is not None:
            action.type = _optional(action.type)  # `--epochs none` sets None
    names = set(hints)
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown option defaults {unknown}")
    parser.set_defaults(**overrides)
    return parser


def parse_args(classes, argv=None, **overrides):
    """Fill one instance of each dataclass in `classes` from the command line.

    Precedence: dataclass defaults <- `overrides` <- JSON ``--config FILE`` <- ``--key value``.
    A key of the JSON that no dataclass declares is an error, as is a value outside an option's
    choices, wherever it came from. Booleans read 1/true/yes and 0/false/no."""
    parser = build_parser(classes, **overrides)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            raise SystemExit(f"--config {path}: no such file")
        try:
            recipe = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as why:
            raise SystemExit(f"{path}:{why.lineno}: not valid JSON ({why.msg})") from None
        unknown = sorted(set(recipe) - {a.dest for a in parser._actions})
        if unknown:
            raise SystemExit(f"{path}: unknown keys {unknown}")
        parser.set_defaults(**recipe)
    args = parser.parse_args([str(a) for a in argv] if argv is not None else None)
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.choices is not None and value not in action.choices:
            where = f"{known.config}: " if known.config else ""
            parser.error(f"{where}{action.dest} {value!r} is not one of {', '.join(map(str, action.choices))}")
    return tuple(cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init}) for cls in classes)
