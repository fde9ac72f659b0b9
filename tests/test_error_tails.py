"""A failed run reads as one clear error: the real entry points under the launcher, with inputs a user
gets wrong. The last line printed is the precise message, printed once; the exit code is non-zero;
no rank adds a traceback; DeepSpeed's shared-memory buffers are gone (also after SIGTERM)."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import suji_models as S

from .conftest import REPO_ROOT
from .test_pretrain_e2e import free_port

LAUNCH = REPO_ROOT / "launch.sh"
GOOD = "今天天气很好，我们去公园散步吧。明天也许会下雨。\n" * 40
SMALL = ["--max_steps", 2, "--max_seq_length", 32, "--per_device_batch_size", 2, "--num_proc", 1]


def launch_env(port, procs=2):
    # SUJI_VENV: the environment running these tests (launch.sh reuses it; its stamp is already current)
    return {**os.environ, "SUJI_VENV": sys.prefix, "SUJI_MASTER_PORT": str(port), "SUJI_CPU_PROCS": str(procs),
            "PYTHONUNBUFFERED": "1"}


def pretrain(*args, procs=2, timeout=300):
    """`./launch.sh pretrain ARGS`: (exit code, stdout and stderr interleaved as a terminal shows them, port)."""
    port = free_port()
    out = subprocess.run([str(LAUNCH), "pretrain", *map(str, args)], cwd=REPO_ROOT, env=launch_env(port, procs), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return out.returncode, out.stdout, port


def last_line(log: str) -> str:
    return [line for line in log.splitlines() if line.strip()][-1]


def no_buffers_left(port) -> bool:
    return not glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_{port}_*")


def assert_one_clear_error(code, log, port, expected):
    assert code != 0, log[-3000:]
    assert last_line(log).startswith(f"error: {expected}"), log[-3000:]
    assert log.count(expected) == 1, log[-3000:]  # once, not once per rank
    assert "Traceback" not in log and "Connection closed by peer" not in log, log[-3000:]
    assert no_buffers_left(port), "shared-memory buffers left behind"


def test_invalid_utf8_ends_with_file_line_reason(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("好的文本\n".encode() + b"\xff\xfe oops\n" + GOOD.encode())
    code, log, port = pretrain("--train_file", bad, "--output_dir", tmp_path / "run", *SMALL)
    assert_one_clear_error(code, log, port, f"{bad}:2: invalid UTF-8")


@pytest.mark.slow  # one launcher run each (~15 s idle, a minute on a busy machine); CI runs -m slow
@pytest.mark.parametrize("case", ["missing", "empty", "jsonl_field"])
def test_corpus_mistakes_end_with_their_message(case, tmp_path):
    if case == "missing":
        corpus, extra, expected = tmp_path / "nosuch.txt", [], f"{tmp_path / 'nosuch.txt'}: no such file or directory"
    elif case == "empty":
        corpus, extra = tmp_path / "empty.txt", []
        corpus.write_text("\n\n")
        expected = f"{corpus}: corpus is empty"
    else:
        corpus = tmp_path / "news.jsonl"
        corpus.write_text("".join(json.dumps({"content": t}, ensure_ascii=False) + "\n" for t in GOOD.split()[:5]))
        extra, expected = ["--text_field", "body"], f"{corpus}:1 (field 'body'): field missing"
    code, log, port = pretrain("--train_file", corpus, "--output_dir", tmp_path / "run", *extra, *SMALL)
    assert_one_clear_error(code, log, port, expected)


def test_unknown_option_value_ends_with_the_choices(tmp_path):
    code, log, port = pretrain("--lr_decay", "sideways", "--output_dir", tmp_path / "run", *SMALL)
    assert_one_clear_error(code, log, port, "run_mlm.py: argument --lr_decay")
    assert "invalid choice: 'sideways' (choose from 'linear', 'cosine', 'constant')" in last_line(log)


def test_contradicting_deepspeed_json_ends_with_the_contradiction(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4}))
    code, log, port = pretrain("--deepspeed_config", ds, "--output_dir", tmp_path / "run", *SMALL)
    assert_one_clear_error(code, log, port, f"{ds}: train_micro_batch_size_per_gpu=4 contradicts the command line (2)")


@pytest.mark.slow
def test_incompatible_checkpoint_ends_with_what_differs(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoint-5"
    S.SujiConfig.from_preset("roformer-tiny", hidden_size=64, num_attention_heads=2).save_pretrained(checkpoint)
    (checkpoint / "COMPLETE").write_text("5")
    code, log, port = pretrain("--output_dir", tmp_path / "run", *SMALL)
    assert_one_clear_error(code, log, port, f"{checkpoint}: incompatible checkpoint, another model (")
    assert "hidden_size 64 (asked: 32)" in last_line(log)


def test_without_launch_sh_the_failing_rank_prints_the_message_once(tmp_path):
    """`deepspeed pretrain/run_mlm.py ...` directly: the message is printed once by the failing rank,
    and only the launcher's own exit lines follow it."""
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\n" + GOOD.encode())
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
    env.pop("SUJI_ERROR_FILE", None)
    env.pop("SUJI_ERROR_PRINTED_BY_LAUNCHER", None)
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    out = subprocess.run([deepspeed, "--num_gpus", "2", "--master_port", str(port), "pretrain/run_mlm.py",
                          "--train_file", str(bad), "--output_dir", str(tmp_path / "run"), *map(str, SMALL)],
                         cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         timeout=300)
    log = out.stdout
    assert out.returncode != 0
    message = f"error: {bad}:1: invalid UTF-8"
    lines = [line for line in log.splitlines() if line.strip()]
    mine = [i for i, line in enumerate(lines) if line.startswith(message)]
    assert len(mine) == 1 and log.count(f"{bad}:1: invalid UTF-8") == 1, log[-3000:]
    assert all("launch.py" in line for line in lines[mine[0] + 1:]), log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert no_buffers_left(port)


def test_sigterm_stops_every_rank_quietly_and_leaves_no_buffer(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(GOOD * 5)
    port = free_port()
    proc = subprocess.Popen([str(LAUNCH), "pretrain", "--train_file", str(corpus), "--output_dir", str(tmp_path / "run"),
                             "--max_steps", "100000", "--log_steps", "1", "--max_seq_length", "32",
                             "--per_device_batch_size", "2", "--num_proc", "1"],
                            cwd=REPO_ROOT, env=launch_env(port), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = []
    deadline = time.time() + 240
    for line in proc.stdout:  # wait until training runs (every rank has passed init and data loading)
        log.append(line)
        if line.startswith("step ") or time.time() > deadline:
            break
    assert any(line.startswith("step ") for line in log), "".join(log)[-3000:]
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    text = "".join(log) + rest
    assert proc.returncode != 0
    assert "Traceback" not in text, text[-3000:]
    assert no_buffers_left(port), "shared-memory buffers left behind after SIGTERM"


def test_a_recipe_on_the_finetune_driver_ends_with_the_bad_line(tmp_path):
    """Every recipe runs through the driver, which reports a data error as the run's one last line."""
    bad = tmp_path / "train.bio"
    bad.write_text("中 B-LOC\n国 I-LOC\n\n人民\n", encoding="utf-8")
    port = free_port()
    out = subprocess.run([str(LAUNCH), "finetune", "ner", "--train_file", str(bad), "--tokenizer",
                          str(REPO_ROOT / "pretrain" / "data" / "vocab.txt"), "--output_dir", str(tmp_path / "run")],
                         cwd=REPO_ROOT, env=launch_env(port), text=True, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=300)
    assert_one_clear_error(out.returncode, out.stdout, port, f"{bad}:4: expected 'token tag', got '人民'")
