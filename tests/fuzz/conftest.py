"""Loads the Hypothesis profile HYPOTHESIS_PROFILE names ("ci" unless set; see profiles)."""

from tests.fuzz import profiles

__all__ = ["profiles"]
