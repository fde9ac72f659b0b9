"""The scripts' option parser: defaults <- script overrides <- JSON --config <- --key value."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from suji_models.training.loop import TrainArgs
from suji_models.training.options import parse_args
from suji_models.training.pretrain import DataArgs, parse_args as parse_pretrain_args

from .conftest import REPO_ROOT


@dataclass
class Extra:
    epochs: int | None = None
    ratio: float = 0.5
    head: str = "crf"


def test_precedence_types_and_unknown_keys(tmp_path):
    config = tmp_path / "recipe.json"
    config.write_text(json.dumps({"head": "global_pointer", "max_steps": 7, "ratio": 0.25}))
    extra, train = parse_args((Extra, TrainArgs), ["--config", str(config), "--ratio", "0.75", "--resume", "no",
                                                   "--epochs", "none"], learning_rate=1e-3, max_steps=3)
    assert (extra.head, extra.ratio, extra.epochs) == ("global_pointer", 0.75, None)  # JSON, then the command line
    assert (train.max_steps, train.learning_rate, train.resume) == (7, 1e-3, False)  # override, then JSON
    assert parse_args((Extra,), ["--epochs", "2"])[0].epochs == 2
    config.write_text(json.dumps({"no_such_option": 1}))
    with pytest.raises(SystemExit, match="unknown keys \\['no_such_option'\\]"):
        parse_args((Extra, TrainArgs), ["--config", str(config)])
    with pytest.raises(ValueError, match="unknown option defaults"):
        parse_args((Extra,), [], typo=1)


def test_pretraining_scripts_parse_the_same_way():
    data, _, train = parse_pretrain_args(["--max_seq_length", "256", "--fused_adamw", "false"], model_preset="bert-tiny")
    assert isinstance(data, DataArgs) and (data.max_seq_length, data.model_preset) == (256, "bert-tiny")
    assert isinstance(train, TrainArgs) and train.fused_adamw is False


def test_choices_are_checked_on_the_command_line_and_in_configs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args((TrainArgs,), ["--lr_decay", "foo"])
    assert "invalid choice: 'foo'" in capsys.readouterr().err
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"precision": "fp8"}))
    with pytest.raises(SystemExit):
        parse_args((TrainArgs,), ["--config", str(config)])
    assert "precision 'fp8' is not one of auto, bf16, fp16, fp32" in capsys.readouterr().err


ENTRY_POINTS = sorted(str(p.relative_to(REPO_ROOT)) for p in [*REPO_ROOT.glob("pretrain/*.py"),
                                                              *REPO_ROOT.glob("finetune/*.py")])


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_every_entry_point_documents_every_option(script):
    """Every option of every options dataclass a script declares or uses has a help text, and a recipe's
    `--help` (built as `run` builds it) lists its options."""
    import dataclasses
    import importlib.util
    import sys

    from suji_models.training.finetune import FinetuneArgs, Task
    from suji_models.training.options import build_parser

    name = f"entry_{Path(script).parent.name}_{Path(script).stem}"
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their annotations through the module
    spec.loader.exec_module(module)
    own = {v for v in vars(module).values()
           if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == name}
    for cls in own | {FinetuneArgs, TrainArgs, DataArgs}:
        for field in dataclasses.fields(cls):
            assert field.metadata.get("help"), f"{script}: {cls.__name__}.{field.name} has no help text"
    for task in [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Task) and v is not Task]:
        classes = (FinetuneArgs, *((task.Options,) if task.Options else ()), TrainArgs)
        text = build_parser(classes).format_help()
        for cls in classes:
            for field in dataclasses.fields(cls):
                assert f"--{field.name}" in text, f"{script}: --{field.name} missing from --help"
