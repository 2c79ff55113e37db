"""Hypothesis profiles for the fuzz tests, chosen by HYPOTHESIS_PROFILE (loaded by conftest).

* ``ci`` (the default, what `make test` runs): few examples, derandomized, so
  a run is bounded and reproducible: the same examples every time, no example
  database carried between runs.
* ``fuzz`` (`make fuzz`): many random examples; failures found are kept in
  ``.hypothesis/`` and replayed first on the next run.

Tests size themselves with `scaled`: the profile's example count times the
test's weight (an ask through a real platform costs more than a parse).
"""

import os

from hypothesis import HealthCheck, settings

PROFILE_ENV = "HYPOTHESIS_PROFILE"

settings.register_profile(
    "ci",
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz",
    max_examples=4000,
    derandomize=False,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get(PROFILE_ENV, "ci"))


def scaled(weight: float) -> int:
    """Examples for a test of `weight` under the loaded profile (at least 1)."""
    return max(1, round(settings().max_examples * weight))
