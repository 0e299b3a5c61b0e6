"""One validation engine for every settings file: the sensor's config, the ingest's config, bundle manifests.

A settings shape is a frozen dataclass whose fields carry their documentation and rules (`opt`); `build` turns
parsed YAML/JSON into it strictly (unknown keys, wrong types, out-of-range values, missing required keys) and raises
`ConfigError` with a one-line message that starts with the key path (`mqtt.port: must be 1..65535, got 70000`,
`classes[3].threshold: must be 0..1, got 1.5`). `parse_text` + `at_line` add the line of the key in the file, so three
kinds of files report mistakes the same way and the rules live in one place.

Types understood: bool, int, float, str, Path (relative to the file's folder), `X | None`, nested dataclasses,
`tuple[X, ...]` (from a list), `Mapping[str, X]` (from a mapping) and `Any` (taken as is). Strict on purpose: YAML's
`yes` is not an int and `"1883"` is not a port. A class may define `check(self, key_path)` for rules that span its
fields; it runs right after the class is built.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

import yaml


class ConfigError(ValueError):
    """A settings file (or manifest) the program must not run with. str() is one line starting with the key path."""

    def __init__(self, key_path: str, message: str) -> None:
        self.key_path = key_path
        self.message = message
        super().__init__(f"{key_path}: {message}")


def opt(default: Any = dataclasses.MISSING, doc: str = "", *, factory: Any = None, **rules: Any) -> Any:
    """A dataclass field with its documentation and validation rules kept right beside the default.

    Rules: lo/hi (inclusive bounds), gt (exclusive lower bound), choices, pattern (full match), exists ("file"),
    may_be_empty (a string), value_lo/value_hi (bounds for each value of a mapping). No default and no factory: the
    key is required.
    """
    metadata = {"doc": doc, **rules}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def frozen_mapping() -> Mapping[str, Any]:
    return types.MappingProxyType({})


_T = typing.TypeVar("_T", bound="DataclassInstance")


def parse_text(text: str, where: str, *, json_file: bool = False) -> tuple[Any, dict[str, int]]:
    """YAML or JSON text -> (data, key path -> line number). YAML refuses duplicate keys (PyYAML keeps the last one
    silently, hiding a typo'd override); JSON is parsed by json, and its lines read through YAML when it can."""
    if json_file:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}:{exc.lineno}:{exc.colno}", f"not valid JSON: {exc.msg}") from None
        try:
            return data, _key_lines(text)
        except (yaml.YAMLError, ConfigError, RecursionError):
            return data, {}  # line numbers are a courtesy; the JSON itself is fine
    try:
        lines = _key_lines(text)
        return yaml.safe_load(text), lines
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}{at}", f"invalid YAML: {one_line(problem)}") from None
    except RecursionError:
        raise ConfigError(where, "invalid YAML: nested too deeply") from None


def at_line(make: typing.Callable[[], _T], lines: Mapping[str, int]) -> _T:
    """`make()`, with the line of the key at fault appended to a ConfigError it raises."""
    try:
        return make()
    except ConfigError as exc:
        line = line_of(exc.key_path, lines)
        if line is None:
            raise
        raise ConfigError(exc.key_path, f"{exc.message} (line {line})") from None


def _key_lines(text: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None:
        _index_keys(node, "", lines)
    return lines


def _index_keys(node: yaml.Node, prefix: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[f"{prefix}[{i}]"] = item.start_mark.line + 1
            _index_keys(item, f"{prefix}[{i}]", lines)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_of(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            path = join(prefix, key)
            if isinstance(key_node, yaml.ScalarNode) and path in lines:
                raise ConfigError(path, f"duplicate key (line {key_node.start_mark.line + 1})")
            lines[path] = key_node.start_mark.line + 1
            _index_keys(value_node, path, lines)


_LAST_PART = re.compile(r"(\.[^.\[]*|\[\d+\])$")


def line_of(key_path: str, lines: Mapping[str, int]) -> int | None:
    """Line of the key, or of its nearest parent that is in the file (a missing key is reported on its section)."""
    while key_path:
        if key_path in lines:
            return lines[key_path]
        parent = _LAST_PART.sub("", key_path)
        key_path = "" if parent == key_path else parent
    return None


def build(cls: type[_T], data: Any, prefix: str = "", base_dir: Path | None = None) -> _T:
    """Validate parsed data into `cls`; relative paths resolve against `base_dir` (the file's folder)."""
    if data is None:  # an empty section, e.g. "mqtt:" with everything commented out
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(prefix or "(top level)", f"must be a mapping of keys, got {type_name(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    for key in data:
        if not isinstance(key, str) or key not in fields:
            raise ConfigError(join(prefix, key_of(key)), f"unknown key (known here: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _convert(data[name], hints[name], f.metadata, join(prefix, name), base_dir)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(join(prefix, name), "missing")
    result = cls(**values)
    check = getattr(result, "check", None)
    if check is not None:  # rules over several fields of one section (or a whole value) live with the class
        check(prefix)
    return result


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, tp: Any, rules: Mapping[str, Any], path: str, base_dir: Path | None) -> Any:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(path, f"must be a mapping, got {type_name(value)}")
        return build(tp, value, path, base_dir)
    if tp is Any:
        return value
    options = typing.get_args(tp) if isinstance(tp, types.UnionType) else (tp,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(path, f"must be {_describe_types(options)}, got null")
    for option in options:
        if option is type(None):
            continue
        if isinstance(option, type) and dataclasses.is_dataclass(option) and isinstance(value, Mapping):
            return build(option, value, path, base_dir)
        converted = _as_type(value, option, rules, path, base_dir)
        if converted is not _NO_MATCH:
            check_rules(converted, rules, path)
            return converted
    raise ConfigError(path, f"must be {_describe_types(options)}, got {type_name(value)} {show(value)}")


_NO_MATCH = object()
INT_MOST = 2**53  # the largest whole number a setting may hold (doubles are exact up to it)


def _as_type(value: Any, tp: Any, rules: Mapping[str, Any], path: str, base_dir: Path | None) -> Any:
    """`value` as type `tp`, or _NO_MATCH."""
    if tp is bool:
        return value if isinstance(value, bool) else _NO_MATCH
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            return _NO_MATCH
        if abs(value) > INT_MOST:  # no setting means that much; past it, time arithmetic overflows (found by fuzzing)
            raise ConfigError(path, f"must be at most {INT_MOST} in size, got {num(value)}")
        return value
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer of 400 digits (found by fuzzing the configs)
                number = math.inf
            if not math.isfinite(number):
                raise ConfigError(path, f"must be a finite number, got {str(value)[:40]}")
            return number
        return _NO_MATCH
    if tp is str:
        if not isinstance(value, str):
            return _NO_MATCH
        if not value.strip() and not rules.get("may_be_empty"):
            raise ConfigError(path, "must not be empty")
        return value
    if tp is Path:
        if not isinstance(value, str):
            return _NO_MATCH
        if not value.strip() or "\0" in value:
            raise ConfigError(path, f"must be a file path, got {show(value)}")
        resolved = Path(value) if base_dir is None else base_dir / Path(value)  # an absolute value replaces base_dir
        return Path(resolved.as_posix())
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if not isinstance(value, list):
            return _NO_MATCH
        return tuple(_convert(v, args[0], {}, f"{path}[{i}]", base_dir) for i, v in enumerate(value))
    if origin is Mapping:
        if not isinstance(value, Mapping):
            return _NO_MATCH
        item_rules = {"lo": rules.get("value_lo"), "hi": rules.get("value_hi")}
        out: dict[str, Any] = {}
        for k, v in value.items():
            where = f"{path}.{key_of(k)}"
            if not isinstance(k, str) or not k.strip():
                raise ConfigError(where, "keys must be non-empty strings")
            out[k] = _convert(v, args[1], item_rules, where, base_dir)
        return types.MappingProxyType(out)
    raise TypeError(f"settings field type {tp!r} not supported")  # a bug in a settings class, not in the user's file


def check_rules(value: Any, rules: Mapping[str, Any], path: str) -> None:
    lo, hi, gt = rules.get("lo"), rules.get("hi"), rules.get("gt")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if lo is not None and hi is not None and not lo <= value <= hi:
            raise ConfigError(path, f"must be {num(lo)}..{num(hi)}, got {num(value)}")
        if lo is not None and value < lo:
            raise ConfigError(path, f"must be >= {num(lo)}, got {num(value)}")
        if gt is not None and value <= gt:
            raise ConfigError(path, f"must be > {num(gt)}, got {num(value)}")
        if hi is not None and value > hi:
            raise ConfigError(path, f"must be <= {num(hi)}, got {num(value)}")
    if isinstance(value, str):
        choices = rules.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(path, f"must be one of {', '.join(choices)}, got {show(value)}")
        pattern = rules.get("pattern")
        if pattern is not None and not re.fullmatch(pattern, value):
            raise ConfigError(path, f"must match {pattern}, got {show(value)}")
    if isinstance(value, Path) and rules.get("exists") == "file":
        try:
            ok = value.is_file()
        except OSError:
            ok = False
        if not ok:
            raise ConfigError(path, f"file not found: {value}")


# ---------------------------------------------------------------------------------------------------------- helpers


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def key_of(key: Any) -> str:
    """A key as it appears in a key path: plain if it reads cleanly, repr() if empty, odd, holding the `:` that ends
    the path in a message, or not a string."""
    if isinstance(key, str) and key and key.isprintable() and key == key.strip() and ":" not in key:
        return key
    return show(key)


def num(x: float) -> str:
    if isinstance(x, int):  # of any size: float() of a 400-digit integer raises
        text = str(x)
        return text if len(text) <= 24 else f"{text[:20]}...({len(text)} digits)"
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def one_line(text: object) -> str:
    """Any message or exception squeezed onto one line, for the one-line errors and the journal."""
    return " ".join(str(text).split())


def show(value: Any) -> str:
    text = one_line(repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


def _describe_types(options: tuple[Any, ...]) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", Path: "a file path"}
    words = [names.get(o, "a list" if typing.get_origin(o) is tuple else "a mapping") for o in options
             if o is not type(None)]  # fmt: skip
    text = " or ".join(words)
    return text + " or null" if type(None) in options else text


def os_reason(exc: BaseException) -> str:
    return one_line(getattr(exc, "strerror", None) or str(exc))
