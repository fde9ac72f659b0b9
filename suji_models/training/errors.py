"""How a run ends when something goes wrong: one clear line, printed once, last; nothing left behind.

A user mistake (missing, empty or undecodable corpus, a bad JSONL field, an unknown option value, a
DeepSpeed JSON that contradicts the command line, an incompatible checkpoint) is detected by every
rank alike, since they read the same files and options. Without care, each rank then prints its
traceback and the peers blocked in a collective add gloo's "Connection closed by peer", so the
actual message ends up buried. Here:

- `UserError` is the exception for such mistakes (a ValueError: `str()` is the whole message, e.g.
  `bad.txt:2: invalid UTF-8 ...`). `CorpusError` (tokenization), `SystemExit("message")`, argparse
  errors and `WeightsMismatchError` count as user errors too; `as_user_errors(...)` turns other
  exception types raised in a block (a bad tokenizer path, a `--model` folder that is no checkpoint)
  into one.
- `run_main(main)` wraps every entry point. The first rank that fails records the message in the
  run's error file (`$SUJI_ERROR_FILE`, which `launch.sh` sets and prints after the launcher's own
  exit chatter, so it is the last line; without launch.sh a file beside the launcher's pid) and
  prints `error: <message>` (only when launch.sh does not print it); a rank that sees the record of
  another rank, or fails in a collective because that rank is gone, exits quietly. A user error is
  one line; anything else also prints its traceback (it is a bug), then the one line. Exit code 1.
- DeepSpeed's CPU shared-memory allreduce buffer (`/dev/shm/deepspeed_allreduce_buffer_*`, 66 MB
  per rank) is unlinked by `init_distributed` as soon as every rank has mapped it, and again here on
  failure and on SIGTERM / SIGINT, so no ending leaves it in RAM.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
import traceback

ERROR_FILE_ENV = "SUJI_ERROR_FILE"  # set by launch.sh, which prints the recorded message last
PRINTED_BY_LAUNCHER_ENV = "SUJI_ERROR_PRINTED_BY_LAUNCHER"


class UserError(ValueError):
    """A mistake the user can fix; the message says what and where (`file:line: reason`)."""


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def unlink_shm_allreduce_buffer(rank: int | None = None) -> None:
    """DeepSpeed's CPU backend maps a 66 MB shared-memory buffer per rank when all ranks share a machine
    (`/dev/shm/deepspeed_allreduce_buffer_<uid>_<master addr>_<port>_<rank>`) and never unlinks it: each run
    would leave its buffers in /dev/shm, that is in RAM, until the machine restarts (a few hundred runs on
    different ports fill a 24 GB machine, and then new runs hang). Unlinking only removes the name: ranks
    that mapped the buffer keep using it until they exit."""
    rank = _rank() if rank is None else rank
    name = (f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{rank}")
    with contextlib.suppress(OSError):
        os.unlink(name)


@contextlib.contextmanager
def as_user_errors(*types: type[BaseException], prefix: str = ""):
    """Inside the block, an exception of one of `types` becomes a UserError with the same message
    (after `prefix`), e.g. `with as_user_errors(ValueError, OSError): load_tokenizer(path)`."""
    try:
        yield
    except UserError:
        raise
    except types as exc:
        raise UserError(f"{prefix}{exc}") from exc


# Config fields that fix parameter shapes: a checkpoint differing in one cannot be resumed.
ARCHITECTURE_FIELDS = ("vocab_size", "hidden_size", "embedding_size", "num_hidden_layers", "num_hidden_groups",
                       "num_attention_heads", "intermediate_size", "max_position_embeddings", "type_vocab_size",
                       "position_embedding_type", "norm_placement")


def check_resume(output_dir, config, resume: bool = True) -> None:
    """An `--output_dir` whose newest complete checkpoint holds another architecture than `config`
    cannot be resumed: a UserError saying so, instead of DeepSpeed's size mismatch deep in loading."""
    import json
    from pathlib import Path

    from .checkpoint import complete_checkpoints

    complete = complete_checkpoints(Path(output_dir)) if resume else []
    if not complete:
        return
    newest = complete[-1]
    try:
        saved = json.loads((newest / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    differ = [f"{key} {saved[key]} (asked: {getattr(config, key)})" for key in ARCHITECTURE_FIELDS
              if key in saved and hasattr(config, key) and saved[key] != getattr(config, key)]
    if differ:
        raise UserError(f"{newest}: incompatible checkpoint, another model ({', '.join(differ)}); resume with the "
                        "same model options, or pass a new --output_dir or --resume false")


def user_message(exc: BaseException) -> str | None:
    """The one-line message of a user error, or None for anything else (a bug). A user error wrapped by
    a library on its way up (`datasets`' DatasetGenerationError around a CorpusError) still counts."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        message = _own_user_message(exc)
        if message is not None:
            return message
        exc = exc.__cause__ or exc.__context__
    return None


def _own_user_message(exc: BaseException) -> str | None:
    from tokenization._io import CorpusError

    if isinstance(exc, (UserError, CorpusError)):
        return str(exc)
    if isinstance(exc, SystemExit) and isinstance(exc.code, str):  # SystemExit("--config x.json: no such file")
        return exc.code
    with contextlib.suppress(ImportError):
        from ..convert.loading import WeightsMismatchError

        if isinstance(exc, WeightsMismatchError):
            return str(exc)
    return None


def is_peer_failure(exc: BaseException) -> bool:
    """A collective that failed because another rank went away (gloo / NCCL / the TCP store)."""
    import torch.distributed as dist

    dist_error = getattr(dist, "DistError", ())
    text = str(exc)
    return isinstance(exc, dist_error) or (isinstance(exc, RuntimeError) and any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "gloo", "NCCL",
                            "TCPStore", "Socket Timeout")))


def error_file() -> str:
    """Where the first failing rank records its message: `$SUJI_ERROR_FILE`, or one file per launcher
    process (every rank of a node is a child of the same deepspeed / torchrun launcher)."""
    return os.environ.get(ERROR_FILE_ENV) or os.path.join(
        tempfile.gettempdir(), f"suji-error-{os.getuid()}-{os.getppid()}-{os.environ.get('MASTER_PORT', '')}")


_STARTED = time.time()


def _exists_fresh(path: str) -> bool:
    """A record of this run: one older than this process (give or take the ranks' start-up spread)
    can only be left over from an earlier run that happened to get the same launcher pid and port."""
    try:
        return os.stat(path).st_mtime >= _STARTED - 120
    except OSError:
        return False


def _record(message: str, kind: str = "crash") -> bool:
    """Record `message` unless another rank already did; True when this rank is the first. The second
    line says what kind of failure it was: `user` (a mistake that a restart would only repeat: launch.sh
    does not restart it) or `crash`."""
    path = error_file()
    if os.path.exists(path) and not _exists_fresh(path):
        with contextlib.suppress(OSError):
            os.unlink(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    except OSError:
        return True  # cannot record: report it here
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(message.replace("\n", " ") + "\n" + kind + "\n")
    return True


def _recorded(wait: float = 0.0) -> bool:
    deadline = time.monotonic() + wait
    while True:
        if _exists_fresh(error_file()):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _finish(code: int) -> None:
    """Leave now: the shm name is removed, output flushed; no interpreter teardown, whose process-group
    and worker threads can hang or abort once a peer is gone."""
    unlink_shm_allreduce_buffer()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def end_run(message: str, code: int = 1, kind: str = "crash") -> None:
    """End this process now, from any thread, with `message` as the run's error (the hang watchdog: a
    `crash`, which a restart may get past): recorded and printed as `report_failure` does, once across
    ranks (a rank that finds another's record exits quietly), then `_finish(code)`."""
    if _record(message, kind) and os.environ.get(PRINTED_BY_LAUNCHER_ENV) != "1":
        print(f"error: {message}", file=sys.stderr, flush=True)
    _finish(code)


def report_failure(exc: BaseException) -> int:
    """Print (at most once across ranks) what `exc` means for the user; returns the exit code."""
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, SystemExit) and isinstance(exc.code, int):
        return exc.code  # argparse's --help (0); exit codes chosen on purpose
    message = user_message(exc)
    if message is None and is_peer_failure(exc) and _recorded(wait=2.0):
        return 1  # another rank failed first and said why
    if message is not None and _rank() != 0 and _recorded(wait=3.0):
        return 1  # rank 0 met the same mistake and reported it
    kind = "crash" if message is None else "user"
    if message is None:
        message = f"{type(exc).__name__}: {exc}".strip()
    if not _record(message, kind):
        return 1
    if user_message(exc) is None:  # a bug: the traceback is part of the report
        traceback.print_exception(exc, file=sys.stderr)
    if os.environ.get(PRINTED_BY_LAUNCHER_ENV) != "1":
        print(f"error: {message}", file=sys.stderr, flush=True)
    return 1


def _argparse_error(self: argparse.ArgumentParser, message: str):
    raise UserError(f"{self.prog}: {message} (--help lists the options)")


def _on_signal(signum, frame):
    if os.getpid() != _INSTALLED_BY:  # a forked worker (datasets, DataLoader): behave as by default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _finish(128 + signum)  # quietly: whoever stopped the run knows why


_INSTALLED_BY = None


def install_signal_handlers() -> None:
    """SIGTERM / SIGINT (the launcher stopping the ranks after one failed, a scheduler, Ctrl-C): remove
    this rank's shm buffer name and exit quietly with 128 + the signal number."""
    global _INSTALLED_BY
    _INSTALLED_BY = os.getpid()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)


def run_main(main, *args, **kwargs):
    """Run an entry point's `main`; on failure print the one message (see the module docstring),
    clean up and exit non-zero. Returns what `main` returns when it succeeds."""
    install_signal_handlers()
    saved = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _argparse_error  # one line instead of usage + error on every rank
    try:
        return main(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - every way out is reported once
        if isinstance(exc, SystemExit) and exc.code in (None, 0):
            raise
        try:
            code = report_failure(exc)
        except BaseException:  # noqa: BLE001 - reporting must never hide the exit
            traceback.print_exc()
            code = 1
        _finish(code)
    finally:
        argparse.ArgumentParser.error = saved
