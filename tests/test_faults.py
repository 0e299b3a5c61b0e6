"""Faults and bad input against the whole daemon (`custom-sensord run` as a subprocess, real parts, short windows).

Each test is one row of FAULTS.md. Accounting is by event id and window start: every window the daemon processed
(its DEBUG log line `window <start>: top ...` is written after the event is spooled) must reach the subscriber, or
still sit in the spool file when the daemon exits, or be one of the oldest rows the spool's bound dropped (and
counted). Figures (outage size, duplicates, lost windows, mic resume time, connection attempts) are printed so a
`pytest -s` run shows them; FAULTS.md quotes the last run.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custom.daemon import cli
from custom.daemon.model.bundle import sha256_file
from custom.wire.settings import key_of as _key
from testing.bundles import edit_manifest
from testing.config_trees import keys, trees
from testing.daemon import Daemon, daemon_config
from testing.disk import remount, tmpfs

EVENTS = "custom/test-sensor/events"
HEALTH = "custom/test-sensor/health"
CLIP = "data/clips/siren/us8k_102871-8-0-8.flac"
HOP_S = 1.0
SHORT = {"window": {"length_s": HOP_S, "hop_s": HOP_S}, "health_interval_s": 1.0, "log_level": "DEBUG"}
WINDOW_LOG = re.compile(r"custom\.daemon\.service: window (\S+): top")
START_S = 60.0  # first event after start: bundle load + first window, generous for a loaded CI machine
RESUME_LIMIT_S = 5.0  # the requirement for the microphone coming back


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, daemon: Daemon | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f"\n{daemon.log()}" if daemon else ""))


def received(subscriber) -> list[dict]:
    """Events in arrival order, duplicates included."""
    return [m.json() for m in subscriber.on(EVENTS)]


def healths(subscriber) -> list[dict]:
    return [m.json() for m in subscriber.on(HEALTH)]


def logged_windows(daemon: Daemon) -> list[str]:
    """Window starts the daemon processed and spooled, in order."""
    return WINDOW_LOG.findall(daemon.log())


def spool_leftover(path: Path) -> list[str]:
    """Window starts of events still in the spool file (after the daemon exited); summaries share the spool."""
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT payload FROM events WHERE topic LIKE '%/events' ORDER BY id")
        return [json.loads(p)["window"]["start"] for (p,) in rows]


def first_occurrences(events: list[dict]) -> list[str]:
    seen: dict[str, str] = {}
    for e in events:
        seen.setdefault(e["event_id"], e["window"]["start"])
    return list(seen.values())


def replay(shared: Path) -> list[str]:
    return ["--input", str(shared / CLIP), "--loop"]


def assert_contiguous(starts: list[str], hop: float = HOP_S) -> None:
    seconds = [ts(s) for s in starts]
    steps = [round(b - a, 3) for a, b in zip(seconds, seconds[1:], strict=False)]
    assert all(abs(s - hop) < 0.01 for s in steps), f"windows are not back to back: {steps}"


# ------------------------------------------------------------------------------------------------ broker outage


def test_outage_of_many_windows_delivers_every_event_in_order(
    yamnet_bundle, shared, broker, subscriber_factory, make_daemon, tmp_path
):
    """Broker stopped for ~20 one-second windows: every processed window arrives afterwards, in order; duplicates
    only where QoS 1 allows them, and the sensor counts its re-sends (`mqtt.resent`)."""
    subscriber = subscriber_factory(broker, [EVENTS, HEALTH], client_id="faults-outage", clean=False)
    spool = tmp_path / "spool.sqlite"
    daemon = make_daemon(daemon_config(yamnet_bundle, broker.port, spool, **SHORT), args=replay(shared)).start()
    wait_until(lambda: len(received(subscriber)) >= 3, START_S, "the first events", daemon)

    broker.stop()
    before = len(logged_windows(daemon))
    time.sleep(20.0)  # the outage: ~20 windows are processed with nowhere to send them
    during = len(logged_windows(daemon)) - before
    broker.start()
    wait_until(
        lambda: any(h["spool"]["depth"] == 0 and h["windows"]["done"] > before + during for h in healths(subscriber)),
        60.0,
        "the backlog to drain",
        daemon,
    )
    assert daemon.stop() == 0, daemon.log()

    logged = logged_windows(daemon)
    leftover = spool_leftover(spool)
    events = received(subscriber)
    arrived = first_occurrences(events)
    assert set(arrived) | set(leftover) == set(logged), "a processed window neither arrived nor stayed spooled"
    assert arrived == sorted(arrived, key=ts), "events arrived out of order"
    assert_contiguous(logged)  # the pipeline never paused for the outage
    duplicates = len(events) - len(arrived)
    resent = healths(subscriber)[-1]["mqtt"]["resent"]
    redelivered = sum(m.dup for m in subscriber.on(EVENTS))  # broker -> subscriber QoS 1 redelivery
    assert duplicates <= resent + redelivered, (duplicates, resent, redelivered)
    assert "Traceback" not in daemon.log()
    print(
        f"\nOUTAGE: {during} windows during a 20 s outage; processed {len(logged)}, received {len(arrived)} unique "
        f"+ {duplicates} duplicate(s) (sensor resent {resent}, broker redelivered {redelivered}), "
        f"{len(leftover)} left spooled at stop, lost 0"
    )


def test_kill9_during_outage_then_restart_delivers_the_backlog(
    yamnet_bundle, shared, broker, subscriber_factory, make_daemon, tmp_path
):
    """kill -9 while the broker is down, restart on the same spool, broker back: everything the dead process
    spooled arrives; at most the window in flight at the kill is lost."""
    subscriber = subscriber_factory(broker, [EVENTS, HEALTH], client_id="faults-kill9", clean=False)
    spool = tmp_path / "spool.sqlite"
    config = daemon_config(yamnet_bundle, broker.port, spool, **SHORT)
    first = make_daemon(config, args=replay(shared)).start()
    wait_until(lambda: len(received(subscriber)) >= 3, START_S, "the first events", first)

    broker.stop()
    time.sleep(8.0)  # windows pile up in the spool
    assert first.proc is not None
    killed_at = time.time()
    first.proc.kill()
    first.proc.wait(10)
    first_logged = logged_windows(first)
    assert first_logged, first.log()

    second = make_daemon(config, args=replay(shared)).start()
    assert second.wait_log("spool", timeout=START_S) and second.wait_log("window", timeout=START_S), second.log()
    broker.start()
    wait_until(
        lambda: set(first_logged) <= set(first_occurrences(received(subscriber))),
        60.0,
        "the dead process's backlog to arrive",
        second,
    )
    assert second.stop() == 0, second.log()

    events = received(subscriber)
    arrived = first_occurrences(events)
    leftover = spool_leftover(spool)
    assert set(arrived) | set(leftover) == set(first_logged) | set(logged_windows(second))
    assert arrived == sorted(arrived, key=ts), "events arrived out of order"
    assert_contiguous(first_logged)
    last_end = ts(first_logged[-1]) + HOP_S
    lost = int((killed_at - last_end) // HOP_S)  # whole windows between the last spooled one and the kill
    assert lost <= 1, f"{lost} windows lost at the kill (last spooled window ended {killed_at - last_end:.2f} s before)"
    print(
        f"\nKILL9: first process spooled {len(first_logged)} windows, all {len(first_logged)} arrived after the "
        f"restart; last spooled window ended {killed_at - last_end:.2f} s before the kill -> {lost} complete window(s) "
        f"lost (the one in flight was partial); {len(events) - len(arrived)} duplicate(s)"
    )


# ------------------------------------------------------------------------------------------------ spool limits


def test_spool_bound_drops_the_oldest_counts_them_and_keeps_going(
    yamnet_bundle, shared, broker, subscriber_factory, make_daemon, tmp_path
):
    subscriber = subscriber_factory(broker, [EVENTS, HEALTH], client_id="faults-bound", clean=False)
    broker.stop()  # down from the start: every event goes to a spool that holds only 5
    spool = tmp_path / "spool.sqlite"
    config = daemon_config(yamnet_bundle, broker.port, spool, **SHORT)
    config["spool"]["max_rows"] = 5
    daemon = make_daemon(config, args=replay(shared)).start()
    wait_until(lambda: len(logged_windows(daemon)) >= 12, START_S, "12 windows with the broker down", daemon)
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert "spool full (5 rows" in daemon.log()

    broker.start()
    wait_until(
        lambda: any(h["spool"]["depth"] == 0 and h["spool"]["dropped"] >= 7 for h in healths(subscriber)),
        60.0,
        "health reporting the drops with the spool drained",
        daemon,
    )
    dropped = next(h for h in healths(subscriber) if h["spool"]["depth"] == 0)["spool"]["dropped"]
    assert daemon.stop() == 0, daemon.log()
    assert healths(subscriber)[-1]["spool"]["dropped"] == dropped, "nothing dropped once the broker was back"

    logged = logged_windows(daemon)
    arrived = first_occurrences(received(subscriber))
    leftover = spool_leftover(spool)
    assert set(arrived).isdisjoint(logged[:dropped]), "a dropped event arrived: the newest were dropped"
    assert set(arrived) | set(leftover) == set(logged[dropped:]), "only the oldest may be missing"
    print(f"\nSPOOL BOUND: {len(logged)} windows, spool max_rows 5, dropped {dropped} oldest, received {len(arrived)}")


def test_unwritable_state_dir_holds_events_in_memory_and_delivers_them(
    yamnet_bundle, shared, broker, subscriber_factory, make_daemon, tmp_path
):
    """The spool's folder is a read-only mount: one clear log line, health says memory fallback, events still flow
    (through a bounded memory queue that keeps the newest), including across a broker outage."""
    subscriber = subscriber_factory(broker, [EVENTS, HEALTH], client_id="faults-ro", clean=False)
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        remount(mnt, "ro")
        config = daemon_config(yamnet_bundle, broker.port, mnt / "spool.sqlite", **SHORT)
        config["spool"]["memory_rows"] = 4
        daemon = make_daemon(config, args=replay(shared)).start()
        wait_until(lambda: len(received(subscriber)) >= 2, START_S, "events with a read-only spool", daemon)
        errors = [line for line in daemon.log().splitlines() if "cannot open spool" in line]
        assert len(errors) == 1 and "read-only" in errors[0].lower() and "memory" in errors[0], errors
        wait_until(lambda: len(healths(subscriber)) >= 1, 10.0, "health", daemon)
        assert healths(subscriber)[-1]["spool"]["memory_fallback"] is True

        broker.stop()
        time.sleep(8.0)  # ~8 windows into a memory queue of 4
        broker.start()
        wait_until(
            lambda: any(h["spool"]["depth"] == 0 and h["spool"]["dropped"] > 0 for h in healths(subscriber)),
            60.0,
            "the memory queue to drain",
            daemon,
        )
        final = next(h for h in healths(subscriber) if h["spool"]["depth"] == 0 and h["spool"]["dropped"] > 0)
        assert daemon.stop() == 0, daemon.log()
    logged = logged_windows(daemon)[: final["windows"]["done"]]  # later ones may have been in memory at exit
    arrived = set(first_occurrences(received(subscriber)))
    missing = [s for s in logged if s not in arrived]
    assert len(missing) == final["spool"]["dropped"], (missing, final["spool"])
    assert _missing_are_one_run(logged, missing), f"the dropped events are not the oldest of the backlog: {missing}"
    assert final["spool"]["memory_fallback"] and "read-only" in final["spool"]["last_error"].lower()
    print(f"\nREAD-ONLY: {len(logged)} windows, {final['spool']['dropped']} oldest dropped by the memory bound of 4")


def _missing_are_one_run(logged: list[str], missing: list[str]) -> bool:
    """The dropped events form one run of consecutive windows: the oldest of the outage's backlog (the newest
    `memory_rows` windows before the broker came back were kept, and everything after them was sent)."""
    if not missing:
        return True
    i = logged.index(missing[0])
    return logged[i : i + len(missing)] == missing


# ------------------------------------------------------------------------------------------------ microphone


def test_microphone_vanishes_and_returns_under_the_daemon(
    yamnet_bundle, shared, virtual_mic, broker, subscriber_factory, make_daemon, notify_listener, tmp_path
):
    subscriber = subscriber_factory(broker, [EVENTS, HEALTH], client_id="faults-mic")
    virtual_mic.play(shared / CLIP, loop=True)
    config = daemon_config(yamnet_bundle, broker.port, tmp_path / "spool.sqlite", **SHORT)
    daemon = make_daemon(config, env={**virtual_mic.env, "NOTIFY_SOCKET": str(notify_listener.path)}).start()
    wait_until(lambda: len(received(subscriber)) >= 3, START_S, "the first events from the mic", daemon)

    virtual_mic.stop()
    unplugged = len(healths(subscriber))
    wait_until(
        lambda: any(h["audio"]["mic"] == "down" for h in healths(subscriber)[unplugged:]),
        15.0,
        "health reporting the mic down",
        daemon,
    )
    # the outage is visible to systemd (`systemctl status` shows STATUS) and carries its start in health
    wait_until(
        lambda: any(m.startswith("STATUS=MICROPHONE DOWN since ") for _, m in list(notify_listener.messages)),
        5.0,
        "sd_notify STATUS saying the mic is down",
        daemon,
    )
    down_since = [h["audio"]["down_since"] for h in healths(subscriber) if h["audio"]["mic"] == "down"]
    assert down_since and down_since[0] is not None and abs(ts(down_since[0]) - time.time()) < 20, down_since
    time.sleep(3.0)  # the device stays away a while
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()
    virtual_mic.start()
    returned_at = time.time()  # the sound server answers from here on
    wait_until(
        lambda: any(ts(e["window"]["start"]) > returned_at - 1.0 for e in received(subscriber)),
        30.0,
        "windows after the mic returned",
        daemon,
    )
    wait_until(
        lambda: sum(ts(e["window"]["start"]) > returned_at for e in received(subscriber)) >= 3,
        15.0,
        "three windows after the mic returned",
        daemon,
    )
    assert daemon.stop() == 0, daemon.log()

    starts = [ts(s) for s in first_occurrences(received(subscriber))]
    jumps = [(a, b) for a, b in zip(starts, starts[1:], strict=False) if b - a > 1.5 * HOP_S]
    assert jumps, f"the outage does not show in the window timestamps: {starts}"
    resumed_at = jumps[-1][1]  # first window after the gap starts with the first sample captured after the reopen
    resume_s = resumed_at - returned_at
    # The requirement itself (5 s) is the bound: the reopen backoff is capped at 2 s and a fresh stream delivers
    # within ~1.5 s, so a pass here is not a near miss.
    assert resume_s <= RESUME_LIMIT_S, f"capture resumed {resume_s:.2f} s after the device returned"
    down = [h for h in healths(subscriber) if h["audio"]["mic"] == "down"]
    assert down and down[-1]["audio"]["last_error"], down[-1:]
    assert "Traceback" not in daemon.log()
    print(f"\nMIC: gap {jumps[-1][1] - jumps[-1][0] - HOP_S:.1f} s in the window timestamps; capture resumed "
          f"{resume_s:+.2f} s after the device returned")  # fmt: skip


# ------------------------------------------------------------------------------------------------ bad config


# Printed by the TFLite C++ runtime itself (not our logging, not switchable by TF_CPP_MIN_LOG_LEVEL) whenever an
# interpreter is created, so it precedes a refusal found only after loading the model (tensor shapes). Known noise.
TFLITE_NATIVE_INFO = "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


def _one_config_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip() and line != TFLITE_NATIVE_INFO]
    assert len(lines) == 1, f"expected one line, got {lines}"
    assert "Traceback" not in text
    return lines[0]


def names_a_key(message: str, data: Any) -> bool:
    """The error starts with the key at fault: one of the input's own top-level keys (as config shows it), the
    top level itself, or model.bundle (a valid config whose bundle is missing)."""
    heads = ["(top level)", "model.bundle"]
    if isinstance(data, dict):
        heads += [_key(k) for k in data]
    return any(message.startswith(f"{head}: ") or message.startswith(f"{head}.") for head in heads)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, trees, max_size=6) | trees)
def test_check_config_fuzz_exits_0_or_78_with_one_line(tmp_path_factory, data):
    """`custom-sensord check-config` in-process on random YAML: 0 with an ok line, or 78 with one line naming
    the key, never an exception."""
    path = tmp_path_factory.getbasetemp() / "fuzz-check.yaml"
    path.write_text(yaml.safe_dump(data))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["check-config", "--config", str(path)])
    if code == 0:
        assert err.getvalue() == "" and "ok" in out.getvalue()
    else:
        assert code == 78
        line = _one_config_line(err.getvalue())
        prefix = f"custom-sensord: {path}: "
        assert line.startswith(prefix) and names_a_key(line.removeprefix(prefix), data), line


def _run_bad(make_daemon, config_text: str | bytes | None, timeout: float = 60.0) -> str:
    """`custom-sensord run` on a config file's raw content (None: no file): must exit 78; returns its one line."""
    daemon = make_daemon({})
    if config_text is None:
        daemon.config_path.unlink()
    elif isinstance(config_text, bytes):
        daemon.config_path.write_bytes(config_text)
    else:
        daemon.config_path.write_text(config_text)
    code = daemon.start().wait_exit(timeout)
    text = daemon.log()
    assert code == 78, f"exit {code}: {text}"
    return _one_config_line(text)


def _with_missing_bundle(data: Any, missing: Path) -> Any:
    """Point model.bundle at nothing so a config that happens to be valid still fails (at the bundle), never runs."""
    if isinstance(data, dict):
        model = data.get("model")
        if model is None or isinstance(model, dict):
            data = {**data, "model": {**(model or {}), "bundle": str(missing)}}
    return data


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.dictionaries(keys, trees, max_size=6))
def test_run_fuzz_always_exits_78_with_one_line(tmp_path_factory, data):
    """The real `custom-sensord run` subprocess on random configs (fewer examples: each starts Python)."""
    import subprocess
    import sys

    work = tmp_path_factory.mktemp("fuzz-run")
    path = work / "config.yaml"
    data = _with_missing_bundle(data, work / "no-bundle")
    path.write_text(yaml.safe_dump(data))
    done = subprocess.run(
        [sys.executable, "-m", "custom.daemon.cli", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 78, done.stderr
    line = _one_config_line(done.stderr + done.stdout)
    found = re.search(rf"(?:bad config {re.escape(str(path))}|cannot start): (.*)$", line)
    assert found and names_a_key(found.group(1), data), line


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read config"),
        (b"\xff\xfe not utf-8", "cannot read config"),
        ("mqtt: {port: 1883, prot: 1}\n", "mqtt.prot"),
        ("mqtt:\n  tls: {enabled: true, ca: /nonexistent/ca.pem}\n", "mqtt.tls.ca"),
        ("mqtt: {username: u, password_file: /nonexistent/pw}\n", "mqtt.password_file"),
        ("window: {length_s: -1}\n", "window.length_s"),
        ("- just\n- a list\n", "(top level)"),
        ("mqtt: {port: [1, 2]}\n", "mqtt.port"),
        ("model: {threads: 1, bundle: /nonexistent/bundle}\n", "model.bundle"),
    ],
)
def test_run_with_a_hand_edited_config_exits_78(make_daemon, content, expected):
    assert expected in _run_bad(make_daemon, content)


# ------------------------------------------------------------------------------------------------ bad bundles


def _truncate(bundle: Path) -> None:
    model = bundle / "yamnet.tflite"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])


def _flip_byte(bundle: Path) -> None:
    model = bundle / "yamnet.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))


def _truncate_and_fix_checksum(bundle: Path) -> None:
    _truncate(bundle)
    digest = sha256_file(bundle / "yamnet.tflite")
    edit_manifest(bundle, lambda d: d["files"]["yamnet.tflite"].update(sha256=digest))


BAD_BUNDLES = {
    "truncated": (_truncate, "checksum mismatch"),
    "altered": (_flip_byte, "checksum mismatch"),
    "truncated, checksum fixed": (_truncate_and_fix_checksum, "not a loadable TFLite model"),
    "manifest missing classes": (lambda b: edit_manifest(b, lambda d: d.pop("classes")), "manifest classes: missing"),
    "wrong tensor shape": (
        lambda b: edit_manifest(b, lambda d: d["models"]["backbone"]["input"].update(shape=[1, 96, 64])),
        "manifest says float32[1, 96, 64]",
    ),
}


def _damaged(yamnet_bundle: Path, where: Path, name: str) -> Path:
    damage, _ = BAD_BUNDLES[name]
    target = where / name.replace(" ", "_").replace(",", "")
    shutil.copytree(yamnet_bundle, target)
    damage(target)
    return target


@pytest.mark.parametrize("name", [n for n in BAD_BUNDLES if n != "truncated"])  # truncated: test_daemon.py
def test_bad_bundle_at_start_exits_78_with_one_line(yamnet_bundle, shared, make_daemon, tmp_path, name):
    bundle = _damaged(yamnet_bundle, tmp_path, name)
    daemon = make_daemon(daemon_config(bundle, 1, tmp_path / "spool.sqlite"), args=replay(shared))
    assert daemon.start().wait_exit(60) == 78, daemon.log()
    line = _one_config_line(daemon.log())
    assert "model.bundle: " in line and BAD_BUNDLES[name][1] in line, line


def test_sighup_with_each_bad_bundle_keeps_the_old_one_running(
    yamnet_bundle, shared, broker, subscriber_factory, make_daemon, tmp_path
):
    subscriber = subscriber_factory(broker, [EVENTS])
    config = daemon_config(yamnet_bundle, broker.port, tmp_path / "spool.sqlite", **SHORT)
    daemon = make_daemon(config, args=replay(shared)).start()
    wait_until(lambda: len(received(subscriber)) >= 1, START_S, "the first event", daemon)
    sha = received(subscriber)[0]["model"]["sha256"]
    for refused, name in enumerate(BAD_BUNDLES, start=1):
        bundle = _damaged(yamnet_bundle, tmp_path, name)
        daemon.write_config({**config, "model": {"bundle": str(bundle), "threads": 1}})
        daemon.signal(signal.SIGHUP)
        wait_until(lambda n=refused: daemon.log().count("reload refused") >= n, 30.0, f"refusal of {name}", daemon)
        line = [ln for ln in daemon.log().splitlines() if "reload refused" in ln][-1]
        assert BAD_BUNDLES[name][1] in line, (name, line)
        count = len(received(subscriber))
        wait_until(lambda c=count: len(received(subscriber)) >= c + 2, 30.0, f"events after {name}", daemon)
    assert {e["model"]["sha256"] for e in received(subscriber)} == {sha}
    assert daemon.stop() == 0 and "Traceback" not in daemon.log()


# ------------------------------------------------------------------------------------------------ broker security


OBSERVE_S = 10.0


def test_security_faults_are_logged_once_and_retried_with_backoff(
    yamnet_bundle, shared, make_daemon, tmp_path, request
):
    """Wrong password, wrong CA, plain client on a TLS port: one WARNING naming the cause, retries that back off
    (attempts counted from the DEBUG `attempt N` lines over 10 s), and the process stays up: no restart storm."""
    # fixtures of testing.broker, fetched by name (they are only needed here)
    with_password = request.getfixturevalue("password_broker")
    with_tls = request.getfixturevalue("tls_broker")
    ca_files = request.getfixturevalue("certs")
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not-it\n")
    cases = {
        "wrong password": (
            with_password,
            {"username": "sensor", "password_file": str(wrong)},
            "mqtt.password_file",
        ),
        "wrong CA": (with_tls, {"tls": {"enabled": True, "ca": str(ca_files["other-ca.crt"])}}, "certificate"),
        "TLS port without TLS": (with_tls, {}, "TLS"),
    }
    daemons: dict[str, Daemon] = {}
    for name, (target, mqtt, _) in cases.items():
        config = daemon_config(yamnet_bundle, target.port, tmp_path / f"{len(daemons)}.sqlite", **SHORT)
        config["mqtt"].update(mqtt)
        daemons[name] = make_daemon(config, args=replay(shared)).start()
    for daemon in daemons.values():
        assert daemon.wait_log("MQTT reconnect in", timeout=START_S), daemon.log()
    time.sleep(OBSERVE_S)
    report = []
    for name, daemon in daemons.items():
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()
        text = daemon.log()
        warnings = [ln for ln in text.splitlines() if " WARNING custom.daemon.publish.publisher: " in ln]
        assert len(warnings) == 1 and cases[name][2] in warnings[0], (name, warnings)
        delays = [float(d) for d in re.findall(r"MQTT reconnect in ([\d.]+) s", text)]
        assert len(delays) >= 3, (name, delays)  # it keeps trying
        # backoff: attempts are bounded (delays grow to >= reconnect_max_s / 2 = 0.5 s with the jitter)
        assert min(delays[3:] or [1.0]) >= 0.5 and len(delays) <= 2 * (OBSERVE_S + START_S), (name, delays)
        report.append(f"{name}: {len(delays)} attempts, delays {delays[0]:.2f}..{max(delays):.2f} s")
        assert daemon.stop() == 0
    print("\nSECURITY: " + "; ".join(report))


# ------------------------------------------------------------------------------------------------ soak


@pytest.mark.slow
def test_soak_two_minutes_keeps_fds_threads_and_memory_flat(yamnet_bundle):
    """The short version of `python bench/soak.py` (30 min, see bench/SOAK.md): out of CI, `tests/run.sh -m slow`."""
    from bench.soak import parse_args, run_soak

    args = parse_args(["--minutes", "2", "--bundle", str(yamnet_bundle), "--out", "-", "--outage-every", "30",
                       "--outage-s", "10"])  # fmt: skip
    rows, summary = run_soak(args)
    half = len(rows) // 2
    _, rss, fds, threads, _ = zip(*rows, strict=True)
    # "Flat" = no growth after the first half; a sample taken mid mic-reopen may be lower, never higher.
    assert max(fds[half:]) <= max(fds[:half]) and max(threads[half:]) <= max(threads[:half]), rows
    assert max(rss[half:]) - rss[half] < 5.0, f"RSS still growing after warm-up: {rss}"
    assert summary["outages"] == 1 and summary["tracebacks"] == 0 and summary["stop_code"] == 0, summary
    assert summary["unique"] >= 100, summary
