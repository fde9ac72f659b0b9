"""The error path's pieces in-process (the launcher-level behaviour is in test_error_tails.py)."""

import pytest

import suji_models as S
from suji_models.training import errors
from tokenization._io import CorpusError


def test_user_errors_are_recognized_and_others_are_bugs():
    assert errors.user_message(errors.UserError("x.json: bad")) == "x.json: bad"
    assert errors.user_message(CorpusError("c.txt", 2, "invalid UTF-8")) == "c.txt:2: invalid UTF-8"
    assert errors.user_message(SystemExit("--train_file is required")) == "--train_file is required"
    assert errors.user_message(KeyError("oops")) is None
    assert errors.user_message(SystemExit(2)) is None
    with pytest.raises(errors.UserError, match="^--tokenizer no tokenizer at x$"):
        with errors.as_user_errors(OSError, prefix="--tokenizer "):
            raise FileNotFoundError("no tokenizer at x")
    assert issubclass(errors.UserError, ValueError)  # callers catching ValueError keep working


def test_first_failing_rank_records_the_message_and_the_others_stay_quiet(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(errors.ERROR_FILE_ENV, str(tmp_path / "error"))
    monkeypatch.delenv(errors.PRINTED_BY_LAUNCHER_ENV, raising=False)
    monkeypatch.setenv("RANK", "0")
    assert errors.report_failure(CorpusError("c.txt", 2, "invalid UTF-8")) == 1
    assert (tmp_path / "error").read_text() == "c.txt:2: invalid UTF-8\nuser\n"  # a user error: not restarted
    assert capsys.readouterr().err == "error: c.txt:2: invalid UTF-8\n"
    monkeypatch.setenv("RANK", "1")  # the same mistake on another rank, and a peer's broken collective
    assert errors.report_failure(CorpusError("c.txt", 2, "invalid UTF-8")) == 1
    assert errors.report_failure(RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer")) == 1
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(errors.PRINTED_BY_LAUNCHER_ENV, "1")  # launch.sh prints the record last itself
    (tmp_path / "error").unlink()
    assert errors.report_failure(errors.UserError("x")) == 1
    assert capsys.readouterr().err == ""
    (tmp_path / "error").unlink()
    assert errors.report_failure(RuntimeError("a bug")) == 1  # a crash: launch.sh may restart it
    assert (tmp_path / "error").read_text() == "RuntimeError: a bug\ncrash\n"


def test_resuming_another_architecture_is_a_user_error(tmp_path):
    config = S.SujiConfig.from_preset("roformer-tiny")
    checkpoint = tmp_path / "checkpoint-4"
    S.SujiConfig.from_preset("roformer-tiny", num_hidden_layers=1).save_pretrained(checkpoint)
    errors.check_resume(tmp_path, config)  # no COMPLETE marker: never resumed, nothing to check
    (checkpoint / "COMPLETE").write_text("4")
    with pytest.raises(errors.UserError, match=r"checkpoint-4: incompatible checkpoint.*num_hidden_layers 1 \(asked: "):
        errors.check_resume(tmp_path, config)
    errors.check_resume(tmp_path, config, resume=False)
    config.save_pretrained(checkpoint)
    errors.check_resume(tmp_path, config)
