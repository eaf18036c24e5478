"""The one train/test split, by host star: training decides with it which KOIs a version never
sees, serving tells with it whether a version was trained on a KOI's star. Ray-free."""
from __future__ import annotations

import hashlib

TEST_PERCENT = 20
VALIDATION_PERCENT = 10  # carved from the training stars only, for tuning
SPLIT = "test: KOIs whose host star has int(sha256(str(kepid)), 16) % 100 < 20; validation: 20..29; train: the rest"


def star_bucket(kepid: int) -> int:
    """A stable bucket in [0, 100) for a host star: sha256 of the decimal kepid."""
    return int(hashlib.sha256(str(int(kepid)).encode()).hexdigest(), 16) % 100


def is_test_star(kepid: int) -> bool:
    """The documented split: a KOI is in the test set exactly when its host star's bucket < 20.

    Splitting by star, never by KOI: KOIs of one star share every stellar column, so a KOI-level
    split would put near-copies of test rows into training.
    """
    return star_bucket(kepid) < TEST_PERCENT


def is_validation_star(kepid: int) -> bool:
    return TEST_PERCENT <= star_bucket(kepid) < TEST_PERCENT + VALIDATION_PERCENT
