"""Real-part test fixtures (mosquitto, PulseAudio virtual mic, the daemon as a subprocess, small VGGish checkpoints).

A top-level package of the checkout, not of the product wheel: the sensor, the fleet and the workstation never
install the nspawn, qemu and PostgreSQL harnesses. The test suite finds it through pytest's `pythonpath = ["."]`
(pyproject.toml), `python -m bench` and `python -m testing.<tool>` from the checkout's root; subprocesses that run
one of its entry points get the root on PYTHONPATH (`shared.source_env`).
"""
