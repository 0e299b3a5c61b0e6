"""The `alerts:` section of the ingest config: exceedance rules, parsed once into frozen dataclasses.

Kept in its own module with one entry point (`parse_alerts`) so the config module only hands it the section. A rule's
kind follows from the keys it has, so a rule reads like the sentence a noise team would write:

    alerts:
      check_s: 30                    # how often the silent-sensor rules run (the others run at every commit)
      rules:
        - {name: night-noise, laeq_above: 55, minutes: 5, between: "23:00-07:00"}
        - {name: sirens, class: Siren, more_than: 6}          # labelled in more than 6 windows in 60 minutes
        - {name: dead-sensor, silent_minutes: 30}
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import time
from typing import Any

from custom.wire.settings import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_BETWEEN = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
_KINDS = {"laeq_above": "level", "class": "class", "silent_minutes": "silent"}
_KEYS = {
    "level": {"name", "laeq_above", "minutes", "between"},
    "class": {"name", "class", "more_than", "minutes", "between"},
    "silent": {"name", "silent_minutes"},
}


@dataclass(frozen=True)
class AlertRule:
    """One rule. `level`: the energy-mean LAeq of the sensor's last `minutes` is above `threshold`; `class`: `label`
    was heard (labelled) in more than `threshold` windows of the last `minutes`; `silent`: no event for `minutes`.
    `start`/`end` (local time, the config's `timezone`) restrict level and class rules to a daily period."""

    name: str
    kind: str
    threshold: float
    minutes: int
    label: str | None = None
    start: time | None = None
    end: time | None = None


@dataclass(frozen=True)
class AlertSettings:
    rules: tuple[AlertRule, ...] = ()
    check_s: float = 30.0

    def of_kind(self, kind: str) -> tuple[AlertRule, ...]:
        return tuple(rule for rule in self.rules if rule.kind == kind)


def parse_alerts(data: Any, where: str) -> AlertSettings:
    """The `alerts:` mapping (or None) -> AlertSettings; raises ConfigError naming the bad key."""
    if data is None:
        return AlertSettings()
    if not isinstance(data, dict):
        raise ConfigError(where, "expected a mapping with `rules` (and optionally `check_s`)")
    unknown = set(data) - {"rules", "check_s"}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}", "unknown key (known: check_s, rules)")
    check_s = _number(data.get("check_s", 30.0), f"{where}.check_s")
    if check_s <= 0:
        raise ConfigError(f"{where}.check_s", f"expected a number of seconds > 0, got {check_s!r}")
    raw = data.get("rules") or []
    if not isinstance(raw, list):
        raise ConfigError(f"{where}.rules", "expected a list of rules")
    rules = tuple(_rule(item, f"{where}.rules[{i}]") for i, item in enumerate(raw))
    names = [rule.name for rule in rules]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(
                f"{where}.rules", f"the name {name!r} is used twice (a name identifies a rule's episodes)"
            )
    return AlertSettings(rules, check_s)


def _rule(item: Any, where: str) -> AlertRule:
    if not isinstance(item, dict):
        raise ConfigError(where, f"expected a mapping, got {type(item).__name__}")
    kinds = [kind for key, kind in _KINDS.items() if key in item]
    if len(kinds) != 1:
        raise ConfigError(where, "give exactly one of laeq_above (level), class (class), silent_minutes (silent)")
    kind = kinds[0]
    unknown = set(item) - _KEYS[kind]
    if unknown:
        raise ConfigError(
            f"{where}.{sorted(unknown)[0]}", f"not a key of a {kind} rule (known: {', '.join(sorted(_KEYS[kind]))})"
        )
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}.name", "expected 1-64 letters, digits, '_', '-', '.'")
    if kind == "silent":
        return AlertRule(name, kind, 0.0, _positive_int(item.get("silent_minutes"), f"{where}.silent_minutes"))
    start, end = _between(item.get("between"), f"{where}.between")
    if kind == "level":
        threshold = _number(item.get("laeq_above"), f"{where}.laeq_above")
        return AlertRule(
            name, kind, threshold, _positive_int(item.get("minutes", 5), f"{where}.minutes"), None, start, end
        )
    label = item.get("class")
    if not isinstance(label, str) or not label:
        raise ConfigError(f"{where}.class", "expected a class name as the bundle spells it, e.g. Siren")
    more_than = _positive_int(item.get("more_than"), f"{where}.more_than", allow_zero=True)
    minutes = _positive_int(item.get("minutes", 60), f"{where}.minutes")
    return AlertRule(name, kind, float(more_than), minutes, label, start, end)


MOST = 10**6  # minutes and counts: about two years, far past any rule, and safe for time arithmetic


def _number(value: Any, where: str) -> float:
    """A finite number (found by fuzzing: NaN, .inf and a 400-digit integer used to pass or crash)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(where, f"expected a number, got {repr(value)[:40]}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(where, f"expected a finite number, got {repr(value)[:40]}")
    return number


def _positive_int(value: Any, where: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (0 if allow_zero else 1) <= value <= MOST:
        raise ConfigError(
            where, f"expected a whole number from {0 if allow_zero else 1} to {MOST}, got {repr(value)[:40]}"
        )
    return value


def _between(value: Any, where: str) -> tuple[time | None, time | None]:
    if value is None:
        return None, None
    match = _BETWEEN.match(value) if isinstance(value, str) else None
    if not match:
        raise ConfigError(where, f'expected "HH:MM-HH:MM" (local time; may wrap midnight), got {value!r}')
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if (h1, m1) == (h2, m2):
        raise ConfigError(where, "an empty period (start equals end); leave `between` out for all day")
    return time(h1, m1), time(h2, m2)
