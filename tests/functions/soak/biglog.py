# soak: prints `lines` lines of 1 MB each per call (default 16).
import sys

LINE = "x" * (1 << 20)


def handler(event, context):
    lines = event.get("lines", 16) if isinstance(event, dict) else 16
    for _ in range(lines):
        sys.stdout.write(LINE + "\n")
    sys.stdout.flush()
    return {"printed_mb": lines}
