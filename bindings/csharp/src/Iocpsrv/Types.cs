using System.Runtime.InteropServices;
using System.Text;

namespace Iocpsrv;

/// <summary>A connection id: 64 bits, never 0, never reused within the life of a server. A
/// stale id gets <see cref="IocpsrvError.NotConnected"/>, never another client's data.</summary>
public readonly record struct ConnectionId(ulong Value)
{
    /// <summary>The id as a decimal number.</summary>
    public override string ToString() => Value.ToString(System.Globalization.CultureInfo.InvariantCulture);
}

/// <summary>The library's error codes (iocpsrv_errno_t): negative, the same on every OS.</summary>
public enum IocpsrvError
{
    /// <summary>IOCPSRV_OK.</summary>
    Ok = 0,
    /// <summary>IOCPSRV_EINVAL: invalid argument.</summary>
    InvalidArgument = -1,
    /// <summary>IOCPSRV_ENOMEM: out of memory.</summary>
    OutOfMemory = -2,
    /// <summary>IOCPSRV_ENOTCONN: unknown, closed or stale connection id.</summary>
    NotConnected = -3,
    /// <summary>IOCPSRV_EQUEUEFULL: the connection's send queue is over its limit.</summary>
    QueueFull = -4,
    /// <summary>IOCPSRV_ETOOBIG: packet larger than the maximum packet size.</summary>
    TooBig = -5,
    /// <summary>IOCPSRV_ESTOPPED: the server is not running.</summary>
    Stopped = -6,
    /// <summary>IOCPSRV_ESTATE: not allowed in the server's current state.</summary>
    State = -7,
    /// <summary>IOCPSRV_EADDRINUSE: address already in use.</summary>
    AddressInUse = -8,
    /// <summary>IOCPSRV_EADDRNOTAVAIL: cannot resolve or bind that address.</summary>
    AddressNotAvailable = -9,
    /// <summary>IOCPSRV_ENOTSUP: not supported in this mode or on this platform.</summary>
    NotSupported = -10,
    /// <summary>IOCPSRV_EBUSY: another thread is already polling this server.</summary>
    Busy = -11,
    /// <summary>IOCPSRV_EUNKNOWNOPT: unknown option.</summary>
    UnknownOption = -12,
    /// <summary>IOCPSRV_ERANGE: option value out of range.</summary>
    Range = -13,
    /// <summary>IOCPSRV_EINCALLBACK: not allowed from inside a callback.</summary>
    InCallback = -14,
    /// <summary>IOCPSRV_ESYSTEM: operating system error.</summary>
    System = -15,
    /// <summary>IOCPSRV_EACCES: permission denied.</summary>
    AccessDenied = -16,
    /// <summary>IOCPSRV_ENOSPACE: a packed poll's buffer is too small for the next event
    /// (the binding grows its buffer and polls again; it does not reach your code).</summary>
    NoSpace = -17,
    /// <summary>IOCPSRV_ELIMIT: no room for another connection (MaxConnections, which counts
    /// both directions, or no descriptor left): <see cref="IocpServer.ConnectAsync"/>.</summary>
    Limit = -18,
}

/// <summary>Why a connection ended (iocpsrv_reason_t).</summary>
public enum DisconnectReason
{
    /// <summary>The client closed its side cleanly.</summary>
    PeerClosed = 1,
    /// <summary>Reset or another socket error.</summary>
    PeerReset = 2,
    /// <summary>A graceful <see cref="IocpServer.Disconnect"/>, or a handler asked to close.</summary>
    LocalClose = 3,
    /// <summary>An abortive <see cref="IocpServer.Disconnect"/>.</summary>
    LocalAbort = 4,
    /// <summary>A packet header above the maximum packet size.</summary>
    ProtocolError = 5,
    /// <summary>No complete packet within the idle timeout.</summary>
    IdleTimeout = 6,
    /// <summary>The server stopped.</summary>
    ServerStopped = 7,
    /// <summary>The engine could not allocate what the connection needed (a packet
    /// buffer, a queued send, a pull event): it was aborted.</summary>
    OutOfMemory = 8,
    /// <summary>An outbound connection (<see cref="IocpServer.ConnectAsync"/>) that never got
    /// established: nothing listens there (the peer answered the SYN with a reset).</summary>
    ConnectRefused = 9,
    /// <summary>An outbound connection that never got established: no route to the network
    /// or host.</summary>
    ConnectUnreachable = 10,
    /// <summary>An outbound connection not established within
    /// <see cref="IocpServerOptions.ConnectTimeout"/> (or the OS gave up first).</summary>
    ConnectTimeout = 11,
    /// <summary>An outbound connection whose host name has no address.</summary>
    NameNotResolved = 12,
    /// <summary>Any other failure of an outbound attempt (no local port or descriptor left
    /// for it, ...).</summary>
    ConnectFailed = 13,
}

/// <summary>Packet framing (iocpsrv_framing_t).</summary>
public enum Framing
{
    /// <summary>4-byte little-endian length, then the payload (default).</summary>
    Length32LittleEndian = 0,
    /// <summary>4-byte big-endian length, then the payload.</summary>
    Length32BigEndian = 1,
    /// <summary>2-byte little-endian length (payloads up to 65535 bytes).</summary>
    Length16LittleEndian = 2,
    /// <summary>2-byte big-endian length (payloads up to 65535 bytes).</summary>
    Length16BigEndian = 3,
    /// <summary>No framing: bytes delivered as they arrive, sends written as given.</summary>
    Raw = 4,
}

/// <summary>The library's options (iocpsrv_option_t), for <see cref="IocpServer.SetOption"/>.</summary>
public enum ServerOption
{
    /// <summary>Worker threads; 0 = 2 x CPUs.</summary>
    WorkerThreads = 1,
    /// <summary>IOCP concurrency (Windows); 0 = CPUs.</summary>
    Concurrency = 2,
    /// <summary>Listen backlog; 0 = SOMAXCONN.</summary>
    ListenBacklog = 3,
    /// <summary>Pre-posted accepts (Windows) / accepts per readiness event (epoll).</summary>
    AcceptsPosted = 4,
    /// <summary>Maximum open connections.</summary>
    MaxConnections = 5,
    /// <summary>Maximum packet payload in bytes.</summary>
    MaxPacketSize = 6,
    /// <summary>A <see cref="Iocpsrv.Framing"/> value.</summary>
    Framing = 7,
    /// <summary>Bytes queued per connection before send reports QueueFull.</summary>
    SendQueueLimit = 8,
    /// <summary>Idle timeout in milliseconds; 0 = off.</summary>
    IdleTimeoutMs = 9,
    /// <summary>TCP keep-alive idle time in milliseconds; 0 = off.</summary>
    KeepAliveMs = 10,
    /// <summary>TCP_NODELAY, 0 or 1.</summary>
    NoDelay = 11,
    /// <summary>SO_RCVBUF; 0 = OS default.</summary>
    ReceiveBufferSize = 12,
    /// <summary>SO_SNDBUF; 0 = OS default.</summary>
    SendBufferSize = 13,
    /// <summary>Bytes read per receive.</summary>
    ReadBufferSize = 14,
    /// <summary>1 = pull mode (events for ReadEventsAsync instead of handlers).</summary>
    PullMode = 15,
    /// <summary>Packets queued in pull mode before the engine stops reading sockets.</summary>
    PullQueueLimit = 16,
    /// <summary>How long a graceful close may wait, in milliseconds.</summary>
    CloseTimeoutMs = 17,
    /// <summary>For a "::" listener: 1 = IPv6 only, 0 = dual stack.</summary>
    IPv6Only = 18,
    /// <summary>Dynamic pool: workers kept; 0 = WorkerThreads. (Library 1.x with the dynamic
    /// pool; older builds report UnknownOption.)</summary>
    PoolMin = 19,
    /// <summary>Dynamic pool: most workers; 0 = no dynamic pool (default).</summary>
    PoolMax = 20,
    /// <summary>Dynamic pool: all workers busy this long (ms) adds one; default 200.</summary>
    PoolBusyMs = 21,
    /// <summary>Dynamic pool: spare workers idle this long (ms) retires one; default 5000.</summary>
    PoolIdleMs = 22,
    /// <summary>Dynamic pool: system CPU percent at or above which the pool does not grow; 0 = no check.</summary>
    PoolCpuHigh = 23,
    /// <summary>Dynamic pool: growth resumes at or below this CPU percent; 0 = PoolCpuHigh.</summary>
    PoolCpuLow = 24,
    /// <summary>Pull mode: the polling thread's sends are written once per batch, at its next poll.</summary>
    PullBatchSends = 25,
    /// <summary>HAProxy PROXY protocol on the listener: a <see cref="ProxyMode"/>.</summary>
    ProxyProtocol = 26,
    /// <summary>1 = SO_REUSEPORT on the listener (Linux); not supported on Windows.</summary>
    ReusePort = 27,
    /// <summary>A text option (<see cref="IocpServer.SetOptionString"/>): the peers whose PROXY
    /// headers are believed, e.g. "10.0.0.0/8, 127.0.0.1, ::1"; default: nobody.</summary>
    ProxyTrusted = 28,
    /// <summary>Connections one client address may hold at once; 0 = no limit (default).
    /// Behind a trusted balancer, the client its PROXY header names is counted.</summary>
    MaxConnectionsPerSource = 29,
    /// <summary>How long a <see cref="IocpServer.ConnectAsync"/> may take, name resolution and
    /// every address tried included, in milliseconds; default 10000; 0 = the OS's own limit.</summary>
    ConnectTimeoutMs = 30,
    /// <summary>Text option (<see cref="IocpServer.SetOptionString"/>): the local address
    /// outbound connections bind to ("127.0.0.2", "::1"); empty (default) = the OS chooses.</summary>
    ConnectSource = 31,
}

/// <summary>Values of <see cref="ServerOption.ProxyProtocol"/> (iocpsrv_proxy_mode_t).</summary>
public enum ProxyMode
{
    /// <summary>No PROXY header expected (default).</summary>
    Off = 0,
    /// <summary>Every connection starts with a PROXY v1 or v2 header.</summary>
    Required = 1,
    /// <summary>A header if the connection starts with one, else a plain client.</summary>
    Optional = 2,
}

/// <summary>Connection flags in <see cref="ConnectionInfo.Flags"/>.</summary>
[Flags]
public enum ConnectionFlags : uint
{
    /// <summary>No flag.</summary>
    None = 0,
    /// <summary>Receive paused by the host.</summary>
    Paused = 0x1,
    /// <summary>A disconnect is under way.</summary>
    Closing = 0x2,
    /// <summary>Made by <see cref="IocpServer.ConnectAsync"/>, not accepted.</summary>
    Outbound = 0x4,
    /// <summary>Outbound and not established yet (<see cref="ConnectionInfo.Peer"/> is then
    /// the target as given, or the address being tried).</summary>
    Connecting = 0x8,
}

/// <summary>iocpsrv_conn_info_t, field for field (192 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct ConnectionInfo
{
    /// <summary>sizeof(iocpsrv_conn_info_t), set before the call.</summary>
    public uint StructSize;
    /// <summary>IOCPSRV_CONN_* flags.</summary>
    public ConnectionFlags Flags;
    /// <summary>The connection's id (raw value).</summary>
    public ulong Id;
    /// <summary>Unix time of the connect in milliseconds.</summary>
    public long ConnectTimeMs;
    /// <summary>Bytes received on the wire, headers included.</summary>
    public ulong BytesIn;
    /// <summary>Bytes handed to the kernel, headers included.</summary>
    public ulong BytesOut;
    /// <summary>Packets received.</summary>
    public ulong PacketsIn;
    /// <summary>Packets queued for sending.</summary>
    public ulong PacketsOut;
    /// <summary>Bytes queued and not yet handed to the kernel.</summary>
    public ulong PendingSendBytes;
    private Bytes64 _peer;
    private Bytes64 _local;

    /// <summary>The peer address, "127.0.0.1:5000" or "[::1]:5000".</summary>
    public readonly string Peer => CString(_peer);
    /// <summary>The local address of the connection.</summary>
    public readonly string Local => CString(_local);
    /// <summary>The connection id.</summary>
    public readonly ConnectionId Connection => new(Id);
    /// <summary>The connect time.</summary>
    public readonly DateTimeOffset ConnectTime => DateTimeOffset.FromUnixTimeMilliseconds(ConnectTimeMs);

    private static string CString(in Bytes64 b)
    {
        ReadOnlySpan<byte> s = b;
        int n = s.IndexOf((byte)0);
        return Encoding.UTF8.GetString(n < 0 ? s : s[..n]);
    }
}

/// <summary>iocpsrv_stats_t, field for field (136 bytes). Totals cover the server's whole
/// life across restarts. A library older than a field leaves it 0 (and reports the size it
/// filled in <see cref="StructSize"/>).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct ServerStats
{
    /// <summary>sizeof(iocpsrv_stats_t), set before the call.</summary>
    public uint StructSize;
    /// <summary>Worker threads running now.</summary>
    public uint Workers;
    /// <summary>Accepted and not yet disconnected.</summary>
    public ulong ConnectionsNow;
    /// <summary>Accepted (connect handler called).</summary>
    public ulong ConnectionsTotal;
    /// <summary>Closed at once: max connections (or max per source) reached.</summary>
    public ulong ConnectionsRefused;
    /// <summary>Refused by the connect handler.</summary>
    public ulong ConnectionsRejected;
    /// <summary>Packets received.</summary>
    public ulong PacketsIn;
    /// <summary>Packets queued by send/broadcast.</summary>
    public ulong PacketsOut;
    /// <summary>Bytes received on the wire, headers included.</summary>
    public ulong BytesIn;
    /// <summary>Bytes handed to the kernel, headers included.</summary>
    public ulong BytesOut;
    /// <summary>Accept failures.</summary>
    public ulong AcceptErrors;
    /// <summary>Connections closed for an oversize header.</summary>
    public ulong ProtocolErrors;
    /// <summary>Sends refused with QueueFull.</summary>
    public ulong SendQueueRejections;
    /// <summary>Connections closed by the idle timeout.</summary>
    public ulong IdleTimeouts;
    /// <summary>Events waiting to be polled now (pull mode).</summary>
    public ulong PullQueueDepth;
    /// <summary>Most workers at once (dynamic pool). 0 from a library without the pool.</summary>
    public uint WorkersPeak;
    /// <summary>Workers not waiting for events now.</summary>
    public uint WorkersBusy;
    /// <summary>Workers added by the dynamic pool.</summary>
    public ulong PoolGrows;
    /// <summary>Workers retired by the dynamic pool.</summary>
    public ulong PoolShrinks;
    /// <summary>Allocations that failed (a send that returned ENOMEM, a connection
    /// aborted with OutOfMemory, or a client closed before the host heard of it).</summary>
    public ulong AllocFailures;
    /// <summary>Of ConnectionsRefused: the client's address already held
    /// MaxConnectionsPerSource connections.</summary>
    public ulong SourceRefusals;
    /// <summary>Of ProtocolErrors: a PROXY connection from a peer not in ProxyTrusted.</summary>
    public ulong ProxyUntrusted;
}

/// <summary>An error reported by the library: its code, the code's name
/// ("IOCPSRV_ENOTCONN") and its text. Thrown as is for what a correct program still meets
/// (NotConnected, QueueFull, OutOfMemory, AddressInUse, AddressNotAvailable, AccessDenied,
/// System); a bad argument, a call in the wrong state or an unsupported one is thrown as
/// <see cref="ArgumentException"/>, <see cref="InvalidOperationException"/> or
/// <see cref="NotSupportedException"/> with this exception as its
/// <see cref="Exception.InnerException"/>.</summary>
public sealed class IocpsrvException : Exception
{
    /// <summary>The error code as an enum.</summary>
    public IocpsrvError Error { get; }
    /// <summary>The raw negative code.</summary>
    public int Code { get; }
    /// <summary>The code's name from iocpsrv_err_name, e.g. "IOCPSRV_ENOTCONN".</summary>
    public string ErrorName { get; }
    /// <summary>The library's text from iocpsrv_strerror.</summary>
    public string ErrorText { get; }

    /// <summary>Wraps a negative code; <paramref name="operation"/> names the call.</summary>
    public IocpsrvException(int code, string? operation = null)
        : this(code, operation, IocpServer.ErrorName(code), IocpServer.ErrorText(code)) { }

    private IocpsrvException(int code, string? operation, string name, string text)
        : base(operation is null ? $"{name}: {text}" : $"{operation}: {name}: {text}")
    {
        Code = code;
        Error = (IocpsrvError)code;
        ErrorName = name;
        ErrorText = text;
    }
}

/// <summary>
/// A <see cref="IocpServer.ConnectAsync"/> attempt ended without becoming an established
/// connection: its task faults with this. <see cref="Reason"/> says why
/// (<see cref="DisconnectReason.ConnectRefused"/>, <see cref="DisconnectReason.ConnectTimeout"/>,
/// <see cref="DisconnectReason.NameNotResolved"/>, <see cref="DisconnectReason.ConnectUnreachable"/>,
/// <see cref="DisconnectReason.ConnectFailed"/>; <see cref="DisconnectReason.ServerStopped"/>
/// when the server stopped first; <see cref="DisconnectReason.LocalClose"/> or
/// <see cref="DisconnectReason.LocalAbort"/> after a <see cref="IocpServer.Disconnect"/> of
/// the attempt, or when the Connected handler refused it, see <see cref="RefusedByHandler"/>).
/// The attempt's Disconnected handler (pull mode: its Disconnected event) has the same
/// reason. An <see cref="IOException"/>, as a failed socket connect is.
/// </summary>
public sealed class IocpsrvConnectException : IOException
{
    internal IocpsrvConnectException(string host, int port, ConnectionId connection, DisconnectReason reason,
        bool refusedByHandler = false, Exception? inner = null)
        : base($"connect to {(host.Contains(':') ? $"[{host}]" : host)}:{port} failed: {Describe(reason, refusedByHandler)}", inner)
    {
        Host = host;
        Port = port;
        Connection = connection;
        Reason = reason;
        RefusedByHandler = refusedByHandler;
    }

    /// <summary>Why the attempt ended.</summary>
    public DisconnectReason Reason { get; }
    /// <summary>The reason's name from iocpsrv_reason_name, e.g. "connect-refused".</summary>
    public string ReasonName => IocpServer.ReasonName(Reason);
    /// <summary>The host as given to ConnectAsync.</summary>
    public string Host { get; }
    /// <summary>The port as given to ConnectAsync.</summary>
    public int Port { get; }
    /// <summary>The attempt's connection id (dead now).</summary>
    public ConnectionId Connection { get; }
    /// <summary>True if the connection was established but the Connected handler refused it
    /// (<see cref="ConnectedEventArgs.Refuse"/>, or it threw: the exception is then the
    /// <see cref="Exception.InnerException"/>); no Disconnected follows then.
    /// <see cref="Reason"/> is <see cref="DisconnectReason.LocalClose"/>.</summary>
    public bool RefusedByHandler { get; }

    private static string Describe(DisconnectReason reason, bool refusedByHandler) => refusedByHandler
        ? "refused by the Connected handler"
        : $"{IocpServer.ReasonName(reason)} ({reason switch
        {
            DisconnectReason.ConnectRefused => "nothing listens there",
            DisconnectReason.ConnectUnreachable => "no route to the network or host",
            DisconnectReason.ConnectTimeout => "not established within the connect timeout",
            DisconnectReason.NameNotResolved => "the host name has no address",
            DisconnectReason.ConnectFailed => "the attempt failed",
            DisconnectReason.ServerStopped => "the server stopped before it was established",
            DisconnectReason.LocalClose or DisconnectReason.LocalAbort => "disconnected before it was established",
            _ => "ended before it was established",
        }})";
}

/// <summary>Handles one packet. <paramref name="payload"/> is valid only during the call:
/// copy what you keep (<c>payload.ToArray()</c>).</summary>
public delegate void PacketHandler(IocpServer server, ConnectionId connection, ReadOnlySpan<byte> payload);

/// <summary>Handles the packets one receive completed for one connection
/// (<see cref="IocpServer.PacketsReceived"/>). <paramref name="packets"/> is valid only during
/// the call: copy what you keep.</summary>
public delegate void PacketBatchHandler(IocpServer server, ConnectionId connection, PacketBatch packets);

/// <summary>The whole packets one receive completed for one connection, in arrival order, as
/// views into the engine's buffers: valid only during the handler's call (iocpsrv's packet-batch
/// callback).</summary>
public readonly unsafe ref struct PacketBatch
{
    private readonly NativeBuf* _packets;

    internal PacketBatch(NativeBuf* packets, int count)
    {
        _packets = packets;
        Count = count;
    }

    /// <summary>How many packets (at least 1).</summary>
    public int Count { get; }

    /// <summary>The payload of packet <paramref name="index"/> (0-based).</summary>
    public ReadOnlySpan<byte> this[int index]
    {
        get
        {
            ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)index, (uint)Count, nameof(index));
            return new ReadOnlySpan<byte>(_packets[index].Base, checked((int)_packets[index].Len));
        }
    }

    /// <summary>The payloads in order.</summary>
    public Enumerator GetEnumerator() => new(this);

    /// <summary>Enumerates a <see cref="PacketBatch"/>'s payloads.</summary>
    public ref struct Enumerator
    {
        private readonly PacketBatch _batch;
        private int _index;

        internal Enumerator(PacketBatch batch)
        {
            _batch = batch;
            _index = -1;
        }

        /// <summary>The current payload.</summary>
        public readonly ReadOnlySpan<byte> Current => _batch[_index];

        /// <summary>Moves to the next payload.</summary>
        public bool MoveNext() => ++_index < _batch.Count;
    }
}

/// <summary>Handles a server event; <paramref name="server"/> is the server that raised it.</summary>
public delegate void ServerEventHandler<in TEventArgs>(IocpServer server, TEventArgs e);

/// <summary>A client connected. Set <see cref="Refuse"/> to close it at once (it then gets no
/// Disconnected).</summary>
public sealed class ConnectedEventArgs : EventArgs
{
    internal ConnectedEventArgs(ConnectionId connection, string peer, bool isOutbound)
    {
        Connection = connection;
        Peer = peer;
        IsOutbound = isOutbound;
    }
    /// <summary>The new connection.</summary>
    public ConnectionId Connection { get; }
    /// <summary>The client's address, "127.0.0.1:5000" or "[::1]:5000" (for an outbound
    /// connection, the address it reached).</summary>
    public string Peer { get; }
    /// <summary>True for a connection made by <see cref="IocpServer.ConnectAsync"/> (its task
    /// completes once this handler has returned without refusing it), false for an accepted
    /// client.</summary>
    public bool IsOutbound { get; }
    /// <summary>Set to true to refuse the client.</summary>
    public bool Refuse { get; set; }
}

/// <summary>A connection ended; its id is dead from now on.</summary>
public sealed class DisconnectedEventArgs : EventArgs
{
    internal DisconnectedEventArgs(ConnectionId connection, DisconnectReason reason)
    {
        Connection = connection;
        Reason = reason;
    }
    /// <summary>The connection that ended.</summary>
    public ConnectionId Connection { get; }
    /// <summary>Why it ended.</summary>
    public DisconnectReason Reason { get; }
}

/// <summary>A connection whose send was refused with QueueFull has room again.</summary>
public sealed class DrainedEventArgs : EventArgs
{
    internal DrainedEventArgs(ConnectionId connection) => Connection = connection;
    /// <summary>The connection.</summary>
    public ConnectionId Connection { get; }
}

/// <summary>Engine diagnostics (accept failures, protocol errors).</summary>
public sealed class LogEventArgs : EventArgs
{
    internal LogEventArgs(int level, string message)
    {
        Level = level;
        Message = message;
    }
    /// <summary>0 error, 1 warning, 2 info, 3 debug.</summary>
    public int Level { get; }
    /// <summary>The text.</summary>
    public string Message { get; }
}

/// <summary>A worker thread started or stopped.</summary>
public sealed class WorkerEventArgs : EventArgs
{
    internal WorkerEventArgs(int worker) => Worker = worker;
    /// <summary>0-based worker index.</summary>
    public int Worker { get; }
}

/// <summary>Which handler threw.</summary>
public enum CallbackKind
{
    /// <summary>The Connected handler (the client is refused).</summary>
    Connected,
    /// <summary>The PacketReceived handler.</summary>
    PacketReceived,
    /// <summary>The Disconnected handler.</summary>
    Disconnected,
    /// <summary>The Drained handler.</summary>
    Drained,
    /// <summary>The Log handler.</summary>
    Log,
    /// <summary>The WorkerStarted handler.</summary>
    WorkerStarted,
    /// <summary>The WorkerStopped handler.</summary>
    WorkerStopped,
    /// <summary>The pull-mode event pump.</summary>
    EventPump,
    /// <summary>The PacketsReceived handler.</summary>
    PacketsReceived,
}

/// <summary>A handler threw. The exception never reaches native code; this event reports it.
/// For Connected, PacketReceived and PacketsReceived, <see cref="CloseConnection"/> (default true) decides
/// whether the connection is refused / closed gracefully.</summary>
public sealed class CallbackExceptionEventArgs : EventArgs
{
    internal CallbackExceptionEventArgs(Exception exception, CallbackKind callback, ConnectionId connection)
    {
        Exception = exception;
        Callback = callback;
        Connection = connection;
    }
    /// <summary>What the handler threw.</summary>
    public Exception Exception { get; }
    /// <summary>Which handler threw.</summary>
    public CallbackKind Callback { get; }
    /// <summary>The connection it ran for (default for worker and log handlers).</summary>
    public ConnectionId Connection { get; }
    /// <summary>Connected: refuse the client; PacketReceived, PacketsReceived: close the
    /// connection gracefully (queued sends are flushed first). Ignored for the other handlers.
    /// Default true.</summary>
    public bool CloseConnection { get; set; } = true;
}

/// <summary>The kind of a pull-mode event.</summary>
public enum ServerEventType
{
    /// <summary>A client connected; <see cref="ServerEvent.Peer"/> is its address.</summary>
    Connected = 1,
    /// <summary>A packet; <see cref="ServerEvent.Payload"/> holds a copy of it.</summary>
    Packet = 2,
    /// <summary>A connection ended; <see cref="ServerEvent.Reason"/> says why.</summary>
    Disconnected = 3,
    /// <summary>A connection whose send was refused with QueueFull has room again.</summary>
    Drained = 4,
}

/// <summary>One pull-mode event. The payload is an array owned by the event (copied out of
/// the engine's memory, which is only valid until the next poll).</summary>
public readonly struct ServerEvent
{
    internal ServerEvent(ServerEventType type, ConnectionId connection, DisconnectReason reason,
        string? peer, byte[] payload)
    {
        Type = type;
        Connection = connection;
        Reason = reason;
        Peer = peer;
        Payload = payload;
    }
    /// <summary>What happened.</summary>
    public ServerEventType Type { get; }
    /// <summary>The connection it happened to.</summary>
    public ConnectionId Connection { get; }
    /// <summary>Disconnected only: why (0 otherwise).</summary>
    public DisconnectReason Reason { get; }
    /// <summary>Connected only: the client's address.</summary>
    public string? Peer { get; }
    /// <summary>Packet only: the payload (an empty array otherwise, and for an empty packet).</summary>
    public byte[] Payload { get; }

    /// <inheritdoc />
    public override string ToString() => Type switch
    {
        ServerEventType.Connected => $"Connected {Connection} from {Peer}",
        ServerEventType.Packet => $"Packet {Connection} ({Payload.Length} bytes)",
        ServerEventType.Disconnected => $"Disconnected {Connection} ({Reason})",
        _ => $"{Type} {Connection}",
    };
}
