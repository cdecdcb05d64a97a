"""Keyword options: names, types, ranges, framing names, and when they may change."""

import pytest

import iocpsrv
from iocpsrv import Framing

from conftest import needs_batch_sends, needs_option


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="no_such_option"):
        iocpsrv.Server(no_such_option=1)
    with pytest.raises(TypeError):
        iocpsrv.aio.Server(workers=2)  # the option is worker_threads


def test_every_option_round_trips():
    values = dict(worker_threads=3, concurrency=2, listen_backlog=64, accepts_posted=8,
                  max_connections=500, max_packet_size=12345, framing=Framing.LEN16_BE,
                  send_queue_limit=1 << 16, idle_timeout_ms=1500, keepalive_ms=30000,
                  nodelay=0, rcvbuf=1 << 16, sndbuf=1 << 17, read_buffer=4096,
                  pull_queue_limit=100, close_timeout_ms=250, ipv6_only=1,
                  pool_min=2, pool_max=6, pool_busy_ms=300, pool_idle_ms=4000,
                  pool_cpu_high=90, pool_cpu_low=70, pull_batch_sends=0,
                  proxy_protocol=iocpsrv.ProxyMode.OPTIONAL, reuseport=1,
                  proxy_trusted="10.1.2.3/8 ::1", max_connections_per_source=4,
                  connect_timeout_ms=750, connect_source="127.0.0.2")
    read_back = dict(proxy_trusted="10.0.0.0/8, ::1/128")  # the library's spelling
    assert set(values) | {"pull_mode"} == set(iocpsrv.OPTIONS)
    srv = iocpsrv.Server()
    try:
        unknown = []
        for name, v in values.items():
            try:
                srv.set_options(**{name: v})
            except iocpsrv.UnknownOption:
                unknown.append(name)  # newer than the loaded library
                continue
            assert srv.get_option(name) == read_back.get(name, v), name
        assert srv.get_option("pull_mode") == 1
        # what the first 1.0 library had must all be there
        assert not set(unknown) & set(list(iocpsrv.OPTIONS)[:18]), unknown
    finally:
        srv.close()


@needs_batch_sends
def test_pull_batch_sends_is_on_by_default():
    for cls in (iocpsrv.Server, iocpsrv.aio.Server):
        srv = cls()
        try:
            assert srv.get_option("pull_batch_sends") == 1
        finally:
            srv.close() if cls is iocpsrv.Server else __import__("asyncio").run(srv.close())


@pytest.mark.parametrize("name, value", [
    ("len32_le", Framing.LEN32_LE), ("len32_be", Framing.LEN32_BE),
    ("len16_le", Framing.LEN16_LE), ("LEN16-BE", Framing.LEN16_BE), ("raw", Framing.RAW),
    (Framing.RAW, Framing.RAW), (2, Framing.LEN16_LE),
])
def test_framing_names(name, value):
    srv = iocpsrv.Server(framing=name)
    try:
        assert srv.get_option("framing") == value
    finally:
        srv.close()


def test_bad_framing_name():
    with pytest.raises(ValueError, match="framing"):
        iocpsrv.Server(framing="len24")
    with pytest.raises(ValueError, match="proxy_protocol"):
        iocpsrv.Server(proxy_protocol="sometimes")


@needs_option("proxy_protocol")
@pytest.mark.parametrize("name, value", [("off", 0), ("required", 1), ("Optional", 2),
                                         (iocpsrv.ProxyMode.REQUIRED, 1), (2, 2)])
def test_proxy_protocol_names(name, value):
    srv = iocpsrv.Server(proxy_protocol=name)
    try:
        assert srv.get_option("proxy_protocol") == value
    finally:
        srv.close()


@needs_option("proxy_trusted")
def test_proxy_trusted_values():
    srv = iocpsrv.Server()
    try:
        assert srv.get_option("proxy_trusted") == ""  # default: nobody is trusted
        srv.set_options(proxy_trusted="127.0.0.1, fd00::/8")
        assert srv.get_option("proxy_trusted") == "127.0.0.1/32, fd00::/8"
        srv.set_options(proxy_trusted=["10.0.0.0/8", "::1"])
        assert srv.get_option("proxy_trusted") == "10.0.0.0/8, ::1/128"
        for bad in ("10.0.0.0/33", "not an address", "1.2.3"):
            with pytest.raises(iocpsrv.InvalidArgument, match="proxy_trusted"):
                srv.set_options(proxy_trusted=bad)
            assert srv.get_option("proxy_trusted") == "10.0.0.0/8, ::1/128"  # unchanged
        with pytest.raises(TypeError, match="proxy_trusted"):
            srv.set_options(proxy_trusted=127)
        srv.set_options(proxy_trusted=None)
        assert srv.get_option("proxy_trusted") == ""
        assert srv.get_option("max_connections_per_source") == 0
        with pytest.raises(iocpsrv.OptionOutOfRange):
            srv.set_options(max_connections_per_source=-1)
    finally:
        srv.close()


@needs_option("connect_source")
def test_connect_options_values():
    for cls in (iocpsrv.Server, iocpsrv.aio.Server):
        srv = cls(connect_timeout_ms=1234, connect_source="::1")
        try:
            assert srv.get_option("connect_timeout_ms") == 1234
            assert srv.get_option("connect_source") == "::1"
            srv.set_options(connect_source="127.0.0.2")
            assert srv.get_option("connect_source") == "127.0.0.2"
            for bad in ("not-an-address", "10.0.0.0/8", "localhost"):
                with pytest.raises(iocpsrv.InvalidArgument, match="connect_source"):
                    srv.set_options(connect_source=bad)
                assert srv.get_option("connect_source") == "127.0.0.2"  # unchanged
            with pytest.raises(TypeError, match="connect_source"):
                srv.set_options(connect_source=["127.0.0.1"])  # one address, not a list
            srv.set_options(connect_source=None)
            assert srv.get_option("connect_source") == ""
            srv.set_options(connect_timeout_ms=0)  # no limit of ours
            assert srv.get_option("connect_timeout_ms") == 0
            with pytest.raises(iocpsrv.OptionOutOfRange):
                srv.set_options(connect_timeout_ms=-1)
        finally:
            srv.close() if cls is iocpsrv.Server else __import__("asyncio").run(srv.close())
    srv = iocpsrv.Server()
    try:
        assert srv.get_option("connect_timeout_ms") == 10000  # the default
        assert srv.get_option("connect_source") == ""
    finally:
        srv.close()


@pytest.mark.parametrize("kw", [
    dict(worker_threads=1.5), dict(max_packet_size="1M"), dict(nodelay=None),
    dict(framing=1.0),
])
def test_wrong_types(kw):
    with pytest.raises(TypeError):
        iocpsrv.Server(**kw)


@pytest.mark.parametrize("kw", [
    dict(worker_threads=-1), dict(worker_threads=100000), dict(max_packet_size=0),
    dict(max_packet_size=(1 << 30) + 1), dict(framing=5), dict(read_buffer=10),
    dict(nodelay=2), dict(max_connections=0), dict(send_queue_limit=1 << 70),
])
def test_out_of_range(kw):
    with pytest.raises(iocpsrv.OptionOutOfRange) as e:
        iocpsrv.Server(**kw)
    assert isinstance(e.value, ValueError)
    assert e.value.code == -13 and e.value.name == "IOCPSRV_ERANGE"
    assert next(iter(kw)) in str(e.value)


def test_pull_mode_is_always_on():
    iocpsrv.Server(pull_mode=1).close()
    iocpsrv.Server(pull_mode=True).close()
    with pytest.raises(ValueError, match="pull mode"):
        iocpsrv.Server(pull_mode=0)


def test_bools_are_ints():
    srv = iocpsrv.Server(nodelay=False, ipv6_only=True)
    try:
        assert srv.get_option("nodelay") == 0
        assert srv.get_option("ipv6_only") == 1
    finally:
        srv.close()


def test_options_change_only_while_stopped():
    srv = iocpsrv.Server(worker_threads=1)
    try:
        srv.set_options(max_packet_size=777)
        assert srv.get_option("max_packet_size") == 777
        srv.start()
        with pytest.raises(iocpsrv.InvalidState):
            srv.set_options(max_packet_size=778)
        srv.stop()
        srv.set_options(max_packet_size=778)
        assert srv.get_option("max_packet_size") == 778
        with pytest.raises(TypeError):
            srv.set_options(bogus=1)
        with pytest.raises(KeyError):
            srv.get_option("bogus")
    finally:
        srv.close()


@pytest.mark.parametrize("kw", [dict(port=-1), dict(port=70000), dict(port="80"),
                                dict(batch_size=0), dict(poll_interval=0)])
def test_bad_constructor_arguments(kw):
    with pytest.raises((ValueError, TypeError)):
        iocpsrv.Server(**kw)


def test_listen_errors():
    with iocpsrv.Server(worker_threads=1) as a:
        b = iocpsrv.Server(port=a.port, worker_threads=1)
        try:
            with pytest.raises(iocpsrv.AddressInUse):
                b.start()
        finally:
            b.close()
    c = iocpsrv.Server("256.1.2.3", worker_threads=1)
    try:
        with pytest.raises(iocpsrv.AddressNotAvailable):
            c.start()
    finally:
        c.close()
