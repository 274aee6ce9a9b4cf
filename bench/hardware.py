"""What this machine allows, measured beside every benchmark run: the store disk's fsync latency
and coincurve's ECDSA verify rate (one verify per payment is the server's irreducible work)."""

from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import coincurve


def fsync_latency_ms(directory: Path, rounds: int = 200) -> float:
    """Median time to append a small record to a file in `directory` and fsync it."""
    times = []
    with tempfile.NamedTemporaryFile(dir=directory, prefix="fsync-probe-") as f:
        for _ in range(rounds):
            started = time.perf_counter()
            f.write(b"x" * 128)
            f.flush()
            os.fsync(f.fileno())
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def verify_rate(seconds: float = 0.5) -> float:
    """ECDSA verifies per second (one core, coincurve), as the server checks a payment."""
    key = coincurve.PrivateKey()
    digest = hashlib.sha256(b"payment").digest()
    signature, public = key.sign(digest, hasher=None), key.public_key
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(200):
            public.verify(signature, digest, hasher=None)
        done += 200
    return done / elapsed
