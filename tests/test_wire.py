"""The import rule between the sensor and the fleet, and the wire contract both sides read.

custom.daemon (the Pi) and custom.ingest (the fleet server) share only custom.wire: neither imports the other, nor
the converter, nor the test harness, and custom.wire imports none of them. Checked on the source (every `import` and
`from ... import` anywhere in a module, relative ones resolved), so a forbidden import fails here even in a code path
no other test runs.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from custom.wire import exitcodes, schemas
from custom.wire.topics import TopicError, Topics, fleet_topic, parse_sensor_topic, sensor_topic, subscription

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"daemon": "custom.daemon", "ingest": "custom.ingest", "wire": "custom.wire"}
FORBIDDEN = {
    "custom.daemon": ("custom.ingest", "custom.convert", "testing", "bench"),
    "custom.ingest": ("custom.daemon", "custom.convert", "testing", "bench"),
    "custom.wire": ("custom.daemon", "custom.ingest", "custom.convert", "testing", "bench"),
}


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every module `module`'s source imports, relative imports made absolute."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)  # `from custom import daemon`
    return found


def violations(package: str, modules: dict[str, tuple[str, bool]]) -> list[str]:
    """`module imports forbidden` lines for the modules (name -> (source, is_package)) of `package`."""
    out = []
    for module, (source, is_package) in sorted(modules.items()):
        for name in sorted(imported_modules(source, module, is_package)):
            for banned in FORBIDDEN[package]:
                if name == banned or name.startswith(f"{banned}."):
                    out.append(f"{module} imports {name}")
    return out


def _sources(folder: str) -> dict[str, tuple[str, bool]]:
    modules = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join([PACKAGES[folder], *(parts[:-1] if is_package else parts)])
        modules[name] = (path.read_text(), is_package)
    return modules


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_the_sensor_and_the_fleet_share_only_the_wire(folder: str) -> None:
    modules = _sources(folder)
    assert len(modules) > 3, f"no sources found under {folder}/"
    assert violations(PACKAGES[folder], modules) == []


def test_the_import_rule_sees_every_kind_of_forbidden_import() -> None:
    """The checker itself: absolute, relative (climbing out of the package), `from custom import x`, in a function."""
    sources = {
        "custom.ingest.a": ("import custom.daemon.config\n", False),
        "custom.ingest.b": ("from ..daemon.schema import build\n", False),
        "custom.ingest.sub": ("def f():\n    from ...daemon import cli\n", True),
        "custom.ingest.c": ("from custom import convert\n", False),
        "custom.ingest.d": ("from custom.wire import topics\nfrom . import config\n", False),
    }
    assert violations("custom.ingest", sources) == [
        "custom.ingest.a imports custom.daemon.config",
        "custom.ingest.b imports custom.daemon.schema",
        "custom.ingest.b imports custom.daemon.schema.build",
        "custom.ingest.c imports custom.convert",
        "custom.ingest.sub imports custom.daemon",
        "custom.ingest.sub imports custom.daemon.cli",
    ]


def test_one_topic_layout_built_and_parsed() -> None:
    topics = Topics("custom", "sensor-01")
    for kind in ("events", "summary"):
        built = getattr(topics, kind)
        assert built == sensor_topic("custom", "sensor-01", kind) == f"custom/sensor-01/{kind}"
        parsed = parse_sensor_topic(built, "custom")
        assert (parsed.sensor_id, parsed.kind) == ("sensor-01", kind)
    assert subscription("custom", "events", "ingest") == "$share/ingest/custom/+/events"
    assert fleet_topic("custom", "alerts", "sensor-01") == "custom/_alerts/sensor-01"
    assert fleet_topic("custom", "ingest", "ingest-1", "health") == "custom/_ingest/ingest-1/health"
    for wrong in ("custom/sensor-01/status", "custom/_alerts/sensor-01", "other/sensor-01/events", "custom/a/b/events"):
        with pytest.raises(TopicError):
            parse_sensor_topic(wrong, "custom")


def test_the_schemas_ship_in_the_package_and_pin_a_version() -> None:
    for name in (schemas.EVENT, schemas.SUMMARY):
        shipped = schemas.load(name)
        assert shipped == json.loads((ROOT / "wire" / name).read_text())
        assert "schema_version" in shipped["required"], name


def test_exit_codes_keep_their_values() -> None:
    """Scripts and systemd units (RestartPreventExitStatus=78) rely on the numbers, not the names."""
    values = {name: getattr(exitcodes, name) for name in dir(exitcodes) if re.fullmatch(r"[A-Z_]+", name)}
    assert values == {"OK": 0, "USAGE": 2, "DATA_ERROR": 65, "NO_INPUT": 66, "UNAVAILABLE": 69, "SOFTWARE": 70,
                      "CANT_CREATE": 73, "CONFIG": 78}  # fmt: skip


@pytest.mark.parametrize(
    ("script", "argv", "absent", "extra"),
    [
        ("custom.daemon.cli", ["classify", "--bundle", "b", "x.wav"], "numpy", "sensor"),
        ("custom.ingest", ["--help"], "psycopg", "fleet"),
        ("custom.convert.cli", ["head", "--help"], "numpy", "convert"),
    ],
)
def test_a_command_on_the_wrong_install_says_which_in_one_line(
    script: str, argv: list[str], absent: str, extra: str
) -> None:
    """A fleet server has custom-sensord too (one distribution); run there, it names the install it needs. The
    package is made unimportable for real (a None entry in sys.modules is how Python marks a module as absent)."""
    import subprocess
    import sys

    code = (
        f"import sys; sys.modules[{absent!r}] = None; sys.argv = ['cmd', *{argv!r}]; "
        f"from {script} import entry; sys.exit(entry())"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == exitcodes.UNAVAILABLE, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert f"lacks the Python package '{absent}'" in lines[0]
    assert f"pip install 'custom-sensor[{extra}]'" in lines[0]
