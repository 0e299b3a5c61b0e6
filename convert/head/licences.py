"""Which licence family a training row belongs to, so a build can keep to what a city may use.

The manifests in ../shared give each row's licence as free text ("CC BY-NC 3.0 (UrbanSound8K); underlying Freesound
clips CC BY/CC0", "unknown (app asset ...)", "Pixabay Content License or CC0 (...)"). A distributor needs three
answers, not forty strings: may be used commercially (`permissive`: public domain, CC0, CC BY, CC BY-SA, Pixabay,
Mixkit, MIT/BSD/Apache), only for research or non-commercially (`noncommercial`: any -NC licence, academic-use-only
data sets), or nobody said (`unstated`). When in doubt a row goes to the stricter family: a text that says the
recordings' own licence is not stated is `unstated` even if the repository around them has a licence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

PERMISSIVE = "permissive"
NONCOMMERCIAL = "noncommercial"
UNSTATED = "unstated"
FAMILIES = (PERMISSIVE, NONCOMMERCIAL, UNSTATED)
ALL = "all"

_UNSTATED_START = ("unknown", "not stated")
# "the clips' original recordists/licence are not stated": the repository's licence does not cover the recordings
_UNSTATED_ANYWHERE = re.compile(r"licen[cs]e (are|is) not stated")
_NONCOMMERCIAL = re.compile(r"\bcc by-nc\b|non-?commercial|academic")


def licence_family(text: str) -> str:
    """`permissive`, `noncommercial` or `unstated` for one manifest row's licence text."""
    lowered = " ".join(text.lower().split())
    if not lowered or lowered.startswith(_UNSTATED_START) or _UNSTATED_ANYWHERE.search(lowered):
        return UNSTATED
    if _NONCOMMERCIAL.search(lowered):
        return NONCOMMERCIAL
    return PERMISSIVE


def parse_families(spec: str) -> frozenset[str]:
    """`--licences` as given: `all`, or families joined by commas (`permissive`, `permissive,noncommercial`).

    Raises ValueError naming the unknown family."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if names == [ALL]:
        return frozenset(FAMILIES)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise ValueError(
            f"--licences {spec!r}: unknown licence family {', '.join(unknown) or '(none)'}; "
            f"use {ALL} or a comma-separated list of {', '.join(FAMILIES)}"
        )
    return frozenset(names)


def describe(families: Iterable[str]) -> str:
    """The filter as the manifest and the model card print it."""
    chosen = set(families)
    return ALL if chosen == set(FAMILIES) else ",".join(f for f in FAMILIES if f in chosen)
