"""Helpers shared by the benchmark scripts that launch training processes (pretrain.py, memory.py)."""

from __future__ import annotations

import os
import socket


def free_port() -> int:
    """A free TCP port for a run's rendezvous: concurrent runs must not share DeepSpeed's default 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick(requested: str, known, what: str) -> list[str]:
    """The comma-separated subset `requested` of `known`, or exit naming the unknown ones."""
    names = requested.split(",")
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SystemExit(f"unknown {what} {unknown}; known: {', '.join(known)}")
    return names


def cuda_available() -> bool:
    """Whether a GPU runs the benchmark; without one DeepSpeed is told to use the CPU accelerator (it would
    otherwise warn on every import, here and in every child process)."""
    import torch

    if torch.cuda.is_available():
        return True
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return False
