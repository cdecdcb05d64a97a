namespace Iocpsrv;

/// <summary>
/// Options for <see cref="IocpServer"/>, one property per IOCPSRV_OPT_*. A property left null
/// keeps the library's default. They are applied when the server is created; change one
/// later (while the server is stopped) with <see cref="IocpServer.SetOption"/>.
/// </summary>
public sealed class IocpServerOptions
{
    /// <summary>IOCPSRV_OPT_WORKER_THREADS: 0 = 2 x CPUs (default); 1..1024.</summary>
    public int? WorkerThreads { get; set; }
    /// <summary>IOCPSRV_OPT_CONCURRENCY: IOCP concurrency, 0 = CPUs (ignored by epoll).</summary>
    public int? Concurrency { get; set; }
    /// <summary>IOCPSRV_OPT_LISTEN_BACKLOG: 0 = SOMAXCONN.</summary>
    public int? ListenBacklog { get; set; }
    /// <summary>IOCPSRV_OPT_ACCEPTS_POSTED: pre-posted AcceptEx (Windows), accepts per
    /// readiness event (epoll); default 32.</summary>
    public int? AcceptsPosted { get; set; }
    /// <summary>IOCPSRV_OPT_MAX_CONNECTIONS: default 10000. Clients past it are closed at once.</summary>
    public int? MaxConnections { get; set; }
    /// <summary>IOCPSRV_OPT_MAX_PACKET_SIZE: payload bytes, default 1 MiB, at most 1 GiB;
    /// applies to received and sent packets.</summary>
    public int? MaxPacketSize { get; set; }
    /// <summary>IOCPSRV_OPT_FRAMING: default 4-byte little-endian length.</summary>
    public Framing? Framing { get; set; }
    /// <summary>IOCPSRV_OPT_SEND_QUEUE_LIMIT: bytes queued per connection before a send is
    /// refused with QueueFull; default 4 MiB.</summary>
    public long? SendQueueLimit { get; set; }
    /// <summary>IOCPSRV_OPT_IDLE_TIMEOUT_MS: close connections that complete no packet for
    /// this long; default off.</summary>
    public TimeSpan? IdleTimeout { get; set; }
    /// <summary>IOCPSRV_OPT_KEEPALIVE_MS: TCP keep-alive idle time; default off.</summary>
    public TimeSpan? KeepAlive { get; set; }
    /// <summary>IOCPSRV_OPT_NODELAY: TCP_NODELAY; default true.</summary>
    public bool? NoDelay { get; set; }
    /// <summary>IOCPSRV_OPT_RCVBUF: SO_RCVBUF; 0 = OS default.</summary>
    public int? ReceiveBufferSize { get; set; }
    /// <summary>IOCPSRV_OPT_SNDBUF: SO_SNDBUF; 0 = OS default.</summary>
    public int? SendBufferSize { get; set; }
    /// <summary>IOCPSRV_OPT_READ_BUFFER: bytes read per receive, default 65536.</summary>
    public int? ReadBufferSize { get; set; }
    /// <summary>IOCPSRV_OPT_PULL_MODE: deliver events through
    /// <see cref="IocpServer.ReadEventsAsync"/> instead of the handlers.</summary>
    public bool PullMode { get; set; }
    /// <summary>IOCPSRV_OPT_PULL_QUEUE_LIMIT: packets queued in pull mode before the engine
    /// stops reading sockets; default 8192.</summary>
    public int? PullQueueLimit { get; set; }
    /// <summary>IOCPSRV_OPT_CLOSE_TIMEOUT_MS: how long a graceful close may wait; default 5 s.</summary>
    public TimeSpan? CloseTimeout { get; set; }
    /// <summary>IOCPSRV_OPT_IPV6_ONLY: for a "::" listener, IPv6 only; default dual stack.</summary>
    public bool? IPv6Only { get; set; }

    /// <summary>IOCPSRV_OPT_POOL_MIN: dynamic pool, workers kept; 0 = WorkerThreads.</summary>
    public int? PoolMin { get; set; }
    /// <summary>IOCPSRV_OPT_POOL_MAX: dynamic pool, most workers; 0 = off (default). Turn it on
    /// when handlers block.</summary>
    public int? PoolMax { get; set; }
    /// <summary>IOCPSRV_OPT_POOL_BUSY_MS: every worker busy this long adds one; default 200 ms.</summary>
    public TimeSpan? PoolBusyTime { get; set; }
    /// <summary>IOCPSRV_OPT_POOL_IDLE_MS: spare workers idle this long retires one; default 5 s.</summary>
    public TimeSpan? PoolIdleTime { get; set; }
    /// <summary>IOCPSRV_OPT_POOL_CPU_HIGH: system CPU percent at or above which the pool does
    /// not grow; 0 = no check (default).</summary>
    public int? PoolCpuHigh { get; set; }
    /// <summary>IOCPSRV_OPT_POOL_CPU_LOW: once vetoed, growth resumes at or below this CPU
    /// percent; 0 = PoolCpuHigh.</summary>
    public int? PoolCpuLow { get; set; }
    /// <summary>IOCPSRV_OPT_PROXY_PROTOCOL: expect HAProxy's PROXY header (v1 or v2); the
    /// Connected handler then sees the real client's address.</summary>
    public ProxyMode? ProxyProtocol { get; set; }
    /// <summary>IOCPSRV_OPT_REUSEPORT: several processes on one port, kernel-balanced (Linux
    /// only; Start fails on Windows).</summary>
    public bool? ReusePort { get; set; }
    /// <summary>IOCPSRV_OPT_PROXY_TRUSTED: the balancers whose PROXY headers are believed,
    /// addresses and CIDR ranges ("10.0.0.0/8, 127.0.0.1, ::1"). Default: nobody, so with
    /// <see cref="ProxyProtocol"/> Required every client is refused until this names the
    /// balancer.</summary>
    public string? ProxyTrusted { get; set; }
    /// <summary>IOCPSRV_OPT_MAX_CONNECTIONS_PER_SOURCE: connections one client address may
    /// hold at once; 0 = no limit (default).</summary>
    public int? MaxConnectionsPerSource { get; set; }

    /// <summary>IOCPSRV_OPT_CONNECT_TIMEOUT_MS: how long a <see cref="IocpServer.ConnectAsync"/>
    /// may take, name resolution and every address tried included, before it fails with
    /// <see cref="DisconnectReason.ConnectTimeout"/> (checked about every 250 ms); default 10 s;
    /// <see cref="TimeSpan.Zero"/> = no limit of the engine's (the OS gives up after its SYN
    /// retries).</summary>
    public TimeSpan? ConnectTimeout { get; set; }
    /// <summary>IOCPSRV_OPT_CONNECT_SOURCE: the local address outbound connections bind to
    /// ("127.0.0.2", "::1"; the OS picks the port). Only targets of its family can be reached.
    /// Default: the OS chooses.</summary>
    public string? ConnectSource { get; set; }

    /// <summary>IOCPSRV_OPT_PULL_BATCH_SENDS: pull mode: sends made by the thread that polls
    /// are written at its next poll, once per connection. Null (default): on in pull mode, where
    /// that thread is the binding's pump and sends only what <see cref="EventBatch.Send"/>
    /// gathered; your own sends are never held back. False writes each gathered send at
    /// once.</summary>
    public bool? PullBatchSends { get; set; }

    /// <summary>Pull mode, <see cref="IocpServer.Events"/> and
    /// <see cref="IocpServer.ReadEventsAsync"/>: how many events the binding's pump may hold
    /// copied (beyond the engine's own queue) before it waits for the reader. Default 1024.
    /// Batches (<see cref="IocpServer.ReadBatchAsync"/>) hold none: they are polled when asked
    /// for. Not a library option.</summary>
    public int PullChannelCapacity { get; set; } = 1024;

    internal IEnumerable<(ServerOption Option, long Value)> Values()
    {
        if (WorkerThreads is { } wt) yield return (ServerOption.WorkerThreads, wt);
        if (Concurrency is { } cc) yield return (ServerOption.Concurrency, cc);
        if (ListenBacklog is { } lb) yield return (ServerOption.ListenBacklog, lb);
        if (AcceptsPosted is { } ap) yield return (ServerOption.AcceptsPosted, ap);
        if (MaxConnections is { } mc) yield return (ServerOption.MaxConnections, mc);
        if (MaxPacketSize is { } mp) yield return (ServerOption.MaxPacketSize, mp);
        if (Framing is { } fr) yield return (ServerOption.Framing, (long)fr);
        if (SendQueueLimit is { } sq) yield return (ServerOption.SendQueueLimit, sq);
        if (IdleTimeout is { } it) yield return (ServerOption.IdleTimeoutMs, Ms(it));
        if (KeepAlive is { } ka) yield return (ServerOption.KeepAliveMs, Ms(ka));
        if (NoDelay is { } nd) yield return (ServerOption.NoDelay, nd ? 1 : 0);
        if (ReceiveBufferSize is { } rb) yield return (ServerOption.ReceiveBufferSize, rb);
        if (SendBufferSize is { } sb) yield return (ServerOption.SendBufferSize, sb);
        if (ReadBufferSize is { } rd) yield return (ServerOption.ReadBufferSize, rd);
        if (PullMode) yield return (ServerOption.PullMode, 1);
        if (PullQueueLimit is { } pq) yield return (ServerOption.PullQueueLimit, pq);
        if (CloseTimeout is { } ct) yield return (ServerOption.CloseTimeoutMs, Ms(ct));
        if (IPv6Only is { } v6) yield return (ServerOption.IPv6Only, v6 ? 1 : 0);
        if (PoolMin is { } pmin) yield return (ServerOption.PoolMin, pmin);
        if (PoolMax is { } pmax) yield return (ServerOption.PoolMax, pmax);
        if (PoolBusyTime is { } pb) yield return (ServerOption.PoolBusyMs, Ms(pb));
        if (PoolIdleTime is { } pi) yield return (ServerOption.PoolIdleMs, Ms(pi));
        if (PoolCpuHigh is { } ch) yield return (ServerOption.PoolCpuHigh, ch);
        if (PoolCpuLow is { } cl) yield return (ServerOption.PoolCpuLow, cl);
        if (ProxyProtocol is { } pp) yield return (ServerOption.ProxyProtocol, (long)pp);
        if (ReusePort is { } rp) yield return (ServerOption.ReusePort, rp ? 1 : 0);
        if (MaxConnectionsPerSource is { } mps) yield return (ServerOption.MaxConnectionsPerSource, mps);
        if (ConnectTimeout is { } cto) yield return (ServerOption.ConnectTimeoutMs, Ms(cto));
        if (PullBatchSends is { } pbs) yield return (ServerOption.PullBatchSends, pbs ? 1 : 0);
    }

    internal IEnumerable<(ServerOption Option, string Value)> StringValues()
    {
        if (ProxyTrusted is { } pt) yield return (ServerOption.ProxyTrusted, pt);
        if (ConnectSource is { } cs) yield return (ServerOption.ConnectSource, cs);
    }

    private static long Ms(TimeSpan t) => (long)Math.Ceiling(t.TotalMilliseconds);
}
