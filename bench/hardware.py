"""What this machine allows, measured beside every benchmark run: the store disk's fsync latency
and coincurve's ECDSA and BIP340 Schnorr verify rates (one verify per payment is the server's
irreducible work: ECDSA for versions 1-3, Schnorr for version 4)."""

from __future__ import annotations

import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
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
    """ECDSA verifies per second (one core, coincurve), as the server checks a payment (v1-v3)."""
    key = coincurve.PrivateKey()
    digest = hashlib.sha256(b"payment").digest()
    signature, public = key.sign(digest, hasher=None), key.public_key
    return _rate(lambda: public.verify(signature, digest, hasher=None), seconds)


def schnorr_verify_rate(seconds: float = 0.5) -> float:
    """BIP340 verifies per second (one core, coincurve), as the server checks a v4 payment."""
    key = coincurve.PrivateKey()
    digest = hashlib.sha256(b"payment").digest()
    signature = key.sign_schnorr(digest, bytes(32))
    public = coincurve.PublicKeyXOnly(key.public_key.format()[1:])
    return _rate(lambda: public.verify(signature, digest), seconds)


def _rate(check: Callable[[], object], seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(200):
            check()
        done += 200
    return done / elapsed
