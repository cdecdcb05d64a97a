"""What Python users expect of the binding (issue 19): OSError for OS-level failures,
clean argument errors before any C call, enums that print by name, Ctrl-C that stops
serve_forever() cleanly, complete type hints (mypy --strict) and no stray public
names."""

import __future__
import asyncio
import errno
import importlib
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import textwrap
import types

import pytest

import iocpsrv
import iocpsrv.aio
from iocpsrv import EventType, Framing, ProxyMode, Reason

from conftest import PKG_ROOT, TIMEOUT, Client

# ---- OS-level failures are OSErrors ----------------------------------------------------


def test_address_in_use_is_an_oserror_with_errno():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = iocpsrv.Server("127.0.0.1", port)
        try:
            with pytest.raises(OSError) as info:
                srv.start()
        finally:
            srv.close()
    e = info.value
    assert isinstance(e, iocpsrv.AddressInUse) and isinstance(e, iocpsrv.IocpsrvError)
    assert e.errno == errno.EADDRINUSE
    assert e.strerror == e.message and e.strerror
    assert str(port) in str(e) and "IOCPSRV_EADDRINUSE" in str(e)  # not "[Errno 98] ..."


@pytest.mark.parametrize("cls,base,code", [
    (iocpsrv.AddressInUse, OSError, errno.EADDRINUSE),
    (iocpsrv.AddressNotAvailable, OSError, errno.EADDRNOTAVAIL),
    (iocpsrv.PermissionDenied, PermissionError, errno.EACCES),
    (iocpsrv.NotSupported, OSError, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)),
    (iocpsrv.SystemFailure, OSError, None),
])
def test_os_level_errors_carry_errno_and_survive_pickling(cls, base, code):
    e = iocpsrv.error_from_code(cls.code, "doing x")
    assert type(e) is cls and isinstance(e, base) and isinstance(e, iocpsrv.IocpsrvError)
    assert e.errno == code and e.strerror == e.message
    again = pickle.loads(pickle.dumps(e))
    assert type(again) is cls and again.errno == code and str(again) == str(e)
    assert str(e).startswith("doing x: ")


def test_address_not_available_for_a_foreign_address():
    srv = iocpsrv.Server("192.0.2.1", 0)  # TEST-NET-1: never an address of this host
    try:
        with pytest.raises(OSError) as info:
            srv.start()
    finally:
        srv.close()
    assert isinstance(info.value, iocpsrv.AddressNotAvailable)
    assert info.value.errno == errno.EADDRNOTAVAIL


def test_non_os_errors_are_not_oserrors():
    for cls in (iocpsrv.ConnectionNotFound, iocpsrv.SendQueueFull, iocpsrv.InvalidArgument,
                iocpsrv.OutOfMemory, iocpsrv.ServerStopped, iocpsrv.TooManyConnections):
        assert not issubclass(cls, OSError), cls


# ---- argument errors, before any cffi call -------------------------------------------


def _no_c_send(*args):
    raise AssertionError("the C send was called")


BAD_DATA = ["text", 5, [1, 2], None]
BAD_CONNS = [(-1, ValueError), (0, ValueError), (1 << 64, ValueError), ("1", TypeError),
             (1.5, TypeError), (None, TypeError), (True, TypeError), ([1], TypeError)]


@pytest.mark.parametrize("data", BAD_DATA, ids=lambda d: type(d).__name__)
def test_send_refuses_non_bytes_like_data_with_a_clear_type_error(echo_server, data):
    srv, _rec = echo_server
    srv._send = _no_c_send
    with pytest.raises(TypeError, match=f"^data must be bytes-like, not {type(data).__name__}$"):
        srv.send(12345, data)
    with pytest.raises(TypeError, match="^data must be bytes-like"):
        srv.broadcast(data)
    with pytest.raises(TypeError, match="^data must be bytes-like"):
        srv.sendv(12345, [b"ok", data])


@pytest.mark.parametrize("conn,error", BAD_CONNS, ids=repr)
def test_calls_taking_a_connection_refuse_bad_ids_with_a_clear_error(echo_server, conn,
                                                                      error):
    srv, _rec = echo_server
    srv._send = _no_c_send
    text = "invalid connection id" if error is ValueError else "connection id must be an int"
    calls = [lambda: srv.send(conn, b"x"), lambda: srv.sendv(conn, [b"x"]),
             lambda: srv.disconnect(conn), lambda: srv.pause(conn),
             lambda: srv.resume(conn), lambda: srv.pending(conn), lambda: srv.info(conn)]
    for call in calls:
        with pytest.raises(error, match=text):
            call()


def test_send_in_a_callback_checks_its_arguments_too():
    """The deferred path (on the dispatcher thread, to an open connection) raises the
    same clean errors; an id equal to an open one but not an int (1.0) still reaches
    its connection instead of breaking the batch's hand-over."""
    errors = []

    def on_packet(conn, data):
        for bad in ("text", 7):
            try:
                srv.send(conn, bad)
            except TypeError as e:
                errors.append(str(e))
        srv.send(float(conn), data)

    with iocpsrv.Server(on_packet=on_packet) as srv:
        with Client(srv.port) as c:
            c.send(b"hello")
            assert c.recv() == b"hello"
    assert errors == ["data must be bytes-like, not str", "data must be bytes-like, not int"]


def test_aio_send_checks_its_arguments():
    async def main():
        async with iocpsrv.aio.Server() as srv:
            srv._send = _no_c_send
            with pytest.raises(TypeError, match="^data must be bytes-like, not str$"):
                srv.send(1, "text")
            with pytest.raises(ValueError, match="invalid connection id -1"):
                srv.send(-1, b"x")

    asyncio.run(main())


# ---- enums print by name -----------------------------------------------------------------


@pytest.mark.parametrize("member", [Reason.PEER_CLOSED, Reason.LOCAL_ABORT, EventType.PACKET,
                                    Framing.LEN16_BE, ProxyMode.REQUIRED], ids=str)
def test_enums_print_by_name_and_stay_ints(member, capsys):
    name = f"{type(member).__name__}.{member.name}"
    print(member)
    assert capsys.readouterr().out == name + "\n"
    assert str(member) == f"{member}" == "%s" % member == name
    assert f"{member:>30}" == name.rjust(30)
    assert f"{member:d}" == "%d" % member == str(int(member))
    assert member == int(member) and hash(member) == hash(int(member))


def test_disconnect_reason_prints_by_name(echo_server):
    srv, rec = echo_server
    with Client(srv.port) as c:
        c.send(b"x")
        assert c.recv() == b"x"
    assert rec.wait(lambda r: r.count("disconnect") == 1)
    (reason,) = rec.reasons().values()
    assert str(reason) == "Reason.PEER_CLOSED"


# ---- Ctrl-C stops serve_forever() --------------------------------------------------------

# The echo answers only once the main thread is inside serve_forever(), so the test's
# Ctrl-C, sent after the echo, cannot arrive before serve_forever() is waiting.
SERVE_FOREVER = """
    import sys, threading, time
    import iocpsrv

    def main_thread_in_serve_forever():
        frame = sys._current_frames().get(threading.main_thread().ident)
        while frame is not None and frame.f_code.co_name != "serve_forever":
            frame = frame.f_back
        return frame is not None

    def on_packet(conn, data):
        while not main_thread_in_serve_forever():
            time.sleep(0.01)
        srv.send(conn, data)

    srv = iocpsrv.Server("127.0.0.1", 0, on_packet=on_packet)
    srv.start()
    print(srv.port, flush=True)
    srv.serve_forever()
    print("serve_forever returned, running:", srv.running, flush=True)
    srv.close()
"""


@pytest.mark.parametrize("presses", [1, 2], ids=["ctrl-c", "ctrl-c-twice"])
def test_ctrl_c_stops_serve_forever_and_returns_cleanly(presses):
    """One Ctrl-C stops the server gracefully; a second one, while the stop waits for
    the client to close, does not turn into a traceback either (the stop still ends
    within its timeout)."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SERVE_FOREVER)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": PKG_ROOT})
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(TIMEOUT), "the server printed no port"
        port = int(proc.stdout.readline())
        with Client(port) as c:
            c.send(b"ping")
            assert c.recv() == b"ping"  # serving, with a client connected
            proc.send_signal(signal.SIGINT)
            assert c.closed_by_server()  # the stop closes the connection (our FIN)
            if presses == 2:  # the stop now waits for this client's FIN: impatience
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=TIMEOUT)
        if presses == 1:
            out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "serve_forever returned, running: False" in out


# ---- types and public names ----------------------------------------------------------------


def test_mypy_strict_is_clean_on_the_package():
    """mypy --strict with the settings of pyproject.toml ([tool.mypy]). Debian:
    python3-mypy; scripts/test.sh installs it, and under CI=true its absence fails."""
    try:
        importlib.import_module("mypy")
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("mypy is not installed (Debian: apt-get install python3-mypy)")
        pytest.skip("mypy is not installed (Debian: apt-get install python3-mypy)")
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                        "--cache-dir", os.devnull], cwd=PKG_ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found" in r.stdout


def _public_names(module):
    """Names a user sees in dir(module), less submodules and ``from __future__`` flags
    (compiler directives, not part of any API)."""
    return {name for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
            and not isinstance(value, __future__._Feature)}


@pytest.mark.parametrize("module", [iocpsrv, iocpsrv.aio], ids=lambda m: m.__name__)
def test_public_modules_export_exactly_their_all(module):
    assert sorted(_public_names(module)) == sorted(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None


def test_aio_stray_names_are_gone():
    for name in ("n", "ffi", "log", "timeout_ms", "get_ident", "ServerBase"):
        assert not hasattr(iocpsrv.aio, name), name


def test_event_fields_are_annotated():
    hints = iocpsrv.aio.Event.__annotations__
    assert set(hints) == {"type", "conn", "data", "peer", "reason"}
