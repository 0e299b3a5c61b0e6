"""Soak test: run the real daemon for a long time with short windows and check that nothing creeps upwards.

    python bench/soak.py                       # 30 min, 1 s windows, virtual mic, broker outage every 5 min
    python bench/soak.py --minutes 2 --out -   # quick look, table only

What runs: the YAMNet bundle built by the real converter, a real mosquitto on loopback, a private PulseAudio virtual
microphone playing a street clip in a loop (so the real PortAudio capture path runs, not a file replay; `--source
file` uses `--input FILE --loop` instead), and `custom-sensord run` as a subprocess. Every `--outage-every` seconds
the broker is stopped for `--outage-s` seconds, so reconnects (sockets, paho clients, threads) are part of what must
not leak.

Why these three numbers: on a sensor that runs for months, a leak of one fd per reconnect or one thread per mic
reopen shows up as a slope long before it kills the process; RSS is the one systemd's MemoryMax= acts on. Every
`--sample-s` seconds it reads VmRSS and Threads from /proc/PID/status and counts /proc/PID/fd, then fits a least
squares line to each (per hour) over the whole run and over the second half (after warm-up: allocator arenas,
TFLite buffers). A subscriber counts events by id, so the soak also reports lost and duplicate events.

Writes a Markdown report (default bench/SOAK.md). Needs root for the broker fixture (`user root`), as the tests do.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from testing.audio import VirtualMic
from testing.broker import Broker, Subscriber, free_port
from testing.daemon import Daemon, daemon_config
from testing.shared import ROOT, shared_dir

CLIP = "data/clips/siren/us8k_102871-8-0-8.flac"


def build_bundle(out: Path) -> Path:
    """The shipped-default YAMNet bundle, made by the real converter (same as the tests' session fixture)."""
    from custom.convert.backbones.yamnet import shared_layout_args
    from custom.convert.cli import main as convert

    status = convert(["yamnet", *shared_layout_args(shared_dir()), "--out", str(out)])
    if status != 0:
        raise SystemExit(f"soak: bundle conversion failed with {status}")
    return out


def sample(pid: int) -> tuple[float, int, int]:
    """(RSS MiB, open fds, threads) of a live process, from /proc."""
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    rss_mib = int(fields["VmRSS"].split()[0]) / 1024.0
    return rss_mib, len(os.listdir(f"/proc/{pid}/fd")), int(fields["Threads"])


def slope_per_hour(times_s: list[float], values: list[float]) -> float:
    """Least-squares slope of values over time, in units per hour (0 for fewer than two points)."""
    n = len(times_s)
    if n < 2:
        return 0.0
    mean_t = sum(times_s) / n
    mean_v = sum(values) / n
    var = sum((t - mean_t) ** 2 for t in times_s)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in zip(times_s, values, strict=True))
    return cov / var * 3600.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    parser.add_argument("--window-s", type=float, default=1.0, help="window length and hop, seconds (default 1)")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--source", choices=("mic", "file"), default="mic", help="virtual mic (default) or --input")
    parser.add_argument("--outage-every", type=float, default=300.0, help="broker outage period, s (0: none)")
    parser.add_argument("--outage-s", type=float, default=20.0, help="broker outage length, s (default 20)")
    parser.add_argument("--bundle", type=Path, help="existing bundle folder (default: convert one into a temp dir)")
    parser.add_argument("--out", default=str(ROOT / "bench/SOAK.md"), help="report file, '-' for none")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("soak: run as root (the test broker config says 'user root')", file=sys.stderr)
        return 2
    rows, summary = run_soak(args)
    report = render(args, rows, summary)
    print(report)
    if args.out != "-":
        Path(args.out).write_text(report)
        print(f"soak: wrote {args.out}")
    return 0


def run_soak(args: argparse.Namespace) -> tuple[list[tuple[float, float, int, int, int]], dict]:
    """Run it; returns the samples (t, RSS MiB, fds, threads, events so far) and a summary of the events."""
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    bundle = args.bundle or build_bundle(work / "bundle")
    broker = Broker(workdir=work / "broker", port=free_port(), persistence=True)
    broker.workdir.mkdir()
    broker.start()
    mic = VirtualMic(Path(tempfile.mkdtemp(prefix="vmic-")))  # short path: unix socket length limit
    env = dict(os.environ)
    daemon_args: list[str] = []
    if args.source == "mic":
        mic.start()
        mic.play(shared_dir() / CLIP, loop=True)
        env.update(mic.env)
    else:
        daemon_args = ["--input", str(shared_dir() / CLIP), "--loop"]
    config = daemon_config(
        bundle,
        broker.port,
        work / "spool.sqlite",
        window={"length_s": args.window_s, "hop_s": args.window_s},
        health_interval_s=10.0,
    )
    (work / "daemon").mkdir()
    daemon = Daemon(work / "daemon", config, daemon_args, env)
    subscriber = Subscriber(broker.host, broker.port, ["custom/test-sensor/events"], client_id="soak", clean=False)
    subscriber.start()
    daemon.start()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    # Start measuring once the pipeline is up (first event delivered): start-up growth is not a leak.
    if not subscriber.wait_for(lambda ms: len(ms) > 0, timeout=120):
        daemon.proc.kill()
        raise SystemExit(f"soak: no event within 120 s:\n{daemon.log()[-3000:]}")
    print(f"soak: daemon pid {pid}, {args.minutes:g} min, {args.window_s:g} s windows, source {args.source}, "
          f"work dir {work}", flush=True)  # fmt: skip

    rows: list[tuple[float, float, int, int, int]] = []  # (t, rss, fds, threads, events received)
    outages = 0
    t0 = time.monotonic()
    next_outage = t0 + args.outage_every if args.outage_every > 0 else float("inf")
    end = t0 + args.minutes * 60.0
    print(f"{'t_s':>7} {'rss_mib':>8} {'fds':>5} {'threads':>7} {'events':>7}", flush=True)
    try:
        while time.monotonic() < end:
            if daemon.proc.poll() is not None:
                raise SystemExit(f"soak: daemon exited with {daemon.proc.returncode}:\n{daemon.log()[-3000:]}")
            rss, fds, threads = sample(pid)
            t = time.monotonic() - t0
            received = len(subscriber.on("custom/test-sensor/events"))
            rows.append((t, rss, fds, threads, received))
            print(f"{t:7.0f} {rss:8.1f} {fds:5d} {threads:7d} {received:7d}", flush=True)
            if time.monotonic() >= next_outage and time.monotonic() + args.outage_s < end - 60:
                broker.stop()
                time.sleep(args.outage_s)
                broker.start()
                outages += 1
                next_outage += args.outage_every
            time.sleep(max(0.0, args.sample_s - (time.monotonic() - t0 - t)))
        # let the last outage's backlog drain before counting
        time.sleep(min(30.0, 5 * args.window_s + 10))
        stop_code = daemon.stop()
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
        subscriber.stop()
        broker.stop()
        mic.close()

    events = [m.json() for m in subscriber.on("custom/test-sensor/events")]
    ids = [e["event_id"] for e in events]
    unique = len(set(ids))
    starts = sorted({e["window"]["start"] for e in events})
    starts_s = [datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for s in starts]
    gaps = [b - a for a, b in zip(starts_s, starts_s[1:], strict=False) if b - a > args.window_s * 1.5]
    log_text = daemon.log()
    summary = {
        "events": len(events),
        "unique": unique,
        "duplicates": len(events) - unique,
        "window_gaps": len(gaps),
        "outages": outages,
        "stop_code": stop_code,
        "tracebacks": log_text.count("Traceback"),
    }
    return rows, summary


def render(args: argparse.Namespace, rows: list[tuple[float, float, int, int, int]], summary: dict) -> str:
    """The Markdown report: figures first, then every sample."""
    times = [r[0] for r in rows]
    half = len(rows) // 2
    lines = [
        "# Soak result",
        "",
        f"Run {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by `python bench/soak.py "
        f"--minutes {args.minutes:g} --window-s {args.window_s:g} --source {args.source}` "
        f"(broker outage of {args.outage_s:g} s every {args.outage_every:g} s). Samples every {args.sample_s:g} s "
        "from /proc/PID/status (VmRSS, Threads) and /proc/PID/fd.",
        "",
        "| metric | start | end | min | max | slope /h (all) | slope /h (2nd half) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, index in (("RSS MiB", 1), ("open fds", 2), ("threads", 3)):
        values = [float(r[index]) for r in rows]
        lines.append(
            f"| {name} | {values[0]:.1f} | {values[-1]:.1f} | {min(values):.1f} | {max(values):.1f} "
            f"| {slope_per_hour(times, values):+.2f} | {slope_per_hour(times[half:], values[half:]):+.2f} |"
        )
    lines += [
        "",
        f"Events received: {summary['events']} ({summary['unique']} unique, {summary['duplicates']} duplicates); "
        f"gaps between window starts > 1.5 windows: {summary['window_gaps']}; broker outages: {summary['outages']}; "
        f"daemon exit on SIGTERM: {summary['stop_code']}; tracebacks in the log: {summary['tracebacks']}.",
        "",
        "<details><summary>All samples</summary>",
        "",
        "| t s | RSS MiB | fds | threads | events |",
        "|---|---|---|---|---|",
        *(f"| {t:.0f} | {rss:.1f} | {fds} | {thr} | {ev} |" for t, rss, fds, thr, ev in rows),
        "",
        "</details>",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
