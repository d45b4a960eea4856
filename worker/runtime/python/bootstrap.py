"""nubo's Python runtime: the loop between the Lambda Runtime API and a handler.

Started by the worker inside a sandbox as

    /usr/bin/python3 -u /var/runtime/bootstrap.py

with cwd /var/task and the usual Lambda environment (AWS_LAMBDA_RUNTIME_API,
_HANDLER, LAMBDA_TASK_ROOT, AWS_LAMBDA_FUNCTION_*, AWS_LAMBDA_LOG_*).

With NUBO_GENERIC=1 the process is a prewarmed generic sandbox: it loads
everything it can, then long-polls GET /nubo/v1/specialize until the worker
assigns it a function and hands over that function's environment.

Standard library only. Two costs shape the code:

* Cold start. `http.client` pulls in the `email` package (~20 ms on these
  machines) and `logging` another ~8 ms, against ~14 ms for an empty
  interpreter. So the Runtime API client is a small HTTP/1.1 client on
  `_socket`, and `logging` is configured only when something imports it (an
  import hook), exactly as if the handler had been installed beforehand.
* Warm path. next -> handler -> response reuses one keep-alive connection,
  pre-built request bytes and no imports.
"""

import sys
import os
import json
import _socket
from time import time, sleep

RUNTIME_PREFIX = "/2018-06-01/runtime"
_JSON_CT = b"application/json"


# --------------------------------------------------------------------------
# Runtime API client: HTTP/1.1, one persistent connection.
# --------------------------------------------------------------------------

class RuntimeApiError(Exception):
    pass


class _Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case name -> str value
        self.body = body


class RuntimeApiClient:
    """Minimal HTTP/1.1 client for the Runtime API.

    Keeps one connection open; handles Content-Length, chunked and
    read-until-close bodies; reconnects when the connection drops. No socket
    timeout: /next and /nubo/v1/specialize long-poll.
    """

    # Consecutive connection failures are retried with backoff for this long;
    # past it the worker is gone and so should we be.
    GIVE_UP_AFTER_S = 10.0

    def __init__(self, address):
        host, port = _split_host_port(address)
        self._host = host
        self._port = port
        self._host_header = b"Host: " + address.encode("latin-1") + b"\r\n"
        self._sock = None
        self._rest = b""  # bytes received past the end of the last response
        self._next_request = (
            b"GET " + RUNTIME_PREFIX.encode() + b"/invocation/next HTTP/1.1\r\n"
            + self._host_header + b"\r\n"
        )

    # -- connection ---------------------------------------------------------

    def _connect(self):
        err = None
        for family, type_, proto, _, addr in _socket.getaddrinfo(
                self._host, self._port, 0, _socket.SOCK_STREAM):
            sock = _socket.socket(family, type_, proto)
            try:
                sock.connect(addr)
            except OSError as e:
                sock.close()
                err = e
                continue
            if family != _socket.AF_UNIX:
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            self._sock = sock
            self._rest = b""
            return sock
        raise err or OSError("cannot resolve %s" % self._host)

    def close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
        self._rest = b""

    def _roundtrip(self, data, idempotent):
        """Send one request (bytes or a list of byte strings), read its response.

        A keep-alive connection may have been closed by the server while we
        were idle, so a failure is retried on a fresh connection. A POST is
        retried at most once (the worker rejects a second post for the same
        request id anyway); a GET is retried until GIVE_UP_AFTER_S.
        """
        first_failure = None
        delay = 0.0
        attempts = 0
        while True:
            try:
                sock = self._sock or self._connect()
                if data.__class__ is list:
                    for part in data:
                        sock.sendall(part)
                else:
                    sock.sendall(data)
                return self._read_response(sock)
            except (OSError, ValueError, RuntimeApiError) as e:
                # ValueError: a malformed status line, length or chunk size.
                self.close()
                attempts += 1
                now = time()
                if first_failure is None:
                    first_failure = now
                if (not idempotent and attempts > 1) or now - first_failure > self.GIVE_UP_AFTER_S:
                    raise RuntimeApiError("Runtime API %s unreachable: %s" % (self._host, e)) from e
                if delay:
                    sleep(delay)
                delay = min(delay * 2 or 0.01, 0.5)

    def _read_response(self, sock):
        buf = self._rest
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeApiError("connection closed before response")
            buf += chunk
        head = buf[:end].decode("latin-1").split("\r\n")
        buf = buf[end + 4:]
        status_line = head[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
            raise RuntimeApiError("malformed status line %r" % head[0])
        status = int(status_line[1])
        headers = {}
        for line in head[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()

        if 100 <= status < 200:  # interim response: the real one follows
            self._rest = buf
            return self._read_response(sock)

        close = (headers.get("connection", "").lower() == "close"
                 or status_line[0] == "HTTP/1.0")
        length = headers.get("content-length")
        if status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body, buf = self._read_chunked(sock, buf)
        elif length is not None:
            n = int(length)
            if len(buf) < n:
                parts = [buf]
                have = len(buf)
                while have < n:
                    chunk = sock.recv(max(65536, n - have))
                    if not chunk:
                        raise RuntimeApiError("connection closed mid-body")
                    parts.append(chunk)
                    have += len(chunk)
                buf = b"".join(parts)
            body = buf[:n]
            buf = buf[n:]
        else:  # no framing: the body runs until the server closes
            parts = [buf]
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                parts.append(chunk)
            body = b"".join(parts)
            buf = b""
            close = True
        if close:
            self.close()
        else:
            self._rest = buf
        return _Response(status, headers, body)

    @staticmethod
    def _read_chunked(sock, data):
        # bytearray + read position: appending is amortised O(1), so large
        # chunked bodies are not copied over and over.
        buf = bytearray(data)
        pos = 0
        parts = []

        def line_end():
            i = buf.find(b"\r\n", pos)
            while i < 0:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeApiError("connection closed mid-body")
                buf.extend(chunk)
                i = buf.find(b"\r\n", pos)
            return i

        while True:
            i = line_end()
            size = int(bytes(buf[pos:i]).split(b";", 1)[0], 16)
            pos = i + 2
            if size == 0:
                while True:  # optional trailers, then an empty line
                    i = line_end()
                    empty = i == pos
                    pos = i + 2
                    if empty:
                        return b"".join(parts), bytes(buf[pos:])
            while len(buf) < pos + size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeApiError("connection closed mid-body")
                buf.extend(chunk)
            parts.append(bytes(buf[pos:pos + size]))
            pos += size + 2

    # -- requests -------------------------------------------------------------

    def get(self, path):
        req = (b"GET " + path.encode("latin-1") + b" HTTP/1.1\r\n"
               + self._host_header + b"\r\n")
        return self._roundtrip(req, idempotent=True)

    def next_invocation(self):
        return self._roundtrip(self._next_request, idempotent=True)

    def post(self, path, body, extra_headers=b"", content_type=_JSON_CT):
        head = (b"POST " + path + b" HTTP/1.1\r\n" + self._host_header
                + b"Content-Type: " + content_type + b"\r\n"
                + extra_headers
                + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        # One write for small bodies (one TCP segment); no copy for big ones.
        data = head + body if len(body) < 65536 else [head, body]
        return self._roundtrip(data, idempotent=False)


def _split_host_port(address):
    if address.startswith("["):  # [v6]:port
        host, _, port = address[1:].partition("]:")
    else:
        host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError("AWS_LAMBDA_RUNTIME_API must be host:port, got %r" % address)
    return host, int(port)


# --------------------------------------------------------------------------
# Context object, with the attributes of Lambda's Python runtime.
# --------------------------------------------------------------------------

class CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self, identity_id=None, pool_id=None):
        self.cognito_identity_id = identity_id
        self.cognito_identity_pool_id = pool_id

    def __repr__(self):
        return ("CognitoIdentity([cognito_identity_id=%s,cognito_identity_pool_id=%s])"
                % (self.cognito_identity_id, self.cognito_identity_pool_id))


class Client:
    __slots__ = ("installation_id", "app_title", "app_version_name",
                 "app_version_code", "app_package_name")

    def __init__(self, d):
        self.installation_id = d.get("installation_id")
        self.app_title = d.get("app_title")
        self.app_version_name = d.get("app_version_name")
        self.app_version_code = d.get("app_version_code")
        self.app_package_name = d.get("app_package_name")


class ClientContext:
    __slots__ = ("client", "custom", "env")

    def __init__(self, d):
        client = d.get("client")
        self.client = Client(client) if isinstance(client, dict) else None
        self.custom = d.get("custom")
        self.env = d.get("env")


class LambdaContext:
    # Per-function values, set once after (possible) specialisation.
    function_name = None
    function_version = None
    memory_limit_in_mb = None
    log_group_name = None
    log_stream_name = None

    def __init__(self, request_id, deadline_ms, arn, identity, client_context, tenant_id):
        self.aws_request_id = request_id
        self.invoked_function_arn = arn
        self.identity = identity
        self.client_context = client_context
        self.tenant_id = tenant_id
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self):
        remaining = self._deadline_ms - int(time() * 1000)
        return remaining if remaining > 0 else 0

    def log(self, msg):
        sys.stdout.write(str(msg))

    def __repr__(self):
        return (
            "LambdaContext([aws_request_id=%s,log_group_name=%s,log_stream_name=%s,"
            "function_name=%s,memory_limit_in_mb=%s,function_version=%s,"
            "invoked_function_arn=%s,client_context=%s,identity=%s,tenant_id=%s])"
            % (self.aws_request_id, self.log_group_name, self.log_stream_name,
               self.function_name, self.memory_limit_in_mb, self.function_version,
               self.invoked_function_arn, self.client_context, self.identity,
               self.tenant_id))


def _parse_identity(raw):
    if raw:
        try:
            d = json.loads(raw)
            return CognitoIdentity(d.get("cognitoIdentityId"), d.get("cognitoIdentityPoolId"))
        except (ValueError, AttributeError):
            pass
    return CognitoIdentity()


def _parse_client_context(raw):
    if raw:
        try:
            d = json.loads(raw)
            if isinstance(d, dict):
                return ClientContext(d)
        except ValueError:
            pass
    return None


# --------------------------------------------------------------------------
# Errors, reported in the shapes Lambda uses.
# --------------------------------------------------------------------------

class FaultError(Exception):
    """An error of the runtime itself (bad handler, import failure, ...)."""

    def __init__(self, error_type, message, stack_trace=None):
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.stack_trace = stack_trace or []


_traceback = None


def _format_frames(tb):
    # traceback is needed only on error paths; importing it up front would
    # cost every cold start a few milliseconds.
    global _traceback
    if _traceback is None:
        import traceback as _traceback
    return _traceback.format_list(_traceback.extract_tb(tb))


def _user_frames(tb):
    """Stack of an exception raised while importing user code, without the
    runtime's and importlib's frames."""
    here = os.path.abspath(__file__)
    importlib_dir = os.path.dirname(sys.modules["importlib"].__file__) + os.sep
    return [line for line, frame in zip(_format_frames(tb), _traceback.extract_tb(tb))
            if frame.filename != here
            and not frame.filename.startswith("<frozen ")
            and not frame.filename.startswith(importlib_dir)]


def _error_body(error_type, message, stack_trace, request_id=None):
    d = {"errorMessage": message, "errorType": error_type}
    if request_id is not None:
        d["requestId"] = request_id
    d["stackTrace"] = stack_trace
    return json.dumps(d).encode("utf-8")


def _log_error(error_type, message, stack_trace):
    out = "[ERROR] %s: %s" % (error_type, message)
    if stack_trace:
        out += "\nTraceback (most recent call last):\n" + "".join(stack_trace).rstrip("\n")
    sys.stdout.flush()
    sys.stderr.write(out + "\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------
# Logging: Lambda's root handler format, installed when `logging` is imported.
# --------------------------------------------------------------------------

class _State:
    request_id = ""


def _configure_logging(logging):
    fmt = logging.Formatter(
        "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s",
        "%Y-%m-%dT%H:%M:%S")
    fmt.converter = __import__("time").gmtime

    def add_request_id(record):
        record.aws_request_id = _State.request_id
        return True

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(fmt)
    handler.addFilter(add_request_id)
    root = logging.getLogger()
    root.addHandler(handler)
    level = os.environ.get("AWS_LAMBDA_LOG_LEVEL")
    if level and level.upper() in logging._nameToLevel:
        root.setLevel(level.upper())


class _LoggingImportHook:
    """Meta path finder that configures `logging` right after its first import.

    This gives the same observable state as configuring it before user code
    runs (so `logging.basicConfig()` in a handler module is a no-op, as on
    Lambda) without making functions that never log pay for the import.
    """

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != "logging":
            return None
        sys.meta_path.remove(cls)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_configure(module):
            exec_module(module)
            _configure_logging(module)

        loader.exec_module = exec_and_configure
        return spec


def _install_logging():
    if "logging" in sys.modules:
        _configure_logging(sys.modules["logging"])
    else:
        sys.meta_path.insert(0, _LoggingImportHook)


# --------------------------------------------------------------------------
# Init: specialisation, sys.path, handler import.
# --------------------------------------------------------------------------

def _specialize(client):
    """Block until the worker assigns a function; adopt its environment."""
    resp = client.get("/nubo/v1/specialize")
    if resp.status != 200:
        raise RuntimeApiError("specialize returned HTTP %d: %r" % (resp.status, resp.body[:200]))
    env = json.loads(resp.body).get("env") or {}
    env = {str(k): str(v) for k, v in env.items()}
    os.environ.update(env)
    if "TZ" in env:
        __import__("time").tzset()
    return env


def _setup_sys_path(task_root, extra_pythonpath=None):
    runtime_dir = os.path.dirname(os.path.abspath(__file__))
    # sys.path[0] is this script's directory; user code must not see our
    # files as importable modules.
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != runtime_dir]
    entries = [task_root]
    if extra_pythonpath:
        entries += [p for p in extra_pythonpath.split(":") if p]
    for p in reversed(entries):
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)
        # In a generic sandbox the code may have appeared after Python first
        # looked at the directory; forget what the import system cached.
        sys.path_importer_cache.pop(p, None)


def _load_handler(handler_name):
    try:
        modname, fname = handler_name.rsplit(".", 1)
    except ValueError as e:
        raise FaultError("Runtime.MalformedHandlerName",
                         "Bad handler '%s': %s" % (handler_name, e)) from None
    if modname.split(".")[0] in sys.builtin_module_names:
        raise FaultError("Runtime.BuiltInModuleConflict",
                         "Cannot use built-in module %s as a handler module" % modname)
    import importlib
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(modname.replace("/", "."))
    except ImportError as e:
        raise FaultError("Runtime.ImportModuleError",
                         "Unable to import module '%s': %s" % (modname, e)) from None
    except SyntaxError as e:
        trace = ['  File "%s" Line %s\n    %s\n' % (e.filename, e.lineno, (e.text or "").strip())]
        raise FaultError("Runtime.UserCodeSyntaxError",
                         "Syntax error in module '%s': %s" % (modname, e), trace) from None
    try:
        handler = getattr(module, fname)
    except AttributeError:
        raise FaultError("Runtime.HandlerNotFound",
                         "Handler '%s' missing on module '%s'" % (fname, modname)) from None
    return handler


def _init_error(client, error_type, message, stack_trace):
    _log_error(error_type, message, stack_trace)
    body = _error_body(error_type, message, stack_trace)
    try:
        client.post(RUNTIME_PREFIX.encode() + b"/init/error", body,
                    b"Lambda-Runtime-Function-Error-Type: " + error_type.encode("latin-1") + b"\r\n")
    except RuntimeApiError as e:
        sys.stderr.write("[ERROR] could not report init error: %s\n" % e)
    sys.exit(1)


# --------------------------------------------------------------------------
# The invocation loop.
# --------------------------------------------------------------------------

def _json_default(o):
    # Lambda's encoder accepts Decimal (e.g. from DynamoDB); checking the type
    # by name avoids importing decimal in every sandbox.
    if o.__class__.__name__ == "Decimal" and o.__class__.__module__ == "decimal":
        return int(o) if o == o.to_integral_value() else float(o)
    raise TypeError("Object of type %s is not JSON serializable" % o.__class__.__name__)


def _run_loop(client, handler):
    environ = os.environ
    encode = json.JSONEncoder(default=_json_default).encode
    loads = json.loads
    inv_prefix = RUNTIME_PREFIX.encode() + b"/invocation/"
    unhandled = b"Lambda-Runtime-Function-Error-Type: Unhandled\r\n"
    state = _State
    Context = LambdaContext

    while True:
        resp = client.next_invocation()
        if resp.status != 200:
            raise RuntimeApiError("next returned HTTP %d: %r" % (resp.status, resp.body[:200]))
        h = resp.headers
        request_id = h.get("lambda-runtime-aws-request-id", "")
        state.request_id = request_id
        trace_id = h.get("lambda-runtime-trace-id")
        if trace_id is not None:
            environ["_X_AMZN_TRACE_ID"] = trace_id
        elif "_X_AMZN_TRACE_ID" in environ:
            del environ["_X_AMZN_TRACE_ID"]

        cognito = h.get("lambda-runtime-cognito-identity")
        identity = _parse_identity(cognito) if cognito else CognitoIdentity()
        cc = h.get("lambda-runtime-client-context")
        try:
            deadline = int(h.get("lambda-runtime-deadline-ms", 0))
        except ValueError:
            deadline = 0
        context = Context(request_id, deadline, h.get("lambda-runtime-invoked-function-arn"),
                          identity, _parse_client_context(cc) if cc else None,
                          h.get("lambda-runtime-aws-tenant-id"))
        rid = request_id.encode("latin-1")

        body = resp.body
        try:
            event = loads(body) if body else {}
        except ValueError as e:
            _post_fault(client, inv_prefix + rid + b"/error", request_id,
                        "Runtime.UnmarshalError", "Unable to unmarshal input: %s" % e)
            continue

        try:
            result = handler(event, context)
        except Exception as e:
            # Drop this frame: the trace starts in the user's code, as on Lambda.
            trace = _format_frames(e.__traceback__.tb_next)
            error_type = e.__class__.__name__
            try:
                message = str(e)
            except Exception:
                message = "<unprintable %s object>" % error_type
            _log_error(error_type, message, trace)
            client.post(inv_prefix + rid + b"/error",
                        _error_body(error_type, message, trace, request_id), unhandled)
            continue

        try:
            payload = encode(result).encode("utf-8")
        except (TypeError, ValueError, OverflowError, RecursionError) as e:
            _post_fault(client, inv_prefix + rid + b"/error", request_id,
                        "Runtime.MarshalError", "Unable to marshal response: %s" % e)
            continue
        # Log lines printed by the handler must precede the response.
        sys.stdout.flush()
        sys.stderr.flush()
        client.post(inv_prefix + rid + b"/response", payload)


def _post_fault(client, path, request_id, error_type, message):
    _log_error(error_type, message, [])
    client.post(path, _error_body(error_type, message, [], request_id),
                b"Lambda-Runtime-Function-Error-Type: " + error_type.encode("latin-1") + b"\r\n")


def main():
    api = os.environ.get("AWS_LAMBDA_RUNTIME_API")
    if not api:
        sys.stderr.write("[ERROR] AWS_LAMBDA_RUNTIME_API is not set\n")
        sys.exit(1)
    client = RuntimeApiClient(api)

    pythonpath = None
    if os.environ.get("NUBO_GENERIC") == "1":
        # Pay for what every function needs while no request is waiting.
        import logging
        import importlib  # noqa: F401
        _format_frames(None)
        _configure_logging(logging)
        env = _specialize(client)
        pythonpath = env.get("PYTHONPATH")
        if "AWS_LAMBDA_LOG_LEVEL" in env and env["AWS_LAMBDA_LOG_LEVEL"].upper() in logging._nameToLevel:
            logging.getLogger().setLevel(env["AWS_LAMBDA_LOG_LEVEL"].upper())
    else:
        _install_logging()

    environ = os.environ
    task_root = environ.get("LAMBDA_TASK_ROOT") or "/var/task"
    try:
        os.chdir(task_root)
    except OSError:
        pass
    _setup_sys_path(task_root, pythonpath)

    LambdaContext.function_name = environ.get("AWS_LAMBDA_FUNCTION_NAME")
    LambdaContext.function_version = environ.get("AWS_LAMBDA_FUNCTION_VERSION")
    try:
        LambdaContext.memory_limit_in_mb = int(environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "0"))
    except ValueError:
        LambdaContext.memory_limit_in_mb = 0
    LambdaContext.log_group_name = environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
    LambdaContext.log_stream_name = environ.get("AWS_LAMBDA_LOG_STREAM_NAME")

    try:
        handler = _load_handler(environ.get("_HANDLER", ""))
    except FaultError as e:
        _init_error(client, e.error_type, e.message, e.stack_trace)
    except Exception as e:
        # Anything else raised by the module's top-level code is an init
        # error named after the exception, as on Lambda.
        _init_error(client, e.__class__.__name__, str(e), _user_frames(e.__traceback__))

    sys.stdout.flush()
    sys.stderr.flush()
    try:
        _run_loop(client, handler)
    except RuntimeApiError as e:
        sys.stderr.write("[ERROR] %s\n" % e)
        sys.exit(1)


if __name__ == "__main__":
    main()
