"""Probe function for sandbox containment tests.

One module, many handlers (deploy with `_HANDLER=probe.<name>`). Each handler
tries something a sandbox must allow or forbid and returns a JSON dict
describing what it observed, so a test asserts on facts rather than on a crash.
"""

import os
import sys
import signal
import socket
import time

# Chosen once per sandbox (module import): `identity` tells sandboxes apart.
BOOT_ID = os.urandom(8).hex()


def identity(event, context):
    """Which sandbox answered."""
    return {"boot_id": BOOT_ID}


# The Lambda environment variables `echo` reports.
LAMBDA_ENV = [
    "_HANDLER",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_EXECUTION_ENV",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "_X_AMZN_TRACE_ID",
    "TZ",
    "LANG",
    "PATH",
    "LD_LIBRARY_PATH",
    "HOME",
]

# Upper bound on fork attempts: above the 1024-process limit, small enough
# that a sandbox without a limit survives the test.
MAX_FORKS = 1100


def fork_bomb(event, context):
    """Fork until the process limit stops us; then kill every child."""
    limit = min(int(event.get("max", MAX_FORKS)), MAX_FORKS)
    children = []
    error = None
    try:
        for _ in range(limit):
            pid = os.fork()
            if pid == 0:
                # Child: never return into the runtime loop.
                try:
                    while True:
                        time.sleep(3600)
                finally:
                    os._exit(0)
            children.append(pid)
    except OSError as e:
        error = str(e)
    created = len(children)
    # Reap everything so the sandbox can serve the next event.
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for pid in children:
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass
    return {"created": created, "error": error, "attempts_limit": limit}


def mem_hog(event, context):
    """Allocate event['mb'] MB (default 512) in 16 MB chunks, touching every page."""
    target = int(event.get("mb", 512))
    chunk_mb = 16
    page = 4096
    chunks = []
    allocated = 0
    try:
        while allocated < target:
            mb = min(chunk_mb, target - allocated)
            buf = bytearray(mb << 20)
            # Fresh zeroed memory is not resident until written: touch each page.
            buf[::page] = b"\x01" * len(range(0, len(buf), page))
            chunks.append(buf)
            allocated += mb
    except MemoryError:
        return {"allocated_mb": allocated, "error": "MemoryError"}
    return {"allocated_mb": allocated}


def sleep(event, context):
    seconds = float(event["seconds"])
    time.sleep(seconds)
    return {"slept": seconds}


def write_outside_tmp(event, context):
    """Try to create a file in each location; only /tmp should be writable."""
    paths = ["/var/task/x", "/usr/x", "/x", "/etc/x", "/tmp/x"]
    succeeded = []
    errors = {}
    for path in paths:
        try:
            with open(path, "w") as f:
                f.write("x")
            succeeded.append(path)
            errors[path] = None
            if path != "/tmp/x":
                try:
                    os.unlink(path)
                except OSError:
                    pass
        except OSError as e:
            errors[path] = str(e)
    try:
        os.unlink("/tmp/x")
    except OSError:
        pass
    return {"succeeded": succeeded, "errors": errors}


def read_path(event, context):
    """Report whether event['path'] exists and is readable, with its first bytes."""
    path = event["path"]
    nbytes = int(event.get("bytes", 64))
    out = {
        "path": path,
        "exists": os.path.exists(path),
        "is_dir": os.path.isdir(path),
        "readable": False,
        "first_bytes": None,
        "error": None,
    }
    try:
        if out["is_dir"]:
            out["entries"] = sorted(os.listdir(path))
        else:
            with open(path, "rb") as f:
                # latin-1 maps every byte to one character: lossless in JSON.
                out["first_bytes"] = f.read(nbytes).decode("latin-1")
        out["readable"] = True
    except OSError as e:
        out["error"] = str(e)
    try:
        out["root"] = sorted(os.listdir("/"))
    except OSError as e:
        out["root"] = None
        out["root_error"] = str(e)
    return out


def network(event, context):
    """Try an outbound TCP connection to the given (local) address and a
    DNS lookup of a name the sandbox's /etc/hosts does not hold; without a
    network both fail locally. Callers give an address on this machine:
    tests send no traffic elsewhere."""
    host = event["host"]
    port = int(event["port"])
    out = {"host": host, "port": port}
    try:
        s = socket.create_connection((host, port), timeout=1)
        s.close()
        out["connect"] = {"ok": True, "error": None}
    except OSError as e:
        out["connect"] = {"ok": False, "error": str(e)}
    if event.get("dns"):
        try:
            infos = socket.getaddrinfo("nubo-test.invalid", 80)
            out["dns"] = {"ok": True, "addresses": sorted({i[4][0] for i in infos}), "error": None}
        except OSError as e:
            out["dns"] = {"ok": False, "error": str(e)}
    return out


# Connections and listeners kept across invocations of one sandbox.
HELD = []


def _eth0_address():
    import fcntl
    import struct
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # SIOCGIFADDR
        raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", b"eth0"))
        return socket.inet_ntoa(raw[20:24])
    except OSError:
        return None
    finally:
        s.close()


def _try(host, port, timeout=1.0):
    try:
        s = socket.create_connection((host, int(port)), timeout=timeout)
        data = b""
        s.settimeout(timeout)
        try:
            data = s.recv(64)
        except OSError:
            pass
        s.close()
        return {"ok": True, "read": data.decode(errors="replace"), "error": None}
    except OSError as e:
        return {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}


def net(event, context):
    """The egress probe. Event keys (all optional):
    connect: [[host, port], ...] -> results in "connect", one per target;
    udp: [host, port] -> send a datagram, "udp" says whether it came back;
    listen: port -> serve "sandbox\n" on 0.0.0.0:port from a thread that
      outlives the call;
    hold: [host, port, n] -> open n connections and keep them; "held" is how
      many opened, "hold_error" the first refusal;
    download: [host, port, seconds] -> read as fast as possible, "bytes_per_s";
    resolv: true -> the sandbox's /etc/resolv.conf.
    Always: "address", the sandbox's eth0 address (None without egress)."""
    out = {"address": _eth0_address()}
    if "listen" in event:
        import threading
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", int(event["listen"])))
        srv.listen(16)
        HELD.append(srv)

        def serve():
            while True:
                c, _ = srv.accept()
                try:
                    c.sendall(b"sandbox\n")
                finally:
                    c.close()

        threading.Thread(target=serve, daemon=True).start()
    if "connect" in event:
        out["connect"] = [_try(h, p) for h, p in event["connect"]]
    if "udp" in event:
        h, p = event["udp"]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(1)
        try:
            u.sendto(b"ping", (h, int(p)))
            data, _ = u.recvfrom(64)
            out["udp"] = {"ok": data == b"ping", "error": None}
        except OSError as e:
            out["udp"] = {"ok": False, "error": str(e)}
        finally:
            u.close()
    if "hold" in event:
        h, p, n = event["hold"]
        held, err = 0, None
        for _ in range(int(n)):
            try:
                HELD.append(socket.create_connection((h, int(p)), timeout=1))
                held += 1
            except OSError as e:
                err = "%s: %s" % (type(e).__name__, e)
                break
        out["held"] = held
        out["hold_error"] = err
    if "download" in event:
        h, p, secs = event["download"]
        # A generous connect timeout: another sandbox's download may be
        # filling the shared link (its excess is dropped past the link,
        # at the rate limit) and cost this SYN a retransmission.
        s = socket.create_connection((h, int(p)), timeout=10)
        total, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < secs:
            b = s.recv(1 << 16)
            if not b:
                break
            total += len(b)
        s.close()
        out["bytes_per_s"] = total / (time.monotonic() - t0)
    if event.get("resolv"):
        with open("/etc/resolv.conf") as f:
            out["resolv"] = f.read()
    return out


def proc_status(event, context):
    """Privilege-related lines of /proc/self/status, and the uid we run as."""
    wanted = ("NoNewPrivs", "CapEff", "CapPrm", "CapBnd", "Seccomp", "Uid")
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in wanted:
                status[name] = value.strip()
    return {"status": status, "uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid()}


def orphans(event, context):
    """Leaves an orphaned grandchild that exits shortly after; returns the
    zombies in the sandbox once it has, and what runs as PID 1."""
    import time

    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            time.sleep(0.05)
            os._exit(0)
        os._exit(0)
    os.waitpid(pid, 0)
    time.sleep(0.3)
    zombies = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    if f.read().rsplit(") ", 1)[1].startswith("Z"):
                        zombies.append(int(p))
            except OSError:
                pass
    with open("/proc/1/cmdline", "rb") as f:
        pid1 = f.read().split(b"\0")[0].decode()
    return {"zombies": zombies, "pid1": pid1, "me": os.getpid()}


def fail(event, context):
    raise ValueError(event.get("message", "boom"))


def echo(event, context):
    keys = LAMBDA_ENV + [k for k in event.get("env_keys", []) if k not in LAMBDA_ENV] \
        if isinstance(event, dict) else LAMBDA_ENV
    return {
        "event": event,
        "request_id": context.aws_request_id,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "env": {k: os.environ.get(k) for k in keys},
        "cwd": os.getcwd(),
    }


def log(event, context):
    """Print event['lines'] lines (to stdout, or stderr with "stream": "stderr")."""
    lines = int(event.get("lines", 1))
    stream = event.get("stream", "stdout")
    for i in range(lines):
        if stream == "stderr":
            print("log line %d" % i, file=sys.stderr)
        else:
            print("log line %d" % i)
    return {"printed": lines, "stream": stream}


def crash(event, context):
    """Kill the runtime process mid-invocation."""
    os._exit(3)


def record(event, context):
    """Print the event as one JSON line (tests read it back from the log)."""
    import json
    print("EVENT " + json.dumps(event, sort_keys=True))
    return {"recorded": True}


def big_log(event, context):
    """Print event['lines'] lines of event['kb'] KB each (default 200 x 1 MB)."""
    lines = int(event.get("lines", 200))
    line = "x" * (int(event.get("kb", 1024)) * 1024)
    for i in range(lines):
        print("%06d %s" % (i, line))
    print("big_log done")
    return {"printed": lines}


def socket_families(event, context):
    """Open (never connect) a socket of each family; report errno or ok."""
    import errno

    def attempt(make):
        try:
            s = make()
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))
        if isinstance(s, tuple):
            for x in s:
                x.close()
        else:
            s.close()
        return "ok"

    return {
        "AF_VSOCK": attempt(lambda: socket.socket(40, socket.SOCK_STREAM)),
        "AF_NETLINK": attempt(lambda: socket.socket(16, socket.SOCK_RAW, 0)),
        "AF_PACKET": attempt(lambda: socket.socket(17, socket.SOCK_RAW, 0)),
        "AF_INET": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)),
        "AF_INET6": attempt(lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)),
        "AF_UNIX": attempt(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)),
        "socketpair": attempt(lambda: socket.socketpair(socket.AF_UNIX)),
    }


def background_busy(event, context):
    """With "start": MARKER, leave a child process spinning on the CPU
    forever (it outlives the invocation; MARKER is in its command line,
    for the host to find it); return at once either way."""
    marker = event.get("start")
    if marker:
        # The pipe is close-on-exec: its end of file says the child has
        # exec'd (its command line holds the marker) before we return.
        r, w = os.pipe()
        if os.fork() == 0:
            os.close(r)
            os.execv(sys.executable, [sys.executable, "-c", "while True: pass", marker])
        os.close(w)
        os.read(r, 1)
        os.close(r)
    return {"ok": True}


FAILED = {}


def kafka_batch(event, context):
    """A Kafka trigger's target: checks Lambda's event shape and offset
    order, prints one line per batch, `BATCH topic partition first last
    count`. A record whose value is `failN` makes its batch fail N times
    (counted in this sandbox's memory; ordered batches run one at a time,
    so their retries meet the same warm sandbox)."""
    import base64
    assert event["eventSource"] == "SelfManagedKafka", event
    for tp, recs in event["records"].items():
        offsets = [r["offset"] for r in recs]
        assert offsets == sorted(offsets), offsets
        for r in recs:
            v = base64.b64decode(r.get("value", "")).decode()
            if v.startswith("fail"):
                key = (tp, r["offset"])
                if FAILED.get(key, 0) < int(v[4:] or "1"):
                    FAILED[key] = FAILED.get(key, 0) + 1
                    print("FAIL %s %d %d" % (r["topic"], r["partition"], r["offset"]))
                    raise RuntimeError("record %s@%d asked to fail" % (tp, r["offset"]))
        print("BATCH %s %d %d %d %d" % (recs[0]["topic"], recs[0]["partition"], offsets[0], offsets[-1], len(recs)))
    return {"batches": len(event["records"])}
