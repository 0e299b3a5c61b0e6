"""What crosses the network between a sensor and the fleet, and what both sides share.

The daemon (custom.daemon) and the fleet (custom.ingest) each import this package and never each other
(tests/test_wire.py walks their imports): the topic layout, the event and summary JSON schemas, time stamps, the
settings engine, the retry rule and the exit codes. A change to the wire format lands here, once, for both sides.
"""
