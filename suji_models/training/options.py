"""The scripts' option parser: dataclass defaults <- a script's overrides <- JSON ``--config`` <- ``--key value``.

Shared by `pretrain/run_*.py` and the `finetune/*.py` recipes, so every script reads the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path


def _optional(convert):
    return lambda s: None if s.lower() == "none" else convert(s)


def parse_args(classes, argv=None, **overrides):
    """Fill one instance of each dataclass in `classes` from the command line.

    Precedence: dataclass defaults <- `overrides` <- JSON ``--config FILE`` <- ``--key value``.
    A key of the JSON that no dataclass declares is an error. Booleans read 1/true/yes."""
    fields = [f for cls in classes for f in dataclasses.fields(cls)]
    defaults = {f.name: f.default for f in fields}
    # annotations are strings under `from __future__ import annotations`, types otherwise
    types = {f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type)) for f in fields}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"unknown option defaults {unknown}")
    defaults.update(overrides)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        recipe = json.loads(Path(known.config).read_text(encoding="utf-8"))
        unknown = sorted(set(recipe) - set(defaults))
        if unknown:
            raise SystemExit(f"{known.config}: unknown keys {unknown}")
        defaults.update(recipe)
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", help="JSON file of defaults for the options below")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    for key, value in defaults.items():
        kind = types[key]
        if "bool" in kind:
            parser.add_argument(f"--{key}", type=lambda s: s.lower() in ("1", "true", "yes"), default=value)
        elif kind.startswith("int"):
            parser.add_argument(f"--{key}", type=_optional(int), default=value)
        elif kind.startswith("float"):
            parser.add_argument(f"--{key}", type=_optional(float), default=value)
        else:
            parser.add_argument(f"--{key}", default=value)
    args = parser.parse_args(argv)
    return tuple(cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}) for cls in classes)
