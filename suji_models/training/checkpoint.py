"""Checkpoints of the training loop: resumable DeepSpeed states, the best model of an evaluated run,
and the final consolidated `from_pretrained` folder (with an optional plain-transformers export).

A resumable checkpoint counts only once its COMPLETE marker exists, which rank 0 writes after every
rank has finished writing its shard (a barrier in between): a run killed mid-save resumes from the
previous one. Just before the marker, rank 0 writes `MANIFEST.json`: the size and sha256 of every file
of the checkpoint. Resuming checks the newest checkpoint against it; one that no longer matches (a
flipped byte, a truncated or missing shard) is moved aside to `bad-checkpoint-N` with a one-line
message naming the file, and the run resumes from the previous checkpoint. A checkpoint written
before manifests existed (COMPLETE only) is still resumed, unchecked.

Old checkpoints are removed only after the new one is complete, so a save that fails (a full disk:
`UserError` "no space left on device while saving checkpoint-N; checkpoint-M is intact") leaves the
previous one as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from .faults import ENOSPC_ENV as FAULT_ENV  # noqa: F401 (tests name it here)
from .faults import enospc_if_asked, kill_if_asked


MANIFEST = "MANIFEST.json"
LAYOUT = "layout.json"  # world size, per-device batch, accumulation and ZeRO stage of the run that saved it
UNIVERSAL = "universal"  # DeepSpeed's universal copy of `state`, made when the world size changes
MARKER = "COMPLETE"


def complete_checkpoints(output_dir: Path):
    """Complete checkpoints, oldest first. A checkpoint counts only once its COMPLETE marker exists,
    which rank 0 writes after every rank has finished writing (a barrier in between)."""
    found = [p for p in Path(output_dir).glob("checkpoint-*")
             if p.name.split("-")[1].isdigit() and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checkpoint_files(path: Path):
    """Every file of a checkpoint (relative, sorted), except the manifest and the marker themselves."""
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                  if p.is_file() and p.relative_to(path).as_posix() not in (MANIFEST, MARKER)
                  and not p.name.endswith(".tmp"))


def _write_atomically(path: Path, text: str) -> None:
    """Write to a temporary name, flush to disk, then rename: the file exists whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_manifest(path: Path, step: int) -> dict:
    """`path/MANIFEST.json`: step, and size and sha256 of every file now in the checkpoint."""
    path = Path(path)
    files = {name: {"size": (path / name).stat().st_size, "sha256": _sha256(path / name)}
             for name in _checkpoint_files(path)}
    manifest = {"step": step, "files": files}
    _write_atomically(path / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def verify_checkpoint(path: Path) -> str | None:
    """None when `path` matches its manifest, else the first problem, naming the file. A checkpoint
    without a manifest (written before manifests existed) is not checked."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        return None
    try:
        files = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as why:
        return f"{path / MANIFEST}: unreadable manifest ({why})"
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            return f"{file}: missing"
        size = file.stat().st_size
        if size != expected["size"]:
            return f"{file}: {size} bytes, the manifest says {expected['size']} (truncated or overwritten)"
        if _sha256(file) != expected["sha256"]:
            return f"{file}: sha256 differs from the manifest (corrupted)"
    return None


def _set_aside(path: Path) -> Path:
    """Rename a bad checkpoint out of the `checkpoint-*` names (kept for inspection, never resumed
    nor counted by the rotation)."""
    target, n = path.with_name(f"bad-{path.name}"), 1
    while target.exists():
        target, n = path.with_name(f"bad-{path.name}.{n}"), n + 1
    path.rename(target)
    return target


def newest_valid_checkpoint(output_dir: Path, log=print) -> Path | None:
    """The newest complete checkpoint that matches its manifest. Bad ones newer than it are moved
    aside to `bad-checkpoint-N`, with one line each naming the bad file. Called on one rank."""
    for path in reversed(complete_checkpoints(output_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path
        aside = _set_aside(path)
        log(f"checkpoint {path.name} is bad: {problem}; moved to {aside.name}, falling back to the previous one")
    return None


def _intact_message(output_dir: Path, step: int) -> str:
    previous = [p for p in complete_checkpoints(output_dir) if int(p.name.split("-")[1]) < step]
    if not previous:
        return "there is no earlier checkpoint"
    problem = verify_checkpoint(previous[-1])
    return f"{previous[-1].name} is intact" if problem is None else f"{previous[-1].name} is bad too ({problem})"


def save_checkpoint(engine, output_dir: Path, step: int, keep: int, rank: int, save_files=None,
                    layout: dict | None = None, state=None):
    """Every rank writes its shard; after a barrier rank 0 adds config, `save_files` and the run's
    `layout` (world size and batch shape, read back by `read_layout`), then the manifest and the
    COMPLETE marker, and only then removes checkpoints beyond `keep`. `state` (a training trick's, with
    `state_dict()`) is saved in DeepSpeed's client state, beside the step. A full disk is a UserError
    saying which checkpoint is still intact."""
    from .errors import UserError

    output_dir = Path(output_dir)
    path = output_dir / f"checkpoint-{step}"
    if rank == 0:  # a leftover of the same step (an abandoned run) must not look complete while rewritten
        for name in (MARKER, MANIFEST):
            (path / name).unlink(missing_ok=True)
    dist.barrier()
    try:
        client = {"step": step} if state is None else {"step": step, "trick_state": state.state_dict()}
        engine.save_checkpoint(str(path), tag="state", client_state=client)
        enospc_if_asked(step)  # the shards are written, the disk fills up before the checkpoint is complete
        kill_if_asked("save", step, rank)
        dist.barrier()  # every rank has written its shard
        if rank == 0:
            engine.module.config.save_pretrained(path)  # so the checkpoint can be consolidated on its own
            if layout is not None:
                _write_atomically(path / LAYOUT, json.dumps({"step": step, **layout}, indent=1))
            if save_files is not None:
                save_files(path)
            write_manifest(path, step)
            _write_atomically(path / MARKER, str(step))
    except OSError as why:
        if why.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UserError(f"no space left on device while saving {path.name} in {output_dir}; "
                        f"{_intact_message(output_dir, step)} (free space and run again to resume)") from why
    if rank == 0:
        for old in complete_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def read_layout(path: Path) -> dict | None:
    """The layout a checkpoint was saved with (None for one written before layouts were recorded)."""
    file = Path(path) / LAYOUT
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None


def newest_layout(output_dir: Path) -> tuple[Path | None, dict | None]:
    """(checkpoint, layout) of the newest complete checkpoint in `output_dir`, unverified: what a resumed
    run will most likely load, to size the run before the checkpoint is chosen and checked."""
    found = complete_checkpoints(output_dir)
    layout = read_layout(found[-1]) if found else None
    return (found[-1], layout) if layout else (None, None)


def has_zero_partitions(path: Path) -> bool:
    """True when the optimizer state is split across ranks (ZeRO 1-3): it then needs re-partitioning
    to be loaded by another number of ranks. Without ZeRO it is whole in the model-states file."""
    return any((Path(path) / "state").glob("*optim_states.pt"))


def make_universal(path: Path) -> Path:
    """Convert `path/state` into DeepSpeed's universal checkpoint format in `path/universal` (once; the
    conversion is written under a temporary name and renamed, so a half-written copy is never used).
    A universal checkpoint holds every parameter's fp32 weights and optimizer moments whole, so any
    number of ranks can load it and re-partition them. Called on one rank."""
    import subprocess
    import sys

    from .errors import UserError

    target = Path(path) / UNIVERSAL
    if target.is_dir():
        return target
    tmp = Path(path) / (UNIVERSAL + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # Our checkpoints lack the Megatron-specific `universal_checkpoint_info`; DeepSpeed's converter
    # injects the default one, which is right for plain data parallelism.
    command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(Path(path) / "state"),
               "--output_folder", str(tmp), "--num_extract_workers", "1", "--num_merge_workers", "1",
               "--inject_missing_state"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"{path}: converting to a universal checkpoint for the new world size failed ({tail[0]})")
    os.replace(tmp, target)
    return target


def _deepspeed_safe_globals() -> list:
    """The few DeepSpeed classes its own checkpoints pickle (measured on ZeRO 0-3 checkpoints): the
    fp32 loss scaler, the ZeRO stage enum and the fragment addresses of ZeRO-1/2 optimizer states."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_load(path, map_location=None):
    """`torch.load(weights_only=True)` that also accepts the DeepSpeed classes above: a checkpoint file
    that would need to unpickle anything else (arbitrary code) is a UserError naming the file."""
    import pickle

    from .errors import UserError

    with torch.serialization.safe_globals(_deepspeed_safe_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as why:
            first = str(why).strip().splitlines()[0] if str(why).strip() else type(why).__name__
            raise UserError(f"{path}: refused to unpickle, not plain tensors and DeepSpeed state ({first})") from None


def load_weights_only(engine) -> None:
    """Make every checkpoint read of this DeepSpeed engine go through `safe_load` (DeepSpeed's own
    `TorchCheckpointEngine.load` passes `weights_only=False`, i.e. runs whatever the pickle says)."""
    engine.checkpoint_engine.load = safe_load


def consolidated_state_dict(engine) -> dict | None:
    """Full fp32 weights on rank 0 (gathered from ZeRO-3 shards when needed); None on other ranks."""
    if engine.zero_optimization_partition_weights():
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict()
    return state if dist.get_rank() == 0 else None


def save_best(engine, output_dir, step: int, metrics: dict, rank: int, save_files=None):
    """Consolidated weights, `save_files` and the metrics in `output_dir/best`; every rank calls it."""
    state = consolidated_state_dict(engine)
    path = Path(output_dir) / "best"
    if rank == 0:
        if path.exists():
            shutil.rmtree(path)
        engine.module.save_pretrained(path, state_dict={k: v.float() for k, v in state.items()})
        if save_files is not None:
            save_files(path)
        record = {"step": step, "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}}
        (path / "eval_metrics.json").write_text(json.dumps(record, indent=2))
    dist.barrier()


def stored_best(output_dir: Path, start: int, best_metric: str | None):
    """The best metric value an earlier part of this run kept (when resuming), else None."""
    stored = output_dir / "best" / "eval_metrics.json"
    if not best_metric or start == 0 or not stored.is_file():
        return None
    record = json.loads(stored.read_text())
    return record["metrics"].get(best_metric) if record.get("step", start + 1) <= start else None


def save_final(engine, output_dir, tokenizer=None, export: bool = True, probe: dict | None = None) -> Path | None:
    """Write a `from_pretrained` checkpoint (and tokenizer); also a plain transformers copy when the
    config allows it. With `probe` (a batch), check that the saved checkpoint reproduces the
    engine's logits and print the largest difference. Returns the checkpoint path on rank 0."""
    engine_logits = None
    if probe is not None:  # every rank takes part (ZeRO-3 gathers parameters in the forward)
        engine.eval()
        with torch.no_grad():
            engine_logits = engine(**{k: v.to(engine.device) for k, v in probe.items()}).logits.float().cpu()
    state = consolidated_state_dict(engine)
    from .loop import release_zero3_hook

    release_zero3_hook()
    final = Path(output_dir) / "final"
    if dist.get_rank() == 0:
        model = engine.module
        model.save_pretrained(final, state_dict={k: v.float() for k, v in state.items()})
        if tokenizer is not None:
            tokenizer.save_pretrained(final)
        if engine_logits is not None:
            reloaded = type(model).from_pretrained(final).eval()
            with torch.no_grad():
                diff = (reloaded(**probe).logits.float() - engine_logits).abs().max().item()
            print(f"export check: saved checkpoint reproduces the engine's logits (max |diff| {diff:.2e})", flush=True)
        if export:
            from ..convert.hf import export_to_transformers, transformers_family

            try:
                transformers_family(model.config)
            except ValueError as why:
                print(f"not exported to plain transformers: {why}", flush=True)
            else:  # export from the saved full weights (the live module may hold ZeRO-3 shards)
                export_to_transformers(type(model).from_pretrained(final), Path(output_dir) / "final-transformers")
                if tokenizer is not None:
                    tokenizer.save_pretrained(Path(output_dir) / "final-transformers")
    dist.barrier()
    return final if dist.get_rank() == 0 else None
