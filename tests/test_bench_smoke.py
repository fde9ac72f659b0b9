"""Smoke test of the benchmark scripts: each runs end to end with the tiniest settings and prints its table with
ratios against its reference row. Timings here mean nothing; the measured tables are in README.md (Benchmarks).

The three scripts start together (each is mostly Python start-up and single-threaded), which keeps the whole
module near 50 s on an idle 2-core machine."""

import os
import re
import subprocess
import sys

import pytest

from .conftest import REPO_ROOT, SHARED

CLUE = SHARED / "data" / "corpus" / "clue_corpus_small" / "CLUECorpusSmall_sampled.txt"
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
       "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    corpus = tmp / "corpus.txt"  # a few documents keep data preparation short
    corpus.write_text("\n".join(CLUE.read_text(encoding="utf-8").splitlines()[:40]) + "\n", encoding="utf-8")
    commands = {
        "model": ["model.py", "--seqs", 16, "--batch", 2, "--iters", 1, "--warmup", 0, "--threads", 1, "--rounds", 1,
                  "--families", "bert"],
        "pretrain": ["pretrain.py", "--train_file", corpus, "--seq", 32, "--batch", 2, "--steps", 3,
                     "--log_steps", 1, "--threads", 1, "--runs", "hf,suji"],
        "memory": ["memory.py", "--size", "tiny", "--configs", "0,2", "--steps", 2, "--batch", 2, "--seq", 32],
        "generate": ["generate.py", "--size", "tiny", "--batches", "1,2", "--prompts", 8, "--new_tokens", 4,
                     "--iters", 1, "--warmup", 0, "--rounds", 1, "--threads", 1],
    }
    procs = {}
    for name, (script, *args) in commands.items():
        with open(tmp / f"{name}.out", "w") as out, open(tmp / f"{name}.err", "w") as err:
            procs[name] = subprocess.Popen([sys.executable, f"bench/{script}", *map(str, args)], cwd=REPO_ROOT,
                                           env={**os.environ, **ENV}, stdout=out, stderr=err)
    results = {}
    for name, proc in procs.items():
        proc.wait(timeout=600)
        stdout, stderr = (tmp / f"{name}.out").read_text(), (tmp / f"{name}.err").read_text()
        results[name] = (proc.returncode, stdout, stderr)
    return results


def table(result):
    """The markdown rows after the header separator, as lists of cells."""
    code, stdout, stderr = result
    assert code == 0, (stdout + stderr)[-4000:]
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|---"))
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[start + 1:] if line.startswith("|")]


def ratios(rows, column):
    values = [row[column] for row in rows]
    assert all(re.fullmatch(r"\d+\.\d\dx", v) for v in values), rows
    return [float(v[:-1]) for v in values]


def test_model_bench_prints_speed_and_memory_ratios(outputs):
    rows = table(outputs["model"])
    assert [r[2] for r in rows] == ["transformers", "suji", "suji, masked-only head", "suji + RealFormer",
                                    "suji + entropy scale"]
    assert ratios(rows, 4)[0] == 1.0 and ratios(rows, 6)[0] == 1.0
    assert all(r > 0 for r in ratios(rows, 4) + ratios(rows, 6))


def test_pretrain_bench_prints_throughput_ratio(outputs):
    rows = table(outputs["pretrain"])
    assert [r[0].split(" ")[0] for r in rows] == ["HF", "Suji"]
    speed = ratios(rows, 2)
    assert speed[0] == 1.0 and speed[1] > 0
    padding = [float(r[3].rstrip("%")) for r in rows]
    assert padding[1] < padding[0]  # packing leaves (almost) no padding


def test_memory_bench_prints_ratio_per_zero_stage(outputs):
    rows = table(outputs["memory"])
    assert [r[0] for r in rows] == ["0", "2"]
    held = [float(r[1]) for r in rows]
    assert all(float(mb) > 0 for r in rows for mb in (r[1], r[3], r[5]))
    assert ratios(rows, 2)[0] == 1.0 and ratios(rows, 4)[0] == 1.0
    assert held[1] < held[0]  # ZeRO-2 holds a share of the gradients and optimizer states, not all of them


def test_generate_bench_prints_new_token_ratios(outputs):
    rows = table(outputs["generate"])
    assert [(r[0], r[1], r[3]) for r in rows] == [(d, b, m) for d in ("greedy", "top-p") for b in ("1", "2")
                                                 for m in ("transformers", "suji")]
    speed = ratios(rows, 5)
    assert speed[::2] == [1.0] * 4 and all(s > 0 for s in speed)
    assert [r[6] for r in rows if r[0] == "greedy"] == ["yes"] * 4  # same weights, same greedy tokens


def markdown_tables(stdout):
    """Every markdown table of a report, as lists of rows of cells (header first, separator dropped)."""
    tables, current = [], None
    for line in stdout.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            if not line.startswith("|---"):
                current.append([c.strip() for c in line.strip("|").split("|")])
        else:
            current = None
    return tables


def test_streaming_bench_reports_flat_rss_per_rank_and_both_throughputs(tmp_path):
    """bench/streaming.py on a ~2 MB generated corpus (a 300-document base repeated), 12 steps: the RSS table (one
    row per rank, start / middle / end / peak, end / start under the tolerance), the coverage line, the throughput
    table (streaming, then the map-style path on the base file) and a PASS verdict; the generated corpus is
    removed afterwards."""
    import json

    work, report, base = tmp_path / "work", tmp_path / "streaming.json", tmp_path / "base.txt"
    base.write_text("\n".join(CLUE.read_text(encoding="utf-8").splitlines()[:300]) + "\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "bench/streaming.py", "--base", str(base), "--size_mb", "2", "--files", "2",
                          "--steps", "12", "--log_steps", "3", "--batch", "8", "--seq", "64", "--work", str(work),
                          "--json", str(report)],
                         cwd=REPO_ROOT, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    rss, speed = markdown_tables(out.stdout)
    assert [c.split(",")[0] for c in rss[0]] == ["rank", "RSS start", "middle", "end", "peak (MB)", "end / start"]
    assert [r[0] for r in rss[1:]] == ["0", "1"]
    result = json.loads(report.read_text())
    for row in rss[1:]:
        start, middle, end, peak = map(float, row[1:5])
        assert 0 < start <= peak and 0 < middle <= peak and 0 < end <= peak
        assert float(row[5]) == pytest.approx(end / start, abs=2e-3)
        assert float(row[5]) <= 1 + result["tolerance"]
    assert re.search(r"^coverage: the stream trained on 192 rows of ~\d+ in the corpus", out.stdout, re.M)
    assert [r[0] for r in speed[1:]] == ["streaming", "map-style"]
    assert ratios(speed[1:], 3)[0] == 1.0 and all(float(r[2]) > 0 for r in speed[1:])
    assert re.search(r"^verdict: PASS: RSS end / start per process rank 0 [\d.]+, rank 1 [\d.]+; tolerance 10%",
                     out.stdout, re.M)
    assert result["passed"] and not (work / "corpus").exists()
