"""How the model is searched: the profiles, the example database, a seed and a reproduction
command for every failure, and a search bounded by wall-clock time.

- `quick` (the default): a fixed, derandomized smoke set, the same examples every run.
- `deep` (`HYPOTHESIS_PROFILE=deep`): 10,000 random examples, as long as that takes.
- the timed search (in every `make test`): random examples in batches until `budget`
  seconds have passed, each batch under a fresh seed.

Random runs use the example database in `.hypothesis/model` (kept out of git): the failures
it saved are replayed first.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, seed, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

ROOT = Path(__file__).resolve().parents[3]
DATABASE = DirectoryBasedExampleDatabase(ROOT / ".hypothesis" / "model")
TEST_FILE = "tests/channel/test_model.py"
BATCH = 100  # examples per run of the timed search: it stops within one batch of its budget


def profile(**chosen: Any) -> settings:
    return settings(deadline=None, **{"suppress_health_check": [HealthCheck.too_slow], **chosen})


settings.register_profile("quick", profile(max_examples=150, stateful_step_count=50,
                                           database=None, derandomize=True))
settings.register_profile("deep", profile(max_examples=10_000, stateful_step_count=80,
                                          database=DATABASE))
# Dozens of runs per search: a health check (a slow or much-filtered batch, say) is not a
# money bug, and must not fail one run in a hundred.
SEARCH = profile(max_examples=BATCH, stateful_step_count=80, database=DATABASE,
                 suppress_health_check=list(HealthCheck))
PROFILE_NAME = os.environ.get("HYPOTHESIS_PROFILE", "quick")
PROFILE = settings.get_profile(PROFILE_NAME)
SEARCH_SECONDS = float(os.environ.get("MODEL_SEARCH_SECONDS", "120"))


@dataclass
class Tally:
    """What a search ran: examples (each a fresh model, shrinking included) and steps."""

    examples: int = 0
    checks: int = 0  # after every step, and once before the first
    runs: int = 0
    seconds: float = 0.0

    def reset(self) -> None:
        self.examples = self.checks = self.runs = 0
        self.seconds = 0.0

    @property
    def steps(self) -> int:
        return self.checks - self.examples

    def __str__(self) -> str:
        return (f"{self.runs} run(s), {self.examples:,} examples, {self.steps:,} steps in "
                f"{self.seconds:.0f} s")


TALLY = Tally()


def run(machine: type[RuleBasedStateMachine], using: settings, chosen: int | None,
        command: str) -> None:
    """One hypothesis run of `machine` with the settings `using` (seeded by `chosen` unless
    they are derandomized); a failure says its seed and how to run it again."""
    if chosen is not None:
        seed(chosen)(machine)
    start = time.monotonic()
    try:
        run_state_machine_as_test(machine, settings=using)
    except Exception as exc:
        what = f"seed {chosen}" if chosen is not None else "the fixed smoke set"
        exc.add_note(f"Model failure ({what}). Reproduce with:\n    {command}\n(random runs "
                     "replay it from the example database in .hypothesis/model first)")
        raise
    finally:
        TALLY.runs += 1
        TALLY.seconds += time.monotonic() - start


def fresh_seed(forced: str | None) -> int:
    """The seed pytest was given (--hypothesis-seed), else a new random one."""
    return int(forced) if forced is not None else random.getrandbits(64)


def reproduce(selector: str, chosen: int | None, profile_name: str = PROFILE_NAME) -> str:
    """The command that runs test `selector` of the model again, under seed `chosen`."""
    env = f"HYPOTHESIS_PROFILE={profile_name} " if profile_name != "quick" else ""
    option = f" --hypothesis-seed={chosen}" if chosen is not None else ""
    return f"{env}.venv/bin/pytest {TEST_FILE}::{selector}{option}"


def timed_search(machine: type[RuleBasedStateMachine], budget: float, forced: str | None,
                 selector: str) -> Tally:
    """Random batches of `machine` until `budget` seconds have passed (one batch only, under
    that seed, if pytest was given --hypothesis-seed)."""
    TALLY.reset()
    deadline = time.monotonic() + budget
    while True:
        chosen = fresh_seed(forced)
        run(machine, SEARCH, chosen, reproduce(selector, chosen, "quick"))  # any profile
        if forced is not None or time.monotonic() >= deadline:
            return TALLY
