# soak: prints `lines` lines of 1 MB each per call (default 100).
import sys

LINE = "x" * (1 << 20)


def handler(event, context):
    lines = event.get("lines", 100) if isinstance(event, dict) else 100
    for _ in range(lines):
        sys.stdout.write(LINE + "\n")
    sys.stdout.flush()
    return {"printed_mb": lines}
