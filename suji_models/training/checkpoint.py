"""Checkpoints of the training loop: resumable DeepSpeed states, the best model of an evaluated run,
and the final consolidated `from_pretrained` folder (with an optional plain-transformers export).

A resumable checkpoint counts only once its COMPLETE marker exists, which rank 0 writes after every
rank has finished writing its shard (a barrier in between): a run killed mid-save resumes from the
previous one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist


def complete_checkpoints(output_dir: Path):
    """Complete checkpoints, oldest first. A checkpoint counts only once its COMPLETE marker exists,
    which rank 0 writes after every rank has finished writing (a barrier in between)."""
    found = [p for p in output_dir.glob("checkpoint-*") if (p / "COMPLETE").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(engine, output_dir: Path, step: int, keep: int, rank: int, save_files=None):
    path = output_dir / f"checkpoint-{step}"
    engine.save_checkpoint(str(path), tag="state", client_state={"step": step})
    dist.barrier()  # every rank has written its shard
    if rank == 0:
        engine.module.config.save_pretrained(path)  # so the checkpoint can be consolidated on its own
        if save_files is not None:
            save_files(path)
        (path / "COMPLETE").write_text(str(step))
        for old in complete_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


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
