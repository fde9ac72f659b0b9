"""The scripts' option parser: defaults <- script overrides <- JSON --config <- --key value."""

import json
from dataclasses import dataclass

import pytest

from suji_models.training.loop import TrainArgs
from suji_models.training.options import parse_args
from suji_models.training.pretrain import DataArgs, parse_args as parse_pretrain_args


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
    data, train = parse_pretrain_args(["--max_seq_length", "256", "--fused_adamw", "false"], model_preset="bert-tiny")
    assert isinstance(data, DataArgs) and (data.max_seq_length, data.model_preset) == (256, "bert-tiny")
    assert isinstance(train, TrainArgs) and train.fused_adamw is False
