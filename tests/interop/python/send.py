#!/usr/bin/env python3
"""Sends COUNT records to a Fluentd forward endpoint with PyPI fluent-logger.

    python3 send.py HOST PORT TAG COUNT

Each record is {"seq": i, "msg": "..."} for i in 0..COUNT, sent with the
library's own FluentSender (Message mode, EventTime timestamps). Exits 0 if
every emit succeeded, 1 on the first failure, 2 on bad arguments.

fluent-logger has no ack support, so success means "written to the socket";
the caller checks what actually arrived.
"""
import sys

try:
    from fluent import sender
except ImportError:
    sys.exit("send.py: the fluent-logger package is missing: pip install fluent-logger")


def main(argv):
    if len(argv) != 5:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    host, port, tag, count = argv[1], argv[2], argv[3], argv[4]
    try:
        port, count = int(port), int(count)
    except ValueError:
        print(f"send.py: PORT and COUNT must be integers, got {port!r} {count!r}", file=sys.stderr)
        return 2

    dropped = []  # filled by the library if close() cannot flush its buffer
    fluent = sender.FluentSender(
        tag,
        host=host,
        port=port,
        timeout=10.0,
        nanosecond_precision=True,  # send EventTime, not integer seconds
        buffer_overflow_handler=dropped.append,
    )
    try:
        for i in range(count):
            record = {"seq": i, "msg": f"hello from python fluent-logger, record {i}"}
            # label None: the tag is exactly TAG.
            if not fluent.emit(None, record):
                print(f"send.py: emit of record {i} failed: {fluent.last_error!r}", file=sys.stderr)
                return 1
    finally:
        fluent.close()
    if dropped:
        print(f"send.py: {sum(len(b) for b in dropped)} buffered bytes were never sent", file=sys.stderr)
        return 1
    print(f"sent {count} records with tag {tag} to {host}:{port}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
