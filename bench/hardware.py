"""What this machine allows, measured beside every benchmark run: the store disk's fsync latency,
coincurve's ECDSA and BIP340 Schnorr verify rates (one verify per payment is the server's
irreducible work: ECDSA for versions 1-3, Schnorr for version 4) and sign rates (one
signature per payment is the client's), and the load average meanwhile."""

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


def sign_rate(seconds: float = 0.5) -> float:
    """ECDSA signatures per second (one core, coincurve), as the client signs a payment
    (v1-v3)."""
    key = coincurve.PrivateKey()
    digest = hashlib.sha256(b"payment").digest()
    return _rate(lambda: key.sign(digest, hasher=None), seconds)


def schnorr_sign_rate(seconds: float = 0.5) -> float:
    """BIP340 signatures per second (one core, coincurve), as the client signs a v4
    payment."""
    key = coincurve.PrivateKey()
    digest = hashlib.sha256(b"payment").digest()
    return _rate(lambda: key.sign_schnorr(digest, bytes(32)), seconds)


def machine() -> dict[str, float]:
    """This machine's figures, measured now: fsync (ms, a temporary directory's disk), the
    verify and sign rates per second, and the load average."""
    with tempfile.TemporaryDirectory(prefix="paychan-machine-") as tmp:
        fsync_ms = fsync_latency_ms(Path(tmp))
    return {"fsync_ms": round(fsync_ms, 3), "ecdsa_verify_per_s": round(verify_rate()),
            "schnorr_verify_per_s": round(schnorr_verify_rate()),
            "ecdsa_sign_per_s": round(sign_rate()),
            "schnorr_sign_per_s": round(schnorr_sign_rate()),
            "load_average": round(os.getloadavg()[0], 2)}


def describe(figures: dict[str, float]) -> str:
    """`machine()`'s figures in one line."""
    return (f"fsync {figures['fsync_ms']} ms; verifies/s: ECDSA "
            f"{figures['ecdsa_verify_per_s']}, Schnorr {figures['schnorr_verify_per_s']}; "
            f"signs/s: ECDSA {figures['ecdsa_sign_per_s']}, Schnorr "
            f"{figures['schnorr_sign_per_s']}; load average {figures['load_average']}")


def _rate(check: Callable[[], object], seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(200):
            check()
        done += 200
    return done / elapsed
