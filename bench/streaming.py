"""Streaming pretraining at scale: each process's RSS over a long stream, and throughput next to the map-style path.

    python bench/streaming.py                                  # ~2 GB corpus in the temp dir, 2 CPU processes
    python bench/streaming.py --size_mb 8 --steps 20 --log_steps 5      # a quick look
    python bench/streaming.py --work /big/disk/suji-stream --keep       # keep the generated corpus

1. Corpus: the base file (`--base`, CLUECorpusSmall sample) repeated until `--size_mb`, each repeat with its own
   seeded shuffle of the line order (so no two stretches of the stream are the same text), written as `--files`
   text files (datasets hands whole files to the ranks, so the count should be a multiple of `--procs`).
2. `pretrain/run_mlm.py --streaming true` on that folder with `--procs` CPU processes (DeepSpeed launcher, gloo),
   `--steps` steps. Every rank's RSS (psutil, else /proc) is sampled every `--sample_s` seconds and whenever rank
   0 prints a step line; each of start / middle / end is the peak over one log window (`--log_steps` steps): the
   second window (the first holds the engine's warm-up, also left out of the throughput), the one that ends at
   or after half the steps, and the last. Peak: the highest sample over all training windows.
3. The map-style path (`--streaming false`) on the base file alone, same model, batch, sequence length and steps.

Verdict: RSS end / start per process; PASS when every ratio is at most 1 + `--tolerance`. Throughput = non-pad
tokens per second that the loop prints (time-weighted over the log windows after the first). Coverage: rows the
stream trained on (steps x batch x procs) against the rows of the whole corpus (the map-style run's row count of
the base file x the repeats), also in MB of text.

Measured numbers: README.md, section Benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import free_port  # bench/ is on the path of a bench script

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "data" / "corpus" / "clue_corpus_small" / "CLUECorpusSmall_sampled.txt"
ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
STEP_LINE = re.compile(r"^step\s+(\d+) \|.*tokens/s ([\d.e+]+)")


def generate(base: Path, folder: Path, size_mb: float, files: int, seed: int) -> dict:
    """Write ~size_mb of text: repeats of `base`'s lines, each in its own seeded order, over `files` files."""
    lines = [line if line.endswith(b"\n") else line + b"\n" for line in base.read_bytes().splitlines(keepends=True)
             if line.strip()]
    per_repeat = sum(map(len, lines))
    repeats = max(1, round(size_mb * 2**20 / per_repeat))
    files = min(files, repeats)  # a file holds whole repeats
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for k in range(files):
        with open(folder / f"part-{k:04d}.txt", "wb") as out:
            for r in range(k * repeats // files, (k + 1) * repeats // files):
                order = list(range(len(lines)))
                random.Random(seed * 1_000_003 + r).shuffle(order)
                out.write(b"".join(lines[i] for i in order))
                written += per_repeat
    return {"repeats": repeats, "bytes": written, "base_bytes": per_repeat, "files": files}


def descendants(pid: int) -> list[int]:
    try:
        import psutil

        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except ImportError:
        pass
    except Exception:  # the launcher is gone
        return []
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def rank_of(pid: int, script: str) -> int | None:
    """The RANK of a training process started by the launcher (None for the launcher's own processes)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    if script.encode() not in b" ".join(cmdline) or b"deepspeed.launcher" in b" ".join(cmdline):
        return None
    rank = next((v[5:] for v in environ if v.startswith(b"RANK=")), None)
    return int(rank) if rank is not None else None


def rss_mb(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        pass
    except Exception:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class RssSampler:
    """RSS of every rank of a launcher's tree: on request, and every `period` seconds in a thread."""

    def __init__(self, launcher_pid: int, script: str, period: float):
        self.launcher, self.script, self.period = launcher_pid, script, period
        self.ranks: dict[int, int] = {}  # rank -> pid
        self.samples: list[tuple[int, dict[int, float]]] = []  # (last step logged, {rank: MB})
        self.step, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def sample(self) -> dict[int, float]:
        if not self.ranks:
            for pid in descendants(self.launcher):
                rank = rank_of(pid, self.script)
                if rank is not None:
                    self.ranks[rank] = pid
        now = {rank: rss_mb(pid) for rank, pid in sorted(self.ranks.items())}
        now = {rank: mb for rank, mb in now.items() if mb is not None}
        if now:
            self.samples.append((self.step, now))
        return now

    def _loop(self):
        while not self._stop.wait(self.period):
            self.sample()

    def stop(self):
        self._stop.set()
        self._thread.join()


def train(name: str, args, work: Path, env: dict, train_file, streaming: bool) -> dict:
    """One `run_mlm.py` run under the DeepSpeed launcher; throughput, RSS at start/middle/end and peak, rows."""
    script = "pretrain/run_mlm.py"
    launcher = Path(sys.executable).parent / "deepspeed"
    command = [str(launcher), "--num_gpus", str(args.procs), "--master_port", str(free_port()), script,
               "--train_file", str(train_file), "--streaming", str(streaming).lower(),
               "--max_seq_length", str(args.seq), "--per_device_batch_size", str(args.batch),
               "--max_steps", str(args.steps), "--log_steps", str(args.log_steps),
               "--warmup_steps", str(args.log_steps), "--learning_rate", "1e-3", "--seed", "42",
               "--model_preset", args.model_preset, "--output_dir", str(work / name)]
    if args.model_overrides:
        command += ["--model_overrides", args.model_overrides]
    started = time.time()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    sampler = RssSampler(proc.pid, script, args.sample_s)
    lines = []  # (step, number of samples taken when rank 0's line for that step arrived)
    windows, log, last, first_line = [], [], None, None
    try:
        for line in proc.stdout:
            now = time.perf_counter()
            log.append(line)
            if args.verbose:
                sys.stderr.write(line)
            found = STEP_LINE.search(line)
            if found is None:
                continue
            step = int(found.group(1))
            rss = sampler.sample()
            lines.append((step, len(sampler.samples)))
            sampler.step = step
            if last is not None:  # the first window (engine warm-up) is left out
                windows.append((float(found.group(2)), now - last))
            else:
                first_line = now
            last = now
            now_mb = ", ".join(f"rank {r}: {mb:.0f}" for r, mb in rss.items())
            print(f"[{name}] step {step}/{args.steps}  RSS MB {now_mb}  ({time.time() - started:.0f}s)",
                  file=sys.stderr, flush=True)
        proc.wait()
    finally:
        sampler.stop()
        if proc.poll() is None:
            proc.kill()
    text = "".join(log)
    if proc.returncode or len(lines) < 3:
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{text[-4000:]}")

    def window(k):  # peak RSS per rank over the log window that ends with step line k (samples after line k-1)
        taken = sampler.samples[lines[k - 1][1]:lines[k][1]]
        if not taken:
            raise SystemExit(f"{name}: no RSS sample of the training processes (were they found?)\n{text[-2000:]}")
        return lines[k][0], {rank: max(s[rank] for _, s in taken if rank in s) for rank in taken[-1][1]}

    # start: the second log window (the first holds the engine's warm-up, left out of the throughput too)
    middle = next(k for k, (step, _) in enumerate(lines) if k >= 1 and step >= args.steps // 2)
    marks = {"start": window(1), "middle": window(max(middle, 1)), "end": window(len(lines) - 1)}
    training = sampler.samples[lines[0][1]:lines[-1][1]]
    peak = {rank: max(s.get(rank, 0.0) for _, s in training) for rank in marks["start"][1]}
    rows = re.search(r"; (\d+) rows, (\d+) tokens", text)
    seconds = sum(s for _, s in windows)
    return {"run": name, "tokens_per_s": sum(r * s for r, s in windows) / seconds,
            "train_s": last - first_line, "wall_s": time.time() - started,
            "marks": {k: [step, {str(r): mb for r, mb in rss.items()}] for k, (step, rss) in marks.items()},
            "peak": {str(r): mb for r, mb in peak.items()},
            "rows": int(rows.group(1)) if rows else None, "tokens": int(rows.group(2)) if rows else None}


def ratios(result) -> dict[str, float]:
    start, end = result["marks"]["start"][1], result["marks"]["end"][1]
    return {rank: end[rank] / start[rank] for rank in start}


def report(args, corpus: dict, stream: dict, mapped: dict | None) -> bool:
    mb = 2**20
    print(f"\nstreaming corpus: {corpus['bytes'] / mb:.0f} MB in {corpus['files']} files ({corpus['repeats']} "
          f"repeats of {Path(args.base).name}, {corpus['base_bytes'] / mb:.2f} MB, each in its own line order); "
          f"{args.procs} CPU processes, preset {args.model_preset}"
          + (f" {args.model_overrides}" if args.model_overrides else "")
          + f", seq {args.seq}, batch {args.batch} per process, {args.steps} steps\n")
    marks = stream["marks"]
    print(f"| rank | RSS start, step {marks['start'][0]} (MB) | middle, step {marks['middle'][0]} (MB) "
          f"| end, step {marks['end'][0]} (MB) | peak (MB) | end / start |")
    print("|---|---|---|---|---|---|")
    growth = ratios(stream)
    for rank in marks["start"][1]:
        start, middle, end = (marks[k][1][rank] for k in ("start", "middle", "end"))
        print(f"| {rank} | {start:.0f} | {middle:.0f} | {end:.0f} | {stream['peak'][rank]:.0f} | {growth[rank]:.3f} |")
    consumed = args.steps * args.batch * args.procs
    if mapped and mapped["rows"]:
        total_rows = mapped["rows"] * corpus["repeats"]
        print(f"\ncoverage: the stream trained on {consumed} rows of ~{total_rows} in the corpus "
              f"({consumed / total_rows:.1%}, ~{consumed / mapped['rows'] * corpus['base_bytes'] / mb:.3g} MB of "
              f"{corpus['bytes'] / mb:.0f} MB of text)")
    else:
        print(f"\ncoverage: the stream trained on {consumed} rows")
    print()
    print("| path | data | tokens/s | ratio | RSS end, max over ranks (MB) | RSS end / start, worst rank "
          "| training time (s) |")
    print("|---|---|---|---|---|---|---|")
    runs = [("streaming", f"{corpus['bytes'] / mb:.0f} MB, {corpus['files']} files", stream)]
    if mapped:
        runs.append(("map-style", f"{Path(args.base).name} ({corpus['base_bytes'] / mb:.2f} MB, "
                                  f"{mapped['rows']} rows)", mapped))
    for name, data, r in runs:
        print(f"| {name} | {data} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / stream['tokens_per_s']:.2f}x "
              f"| {max(r['marks']['end'][1].values()):.0f} | {max(ratios(r).values()):.3f} | {r['train_s']:.0f} |")
    worst = max(growth.values())
    passed = worst <= 1 + args.tolerance
    print(f"\nverdict: {'PASS' if passed else 'FAIL'}: RSS end / start per process "
          + ", ".join(f"rank {r} {g:.3f}" for r, g in growth.items())
          + f"; tolerance {args.tolerance:.0%} (at most {1 + args.tolerance:.2f})")
    return passed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size_mb", type=float, default=2048, help="corpus size to generate")
    parser.add_argument("--base", default=str(CORPUS), help="the file repeated")
    parser.add_argument("--files", type=int, default=8, help="corpus files (a multiple of --procs)")
    parser.add_argument("--work", help="folder for the corpus and runs (default: a new one in the temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep --work afterwards")
    parser.add_argument("--seed", type=int, default=0, help="seed of the line orders")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--log_steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--model_preset", default="roformer-tiny")
    parser.add_argument("--model_overrides", default="")
    parser.add_argument("--tolerance", type=float, default=0.10, help="largest RSS growth start -> end accepted")
    parser.add_argument("--sample_s", type=float, default=0.5, help="RSS sampling period for the peak")
    parser.add_argument("--skip_map", action="store_true", help="no map-style run (no coverage, no ratio)")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--verbose", action="store_true", help="echo the runs' output")
    args = parser.parse_args(argv)
    if args.steps < 3 * args.log_steps:
        raise SystemExit("--steps must be at least 3 x --log_steps (start, middle and end are step lines)")
    env = {**os.environ, **ENV}
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="suji-bench-streaming-"))
    created = not work.exists()
    work.mkdir(parents=True, exist_ok=True)
    try:
        started = time.time()
        corpus = generate(Path(args.base), work / "corpus", args.size_mb, args.files, args.seed)
        print(f"wrote {corpus['bytes'] / 2**20:.0f} MB in {corpus['files']} files ({time.time() - started:.0f}s)",
              file=sys.stderr, flush=True)
        if corpus["files"] % args.procs:
            print(f"note: {corpus['files']} file(s) over {args.procs} processes: every process reads the whole "
                  "stream and keeps its share of the rows", file=sys.stderr)
        stream = train("streaming", args, work, env, work / "corpus", streaming=True)
        mapped = None if args.skip_map else train("map-style", args, work, env, args.base, streaming=False)
        passed = report(args, corpus, stream, mapped)
        if args.json:
            Path(args.json).write_text(json.dumps({"corpus": corpus, "runs": [r for r in (stream, mapped) if r],
                                                   "growth": ratios(stream), "tolerance": args.tolerance,
                                                   "passed": passed}, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work / "corpus", ignore_errors=True)
            for name in ("streaming", "map-style"):
                shutil.rmtree(work / name, ignore_errors=True)
            if args.work is None or created:
                shutil.rmtree(work, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
