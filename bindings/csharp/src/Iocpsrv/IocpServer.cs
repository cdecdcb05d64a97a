using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using System.Threading.Channels;

namespace Iocpsrv;

/// <summary>
/// An iocpsrv TCP server: accepts clients, splits their byte streams into length-prefixed
/// packets and raises <see cref="PacketReceived"/> once per packet on the engine's worker
/// threads (or, with <see cref="IocpServerOptions.PullMode"/>, queues events for
/// <see cref="ReadEventsAsync"/>). The same engine opens outbound connections
/// (<see cref="ConnectAsync"/>), served like accepted ones.
/// </summary>
/// <remarks>
/// Threading contract (the library's, see README.md): handlers run on worker threads; for
/// one connection they are serialized and ordered (Connected, packets in arrival order,
/// exactly one Disconnected, last); the payload span is valid only during the call; Send,
/// Disconnect, Refuse, Pause/Resume, GetInfo, Connections and Stats are thread-safe and may be
/// called from any handler; Stop and Dispose may be called from a handler (they then start
/// the stop and finish it on the thread pool). An exception thrown by a handler never
/// reaches native code: it is reported through <see cref="UnhandledCallbackException"/>.
/// <para>Errors: a bad argument throws <see cref="ArgumentException"/> (or one of its
/// subclasses), a call in the wrong state <see cref="InvalidOperationException"/>, an
/// unsupported one <see cref="NotSupportedException"/>, any member but the Stop, Dispose and
/// TrySend families after <see cref="Dispose"/> <see cref="ObjectDisposedException"/>; the
/// rest (a dead connection, a full queue, an address in use, the OS) an
/// <see cref="IocpsrvException"/>. Exceptions mapped from a library code carry that code as
/// an <see cref="IocpsrvException"/> in <see cref="Exception.InnerException"/>.</para>
/// </remarks>
public sealed unsafe partial class IocpServer : IDisposable, IAsyncDisposable
{
    // ---- Static: library version and error text ----

    /// <summary>The major version of the C ABI this binding was written for.</summary>
    public const int AbiMajorVersion = 1;

    private static int s_versionChecked;

    /// <summary>The native library's version (iocpsrv_version).</summary>
    public static Version LibraryVersion
    {
        get
        {
            uint v = Native.iocpsrv_version();
            return new Version((int)(v >> 16), (int)((v >> 8) & 0xff), (int)(v & 0xff));
        }
    }

    /// <summary>The native library's version text, e.g. "1.0.0 epoll".</summary>
    public static string LibraryVersionString => Native.Str(Native.iocpsrv_version_string());

    /// <summary>An error code's name, e.g. "IOCPSRV_ENOTCONN" (iocpsrv_err_name).</summary>
    public static string ErrorName(int code) => Native.Str(Native.iocpsrv_err_name(code));

    /// <summary>An error code's text (iocpsrv_strerror).</summary>
    public static string ErrorText(int code) => Native.Str(Native.iocpsrv_strerror(code));

    /// <summary>A reason's name, e.g. "peer-closed" (iocpsrv_reason_name).</summary>
    public static string ReasonName(DisconnectReason reason) => Native.Str(Native.iocpsrv_reason_name((int)reason));

    private static void EnsureLibrary()
    {
        if (Volatile.Read(ref s_versionChecked) != 0) return;
        uint v = Native.iocpsrv_version();
        if ((v >> 16) != AbiMajorVersion)
        {
            throw new NotSupportedException(
                $"The native iocpsrv library is version {v >> 16}.{(v >> 8) & 0xff}.{v & 0xff}; this binding needs major version {AbiMajorVersion}.");
        }
        Volatile.Write(ref s_versionChecked, 1);
    }

    // ---- Which server's callback this thread is running (0 outside callbacks) ----

    [ThreadStatic] private static nint t_server;

    /// <summary>True while this thread runs a callback of the native server `server`.</summary>
    internal static bool IsOwnCallbackThread(nint server) => server != 0 && t_server == server;

    /// <summary>True while this thread runs one of this server's handlers.</summary>
    public bool IsHandlerThread => t_server == _ptr;

    // ---- Instance state ----

    private readonly ServerHandle _handle;
    private readonly nint _ptr;                 // == _handle's value; used only while it is alive
    private readonly object _gate = new();      // lifecycle; never taken on a handler thread
    private readonly bool _pullMode;
    private readonly int _pullCapacity;
    private int _disposed;
    private volatile bool _running;
    private int _runId;
    private GCHandle _keepAlive;                // strong, while running
    private volatile StrongBox<int>? _handlerStopBox; // a stop started from a handler, not finished
    private int? _handlerStopMs
    {
        get => _handlerStopBox?.Value;
        set => _handlerStopBox = value is int v ? new StrongBox<int>(v) : null;
    }
    private TaskCompletionSource _stopped;

    private PullRun _pull;                      // this run's event stream and its pump (pull mode)
    private readonly RoomWaiters _room = new(); // SendAsync calls waiting for a drain

    /// <summary>Creates a stopped server with the given options (null: the library's defaults).</summary>
    /// <exception cref="IocpsrvException">An option was refused (unknown or out of range).</exception>
    public IocpServer(IocpServerOptions? options = null)
    {
        EnsureLibrary();
        options ??= new IocpServerOptions();
        if (options.PullChannelCapacity < 1)
            throw new ArgumentOutOfRangeException(nameof(options), "PullChannelCapacity must be at least 1.");
        _pullMode = options.PullMode;
        _pullCapacity = options.PullChannelCapacity;
        _pull = new PullRun(this, _pullCapacity);
        _stopped = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _stopped.SetResult();

        _handle = new ServerHandle();
        GCHandle self = GCHandle.Alloc(this, GCHandleType.Weak);
        nint server;
        int rc = Native.iocpsrv_create(&server, GCHandle.ToIntPtr(self));
        if (rc < 0)
        {
            self.Free();
            throw Errors.For(rc, "iocpsrv_create");
        }
        _handle.UserHandle = self;
        _handle.Attach(server);
        _ptr = server;
        try
        {
            Check(Native.iocpsrv_set_connect_cb(server, &OnConnect), "iocpsrv_set_connect_cb");
            Check(Native.iocpsrv_set_packet_cb(server, &OnPacket), "iocpsrv_set_packet_cb");
            Check(Native.iocpsrv_set_disconnect_cb(server, &OnDisconnect), "iocpsrv_set_disconnect_cb");
            Check(Native.iocpsrv_set_drain_cb(server, &OnDrain), "iocpsrv_set_drain_cb");
            Check(Native.iocpsrv_set_worker_hooks(server, &OnWorkerStart, &OnWorkerStop), "iocpsrv_set_worker_hooks");
            Check(Native.iocpsrv_set_log_cb(server, &OnLog), "iocpsrv_set_log_cb");
            foreach (var (option, value) in options.Values())
                Check(Native.iocpsrv_set_option(server, (int)option, value), $"iocpsrv_set_option({option}, {value})", nameof(options));
            // The pump hands the batch readers' gathered sends over right before it polls: with
            // this the engine writes them at that poll, once per connection. No code of the
            // user's runs on the pump, so no other send is held back by it.
            if (_pullMode && options.PullBatchSends is null)
                Check(Native.iocpsrv_set_option(server, (int)ServerOption.PullBatchSends, 1), "iocpsrv_set_option(PullBatchSends, 1)");
            foreach (var (option, value) in options.StringValues())
                Check(SetOptionStr(server, option, value), $"iocpsrv_set_option_str({option}, \"{value}\")", nameof(options));
        }
        catch
        {
            _handle.Dispose();
            throw;
        }
    }

    // ---- Handlers (callback mode) ----

    /// <summary>A client connected, or an outbound connection (<see cref="ConnectAsync"/>,
    /// <see cref="ConnectedEventArgs.IsOutbound"/>) got established (worker thread). Set
    /// <see cref="ConnectedEventArgs.Refuse"/> to refuse it. Not raised in pull mode.</summary>
    public event ServerEventHandler<ConnectedEventArgs>? Connected;

    /// <summary>One packet (worker thread); the span is valid only during the call. Not raised
    /// in pull mode.</summary>
    public event PacketHandler? PacketReceived;

    /// <summary>Opt-in alternative to <see cref="PacketReceived"/>: the packets one receive
    /// completed for one connection, in one call (worker thread), which saves a transition from
    /// native code per packet. Chosen at <see cref="Start"/>: with a handler here, packets come
    /// this way, and <see cref="PacketReceived"/> must have none. Pause and Disconnect called
    /// from it apply from the next batch (the packets of this one are already handed over).
    /// Not raised in pull mode.</summary>
    public event PacketBatchHandler? PacketsReceived;

    /// <summary>A connection ended, exactly once per accepted connection and per
    /// <see cref="ConnectAsync"/> attempt, after its last packet (worker thread); an attempt
    /// that never got established gets only this, with its reason. Not raised in pull
    /// mode.</summary>
    public event ServerEventHandler<DisconnectedEventArgs>? Disconnected;

    /// <summary>After a send was refused with QueueFull, the queue fell below half its limit
    /// and has room for the largest packet refused (resending it succeeds).</summary>
    public event ServerEventHandler<DrainedEventArgs>? Drained;

    /// <summary>Engine diagnostics (any thread, possibly concurrently; keep it short).</summary>
    public event ServerEventHandler<LogEventArgs>? Log;

    /// <summary>A worker thread started, before any handler runs on it.</summary>
    public event ServerEventHandler<WorkerEventArgs>? WorkerStarted;

    /// <summary>A worker thread stops, after its last handler.</summary>
    public event ServerEventHandler<WorkerEventArgs>? WorkerStopped;

    /// <summary>A handler threw. Raised on the thread that ran it. Without a subscriber the
    /// exception is written to standard error. Exceptions never reach native code.</summary>
    public event ServerEventHandler<CallbackExceptionEventArgs>? UnhandledCallbackException;

    // ---- Properties ----

    /// <summary>True from a successful <see cref="Start"/> until its stop has finished.</summary>
    public bool IsRunning => _running;

    /// <summary>True once <see cref="Dispose"/> was called.</summary>
    public bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    /// <summary>True if the server was created in pull mode.</summary>
    public bool IsPullMode => _pullMode;

    /// <summary>Completes when the current (or last) run has fully stopped: every handler has
    /// returned and none will run. Also completes after a stop or dispose started from a
    /// handler has been finished on the thread pool.</summary>
    public Task WhenStopped => Volatile.Read(ref _stopped).Task;

    /// <summary>The bound port while running (or of the last run).</summary>
    public int Port
    {
        get
        {
            using var r = Use();
            return Check(Native.iocpsrv_port(r.P), "iocpsrv_port");
        }
    }

    /// <summary>Server statistics (iocpsrv_stats).</summary>
    public ServerStats Stats
    {
        get
        {
            ServerStats s = default;
            s.StructSize = (uint)sizeof(ServerStats);
            using var r = Use();
            Check(Native.iocpsrv_stats(r.P, &s), "iocpsrv_stats");
            return s;
        }
    }

    /// <summary>The number of open connections.</summary>
    public int ConnectionCount
    {
        get
        {
            using var r = Use();
            return Check(Native.iocpsrv_connections(r.P, null, 0), "iocpsrv_connections");
        }
    }

    /// <summary>A snapshot of the open connections' ids.</summary>
    public IReadOnlyList<ConnectionId> Connections
    {
        get
        {
            using var r = Use();
            int n = Check(Native.iocpsrv_connections(r.P, null, 0), "iocpsrv_connections");
            while (true)
            {
                var ids = new ulong[n + 16];
                int m;
                fixed (ulong* p = ids) m = Check(Native.iocpsrv_connections(r.P, p, ids.Length), "iocpsrv_connections");
                if (m <= ids.Length)
                {
                    var list = new ConnectionId[m];
                    for (int i = 0; i < m; i++) list[i] = new ConnectionId(ids[i]);
                    return list;
                }
                n = m;
            }
        }
    }

    // ---- Options ----

    /// <summary>Sets a library option; only while the server is stopped.</summary>
    public void SetOption(ServerOption option, long value)
    {
        using var r = Use();
        int rc = Native.iocpsrv_set_option(r.P, (int)option, value);
        Check(rc, $"iocpsrv_set_option({option}, {value})", rc == (int)IocpsrvError.UnknownOption ? nameof(option) : nameof(value));
    }

    /// <summary>Reads a library option.</summary>
    public long GetOption(ServerOption option)
    {
        long v;
        using var r = Use();
        Check(Native.iocpsrv_get_option(r.P, (int)option, &v), $"iocpsrv_get_option({option})", nameof(option));
        return v;
    }

    /// <summary>Sets a text option (<see cref="ServerOption.ProxyTrusted"/>); null or "" clears
    /// it. Only while the server is stopped; a malformed value throws (InvalidArgument) and
    /// leaves the option as it was.</summary>
    public void SetOptionString(ServerOption option, string? value)
    {
        using var r = Use();
        int rc = SetOptionStr(r.P, option, value);
        Check(rc, $"iocpsrv_set_option_str({option}, \"{value}\")", rc == (int)IocpsrvError.UnknownOption ? nameof(option) : nameof(value));
    }

    /// <summary>Reads a text option in the library's spelling ("10.0.0.0/8, ::1/128").</summary>
    public string GetOptionString(ServerOption option)
    {
        using var r = Use();
        long n = Native.iocpsrv_get_option_str(r.P, (int)option, null, 0);
        Check((int)Math.Max(n, int.MinValue), $"iocpsrv_get_option_str({option})", nameof(option));
        var buf = new byte[n + 1];
        fixed (byte* p = buf)
        {
            n = Native.iocpsrv_get_option_str(r.P, (int)option, p, (nuint)buf.Length);
            Check((int)Math.Max(n, int.MinValue), $"iocpsrv_get_option_str({option})", nameof(option));
            return System.Text.Encoding.UTF8.GetString(buf, 0, (int)Math.Min(n, buf.Length - 1));
        }
    }

    private static int SetOptionStr(nint server, ServerOption option, string? value)
    {
        if (value is null) return Native.iocpsrv_set_option_str(server, (int)option, null);
        var bytes = new byte[System.Text.Encoding.UTF8.GetByteCount(value) + 1];
        System.Text.Encoding.UTF8.GetBytes(value, 0, value.Length, bytes, 0);
        fixed (byte* p = bytes) return Native.iocpsrv_set_option_str(server, (int)option, p);
    }

    // ---- Lifecycle ----

    /// <summary>Binds and starts serving. <paramref name="host"/>: "127.0.0.1", "::1", "::" (all
    /// interfaces, dual stack) or null/"" (all interfaces); <paramref name="port"/> 0 picks a
    /// free port (read it from <see cref="Port"/>). Clients are served when this returns.
    /// Not from a handler.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="port"/> is not 0..65535.</exception>
    /// <exception cref="InvalidOperationException">Already running, or called from a handler.</exception>
    /// <exception cref="NotSupportedException">An option this platform lacks (ReusePort on Windows).</exception>
    /// <exception cref="IocpsrvException">AddressInUse, AddressNotAvailable, AccessDenied, System.</exception>
    public void Start(string? host = "127.0.0.1", int port = 0)
    {
        ThrowIfDisposed();
        ArgumentOutOfRangeException.ThrowIfNegative(port);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(port, 65535);
        StartCore(listen: true, host, port);
    }

    // Start and StartWithoutListener: iocpsrv_listen or iocpsrv_start.
    private void StartCore(bool listen, string? host, int port)
    {
        string operation = listen ? $"iocpsrv_listen({host ?? "null"}, {port})" : "iocpsrv_start";
        if (IsHandlerThread) throw new InvalidOperationException("Start cannot be called from a handler of the same server.");
        lock (_gate)
        {
            ThrowIfDisposed();
            if (_running && _handlerStopMs is int pendingMs)
            {
                // Stopped from a handler and not finished yet: finish it now (a started run's
                // bookkeeping must end before the next run's begins).
                Native.iocpsrv_stop(_ptr, pendingMs);
                OnStopped();
            }
            // Running: the library would say State, but only after the pull stream of the run
            // had been replaced below.
            if (_running) throw Errors.For((int)IocpsrvError.State, operation);
            if (_pullMode) ResetPump();
            else ChoosePacketDelivery();
            byte[]? hostBytes = null;
            if (listen && host is not null)
            {
                hostBytes = new byte[Encoding.UTF8.GetByteCount(host) + 1];
                Encoding.UTF8.GetBytes(host, hostBytes);
            }
            // Mark the run as started before listen: a handler may call Stop as soon as the
            // first client connects, before iocpsrv_listen has even returned here.
            var previous = _stopped;
            _keepAlive = GCHandle.Alloc(this);
            _runId++;
            Volatile.Write(ref _stopped, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
            _running = true;
            int rc;
            using (var r = Use())
            {
                if (!listen) rc = Native.iocpsrv_start(r.P);
                else fixed (byte* h = hostBytes) rc = Native.iocpsrv_listen(r.P, h, port);
            }
            if (rc < 0)
            {
                _running = false;
                _keepAlive.Free();
                Volatile.Write(ref _stopped, previous);
                throw Errors.For(rc, operation, listen ? nameof(host) : null);
            }
            if (_pullMode) StartPump();
        }
    }

    // Before listen: one call per packet (PacketReceived) or per receive (PacketsReceived).
    private void ChoosePacketDelivery()
    {
        bool batches = PacketsReceived is not null;
        if (batches && PacketReceived is not null)
            throw new InvalidOperationException("PacketReceived and PacketsReceived both have handlers: a server delivers its packets one way.");
        delegate* unmanaged[Cdecl]<nint, ulong, nint, NativeBuf*, int, int> callback = batches ? &OnPacketBatch : null;
        Check(Native.iocpsrv_set_packet_batch_cb(_ptr, callback), "iocpsrv_set_packet_batch_cb");
    }

    /// <summary>The graceful stop's time limit used by <see cref="Stop()"/>,
    /// <see cref="StopAsync(CancellationToken)"/> and <see cref="DisposeAsync"/>: 5 seconds.</summary>
    public static readonly TimeSpan DefaultStopTimeout = TimeSpan.FromSeconds(5);

    /// <summary>Stops gracefully with a 5 second limit; see <see cref="Stop(TimeSpan)"/>.</summary>
    public void Stop() => Stop(DefaultStopTimeout);

    /// <summary>
    /// Stops: no new clients; every connection closes gracefully (queued sends written) for up
    /// to <paramref name="timeout"/>, after which the rest are reset
    /// (<see cref="TimeSpan.Zero"/>: reset at once; <see cref="Timeout.InfiniteTimeSpan"/>: no
    /// limit). Each connection gets its Disconnected (reason ServerStopped). From a thread
    /// that is not one of this server's handlers, returns when no handler runs or will run.
    /// From a handler it starts the stop and returns at once; the thread pool finishes it
    /// (await <see cref="WhenStopped"/>). Does nothing if the server is not running or was
    /// disposed.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative
    /// (other than <see cref="Timeout.InfiniteTimeSpan"/>).</exception>
    public void Stop(TimeSpan timeout) => StopMs(ToTimeoutMs(timeout));

    private void StopMs(int ms)
    {
        if (IsDisposed) return;
        if (IsHandlerThread)
        {
            if (!_running) return;
            _handlerStopMs ??= ms;
            Native.iocpsrv_stop(_ptr, ms); // starts the stop and returns (we are on a worker)
            int run = Volatile.Read(ref _runId);
            ThreadPool.UnsafeQueueUserWorkItem(static s =>
            {
                var (self, run, ms) = ((IocpServer, int, int))s!;
                self.FinishStop(run, ms);
            }, (this, run, ms));
            return;
        }
        lock (_gate)
        {
            if (IsDisposed || !_running) return;
            HandOverGatheredSends();
            Native.iocpsrv_stop(_ptr, ms);
            OnStopped();
        }
    }

    // Before a stop: the sends EventBatch.Send gathered are queued, so that a graceful stop
    // writes them.
    private void HandOverGatheredSends()
    {
        if (!_pullMode) return;
        try
        {
            _pull.Batches.HandOverNow(_ptr);
        }
        catch (Exception ex)
        {
            Report(ex, CallbackKind.EventPump, 0);
        }
    }

    private void FinishStop(int run, int ms)
    {
        lock (_gate)
        {
            if (IsDisposed || !_running || _runId != run) return;
            HandOverGatheredSends();
            Native.iocpsrv_stop(_ptr, ms);
            OnStopped();
        }
    }

    // Called under _gate once the native stop has finished (no handler runs or will run).
    private void OnStopped()
    {
        _running = false;
        _handlerStopMs = null;
        if (_keepAlive.IsAllocated) _keepAlive.Free();
        if (_room.Any) _room.FailAll(Errors.For((int)IocpsrvError.Stopped, "SendAsync"));
        EndCallbackAttempts();
        _stopped.TrySetResult();
    }

    /// <summary>Stops gracefully without blocking the caller, with the
    /// <see cref="DefaultStopTimeout"/> limit; see <see cref="StopAsync(TimeSpan, CancellationToken)"/>.</summary>
    public Task StopAsync(CancellationToken cancellationToken = default) => StopAsync(DefaultStopTimeout, cancellationToken);

    /// <summary>
    /// The asynchronous <see cref="Stop(TimeSpan)"/>: no new clients; every connection closes
    /// gracefully (queued sends written) for up to <paramref name="timeout"/>, then the rest
    /// are reset. The task completes when the server has stopped: no handler runs or will run
    /// (from a handler, when the thread pool has finished the stop it started). The native
    /// stop runs on a thread of its own, never on the caller's.
    /// <para>Cancelling <paramref name="cancellationToken"/> cancels the graceful part, as
    /// <c>IHostedService.StopAsync</c> does: the connections still closing are reset at once
    /// (each still gets its one Disconnected, reason ServerStopped) and the task completes
    /// normally once the server has stopped; it never throws
    /// <see cref="OperationCanceledException"/>. A token already cancelled makes the stop
    /// abortive from the start.</para>
    /// Completes at once if the server is not running or was disposed.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="timeout"/> is negative
    /// (other than <see cref="Timeout.InfiniteTimeSpan"/>).</exception>
    public Task StopAsync(TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        int ms = ToTimeoutMs(timeout);
        if (cancellationToken.IsCancellationRequested) ms = 0;
        if (IsDisposed) return Task.CompletedTask;
        Task stop;
        if (IsHandlerThread)
        {
            StopMs(ms); // starts the stop; the thread pool finishes it
            stop = WhenStopped;
        }
        else
        {
            if (!_running) return WhenStopped;
            stop = Task.Factory.StartNew(static s =>
            {
                var (self, ms) = ((IocpServer, int))s!;
                self.StopMs(ms);
            }, (this, ms), CancellationToken.None,
                TaskCreationOptions.LongRunning | TaskCreationOptions.DenyChildAttach, TaskScheduler.Default);
        }
        if (ms == 0 || !cancellationToken.CanBeCanceled || stop.IsCompleted) return stop;
        return ResetOnCancel(stop, cancellationToken);
    }

    private void ResetClosingConnections()
    {
        bool added = false;
        ulong* ids = null;
        try
        {
            _handle.DangerousAddRef(ref added);
            int n = Native.iocpsrv_connections(_ptr, null, 0);
            if (n <= 0) return;
            n += 16;
            ids = (ulong*)NativeMemory.Alloc((nuint)n, sizeof(ulong));
            int m = Math.Min(Native.iocpsrv_connections(_ptr, ids, n), n);
            ConnectionInfo info = default;
            for (int i = 0; i < m; i++)
            {
                info.StructSize = (uint)sizeof(ConnectionInfo);
                if (Native.iocpsrv_conn_info(_ptr, ids[i], &info) == 0 && (info.Flags & ConnectionFlags.Closing) != 0)
                    Native.iocpsrv_disconnect(_ptr, ids[i], Native.CloseAbort);
            }
        }
        catch (ObjectDisposedException)
        {
            // destroyed meanwhile: nothing left to reset
        }
        finally
        {
            if (ids != null) NativeMemory.Free(ids);
            if (added) _handle.DangerousRelease();
        }
    }

    /// <summary>
    /// Stops the server abortively (if running) and frees it. From one of this server's
    /// handlers the stop starts at once and the destroy runs on the thread pool (await
    /// <see cref="WhenStopped"/>). In pull mode, events not yet read may be lost: Stop first
    /// and read to the end to get them all. Afterwards every member but Stop, StopAsync,
    /// Dispose, DisposeAsync, TrySend and the Is*/WhenStopped properties throws
    /// <see cref="ObjectDisposedException"/>.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        if (IsHandlerThread)
        {
            if (_running) Native.iocpsrv_stop(_ptr, 0);
            ThreadPool.UnsafeQueueUserWorkItem(static s => ((IocpServer)s!).DisposeCore(), this);
            return;
        }
        DisposeCore();
    }

    private void DisposeCore()
    {
        lock (_gate)
        {
            if (_running) Native.iocpsrv_stop(_ptr, 0);
            _pull.StopPump();
            _pull.Complete();
            if (_room.Any) _room.FailAll(new ObjectDisposedException(nameof(IocpServer)));
            _handle.Dispose(); // iocpsrv_destroy, then the user GCHandle is freed
            OnStopped();
        }
    }

    // ---- Sending and connection control ----

    /// <summary>Queues one packet (copied and framed). Never blocks on the network.</summary>
    /// <exception cref="IocpsrvException">NotConnected (unknown, closed or stale id),
    /// QueueFull (drop, retry after <see cref="Drained"/>, or disconnect), OutOfMemory.</exception>
    /// <exception cref="ArgumentException">The payload is larger than MaxPacketSize (TooBig).</exception>
    /// <exception cref="InvalidOperationException">The server is not running (Stopped).</exception>
    /// <exception cref="ObjectDisposedException">The server was disposed.</exception>
    public void Send(ConnectionId connection, ReadOnlySpan<byte> payload)
    {
        ThrowIfDisposed();
        int rc = SendCore(connection, payload);
        if (rc < 0) throw SendError(rc, "iocpsrv_send", nameof(payload));
    }

    /// <summary>Queues one packet whose payload is <paramref name="first"/> followed by
    /// <paramref name="second"/> (a header and a body) without joining them first. Throws as
    /// <see cref="Send(ConnectionId, ReadOnlySpan{byte})"/> does.</summary>
    public void Send(ConnectionId connection, ReadOnlySpan<byte> first, ReadOnlySpan<byte> second)
    {
        ThrowIfDisposed();
        int rc = SendV(connection, first, second);
        if (rc < 0) throw SendError(rc, "iocpsrv_sendv", nameof(second));
    }

    private Exception SendError(int rc, string operation, string paramName)
    {
        if (IsDisposed) return new ObjectDisposedException(nameof(IocpServer));
        return Errors.For(rc, operation, paramName);
    }

    /// <summary>Like <see cref="Send(ConnectionId, ReadOnlySpan{byte})"/>, for hot paths:
    /// never throws; false if the packet was not queued (a dead connection, a full queue, a
    /// packet too big, a stopped or disposed server).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TrySend(ConnectionId connection, ReadOnlySpan<byte> payload) => SendCore(connection, payload) == 0;

    /// <summary>Like <see cref="TrySend(ConnectionId, ReadOnlySpan{byte})"/>, and says why a
    /// packet was not queued: <paramref name="error"/> is <see cref="IocpsrvError.Ok"/> when
    /// it was, else <see cref="IocpsrvError.NotConnected"/>, <see cref="IocpsrvError.QueueFull"/>
    /// (wait for <see cref="Drained"/>), <see cref="IocpsrvError.TooBig"/>,
    /// <see cref="IocpsrvError.OutOfMemory"/> or <see cref="IocpsrvError.Stopped"/> (also
    /// after Dispose).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TrySend(ConnectionId connection, ReadOnlySpan<byte> payload, out IocpsrvError error)
    {
        int rc = SendCore(connection, payload);
        error = (IocpsrvError)rc;
        return rc == 0;
    }

    /// <summary>Gathered variant of <see cref="TrySend(ConnectionId, ReadOnlySpan{byte})"/>.</summary>
    public bool TrySend(ConnectionId connection, ReadOnlySpan<byte> first, ReadOnlySpan<byte> second)
        => SendV(connection, first, second) == 0;

    /// <summary>Gathered variant of <see cref="TrySend(ConnectionId, ReadOnlySpan{byte}, out IocpsrvError)"/>.</summary>
    public bool TrySend(ConnectionId connection, ReadOnlySpan<byte> first, ReadOnlySpan<byte> second, out IocpsrvError error)
    {
        int rc = SendV(connection, first, second);
        error = (IocpsrvError)rc;
        return rc == 0;
    }

    // The library's code for one send: 0 or a negative IocpsrvError (Stopped once disposed).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int SendCore(ConnectionId connection, ReadOnlySpan<byte> payload)
    {
        fixed (byte* p = payload)
        {
            // A zero-length span may have a null address; the library wants non-NULL data.
            byte dummy = 0;
            byte* data = p != null ? p : &dummy;
            if (t_server == _ptr) return Native.iocpsrv_send(_ptr, connection.Value, data, (nuint)payload.Length);
            return SendSlow(connection.Value, data, (nuint)payload.Length);
        }
    }

    private int SendSlow(ulong id, byte* data, nuint len)
    {
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
            return Native.iocpsrv_send(_ptr, id, data, len);
        }
        catch (ObjectDisposedException)
        {
            return (int)IocpsrvError.Stopped;
        }
        finally
        {
            if (added) _handle.DangerousRelease();
        }
    }

    private int SendV(ConnectionId connection, ReadOnlySpan<byte> first, ReadOnlySpan<byte> second)
    {
        byte dummy = 0;
        fixed (byte* a = first)
        fixed (byte* b = second)
        {
            NativeBuf* bufs = stackalloc NativeBuf[2];
            bufs[0].Base = a != null ? a : &dummy;
            bufs[0].Len = (nuint)first.Length;
            bufs[1].Base = b != null ? b : &dummy;
            bufs[1].Len = (nuint)second.Length;
            bool added = false;
            try
            {
                if (t_server != _ptr) _handle.DangerousAddRef(ref added);
                return Native.iocpsrv_sendv(_ptr, connection.Value, bufs, 2);
            }
            catch (ObjectDisposedException)
            {
                return (int)IocpsrvError.Stopped;
            }
            finally
            {
                if (added) _handle.DangerousRelease();
            }
        }
    }

    /// <summary>Sends one packet to every open connection; returns how many took it
    /// (connections whose queue was full are skipped).</summary>
    /// <exception cref="ArgumentException">The payload is larger than MaxPacketSize.</exception>
    /// <exception cref="InvalidOperationException">The server is not running.</exception>
    public int Broadcast(ReadOnlySpan<byte> payload)
    {
        byte dummy = 0;
        using var r = Use();
        fixed (byte* p = payload)
            return Check(Native.iocpsrv_broadcast(r.P, p != null ? p : &dummy, (nuint)payload.Length), "iocpsrv_broadcast", nameof(payload));
    }

    /// <summary>Closes a connection: graceful (queued sends written first; reason
    /// LocalClose) or abortive (reset; reason LocalAbort). Its Disconnected follows on a
    /// worker. Returns false if the id is unknown, closed or stale, or the server is not
    /// running (every connection has ended then). In pull mode, no Packet or Drained event of
    /// it is read after this returns (its Disconnected still comes).</summary>
    public bool Disconnect(ConnectionId connection, bool graceful = true)
        => Close(connection, graceful ? Native.CloseGraceful : Native.CloseAbort);

    /// <summary>Refuses a client: closes it gracefully (queued sends written first) and no
    /// further handler or event comes for it, not even Disconnected; counted in
    /// <see cref="ServerStats.ConnectionsRejected"/>. Pull mode's way to refuse a client after
    /// its Connected event (a handler sets <see cref="ConnectedEventArgs.Refuse"/> instead).
    /// Returns false if the id is unknown, closed or stale, or the server is not running: a
    /// connection that had already ended still gets its Disconnected.</summary>
    public bool Refuse(ConnectionId connection) => Close(connection, Native.CloseRefuse);

    private bool Close(ConnectionId connection, int mode)
    {
        using var r = Use();
        int rc = Native.iocpsrv_disconnect(r.P, connection.Value, mode);
        if (rc == (int)IocpsrvError.NotConnected || rc == (int)IocpsrvError.Stopped) return false;
        Check(rc, "iocpsrv_disconnect");
        if (_pullMode) Volatile.Read(ref _pull).Gate.Closed(connection.Value);
        if (_room.Any) _room.Closed(connection.Value);
        return true;
    }

    /// <summary>Stops reading from a connection (TCP then pushes back on the client). In pull
    /// mode, no Packet event of it is read from when this returns until <see cref="Resume"/>;
    /// those already received are held, in order.</summary>
    public void Pause(ConnectionId connection)
    {
        using var r = Use();
        Check(Native.iocpsrv_pause_receive(r.P, connection.Value), "iocpsrv_pause_receive");
        if (_pullMode) Volatile.Read(ref _pull).Gate.Paused(connection.Value);
    }

    /// <summary>Restarts reading from a paused connection; in pull mode its held packets are
    /// read first, in order.</summary>
    public void Resume(ConnectionId connection)
    {
        using var r = Use();
        Check(Native.iocpsrv_resume_receive(r.P, connection.Value), "iocpsrv_resume_receive");
        if (_pullMode) Volatile.Read(ref _pull).Gate.Resumed(connection.Value);
    }

    /// <summary>Bytes queued for the connection and not yet handed to the kernel.</summary>
    public long PendingBytes(ConnectionId connection)
    {
        using var r = Use();
        long n = Native.iocpsrv_pending_bytes(r.P, connection.Value);
        if (n < 0) throw Errors.For((int)n, "iocpsrv_pending_bytes");
        return n;
    }

    /// <summary>Information about one connection (iocpsrv_conn_info).</summary>
    /// <exception cref="IocpsrvException">NotConnected for a dead id.</exception>
    public ConnectionInfo GetInfo(ConnectionId connection)
    {
        int rc = TryGetInfoCore(connection, out var info);
        if (rc < 0) throw Errors.For(rc, "iocpsrv_conn_info");
        return info;
    }

    /// <summary>Like <see cref="GetInfo"/>, false for a dead id.</summary>
    public bool TryGetInfo(ConnectionId connection, out ConnectionInfo info)
    {
        int rc = TryGetInfoCore(connection, out info);
        if (rc == (int)IocpsrvError.NotConnected || rc == (int)IocpsrvError.Stopped) return false;
        Check(rc, "iocpsrv_conn_info");
        return true;
    }

    private int TryGetInfoCore(ConnectionId connection, out ConnectionInfo info)
    {
        ConnectionInfo v = default;
        v.StructSize = (uint)sizeof(ConnectionInfo);
        using var r = Use();
        int rc = Native.iocpsrv_conn_info(r.P, connection.Value, &v);
        info = v;
        return rc;
    }

    // ---- Pull API ----

    /// <summary>Pull mode: the events of the current run (or the next, before Start), each with
    /// its payload copied into an owned array. Completes after the server stops and every
    /// event of the run has been read. One consumer at a time keeps the per-connection
    /// order. <see cref="Disconnect"/>, <see cref="Refuse"/> and <see cref="Pause"/> apply to
    /// the events not read yet when they return, including those already buffered
    /// here.</summary>
    public ChannelReader<ServerEvent> Events
    {
        get
        {
            ThrowIfDisposed();
            ThrowIfNotPullMode(nameof(Events));
            return Volatile.Read(ref _pull).UseChannel();
        }
    }

    /// <summary>Pull mode: the events of the current run as an async stream (see
    /// <see cref="Events"/>); ends when the server has stopped and every event was read.</summary>
    public IAsyncEnumerable<ServerEvent> ReadEventsAsync(CancellationToken cancellationToken = default)
        => Events.ReadAllAsync(cancellationToken);

    private void ThrowIfNotPullMode(string member)
    {
        if (!_pullMode) throw new InvalidOperationException($"{member} needs a server created with IocpServerOptions.PullMode = true.");
    }

    // Under _gate, before listen: the previous run's pump must be gone and its stream
    // completed; this run gets a fresh one. A stream never pumped is kept (a reader may
    // already wait on it).
    private void ResetPump()
    {
        if (!_pull.Started) return;
        _pull.StopPump();
        _pull.Complete();
        Volatile.Write(ref _pull, new PullRun(this, _pullCapacity));
    }

    private void StartPump() => _pull.Start(Pump);

    private const int PollTimeoutMs = 100; // how soon the pump sees that it must stop

    // The pump thread: waits for the run's reader, then polls for it until the run ends.
    private void Pump(PullRun run, CancellationToken ct)
    {
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
            if (!run.WaitForReader(ct, out bool batches)) return;
            if (batches) run.Batches.Run(_ptr, ct, ObservePulled);
            else PumpChannel(run, ct);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
        }
        catch (Exception ex)
        {
            Report(ex, CallbackKind.EventPump, 0);
        }
        finally
        {
            if (added) _handle.DangerousRelease();
            EndAttempts(run);
            run.Complete();
        }
    }

    // The channel's pump: polls ahead, copies each event into a ServerEvent that owns its
    // payload (the buffer is reused by the next poll), and waits while the channel is full.
    private void PumpChannel(PullRun run, CancellationToken ct)
    {
        var writer = run.Channel.Writer;
        // About one channel's worth of the smallest events per poll, so that the pump holds
        // roughly PullChannelCapacity events beyond the channel, as the option says.
        var buffer = new PollBuffer(Math.Clamp(run.ChannelCapacity * 32, 4 << 10, 64 << 10));
        var batch = new List<PulledEvent>();
        while (!ct.IsCancellationRequested)
        {
            long poll = run.Gate.NextPoll();
            long n = buffer.Poll(_ptr, PollTimeoutMs);
            if (n == (int)IocpsrvError.Stopped) break;
            if (n < 0) throw new IocpsrvException((int)n, "iocpsrv_poll_packed");
            for (int offset = 0; offset < n;)
            {
                var entry = PackedRecords.ReadEvent(buffer.Array, (int)n, ref offset);
                ObservePulled(entry);
                batch.Add(new PulledEvent(entry.ToServerEvent(), poll));
            }
            foreach (var p in batch)
            {
                if (!writer.TryWrite(p)) writer.WriteAsync(p, ct).AsTask().GetAwaiter().GetResult();
            }
            batch.Clear();
        }
    }

    /// <summary>EventBatch.FlushSends, and a ReadBatchesAsync loop left early: the gathered
    /// sends go from this thread (written at once: it does not poll). The refusals are
    /// returned, or listed in the next batch.</summary>
    internal RefusedSend[] FlushGathered(BatchReader reader, bool forNextBatch)
    {
        using var r = Use();
        if (!forNextBatch) return reader.HandOver(r.P);
        reader.HandOverNow(r.P);
        return Array.Empty<RefusedSend>();
    }

    // Pull-mode SendAsync's own look at the queue: below half the limit, as the engine's drain
    // requires. A dead connection counts as room: the send tried next reports it.
    private bool QueueBelowHalf(ConnectionId connection)
    {
        try
        {
            using var r = Use();
            long pending = Native.iocpsrv_pending_bytes(r.P, connection.Value);
            long limit;
            if (pending < 0 || Native.iocpsrv_get_option(r.P, (int)ServerOption.SendQueueLimit, &limit) < 0) return true;
            return pending <= limit / 2;
        }
        catch (ObjectDisposedException)
        {
            return true;
        }
    }

    // Every event a poll takes, as it takes it: drains and ends reach the SendAsync calls
    // waiting for room even before the reader gets to them.
    private void ObservePulled(EventEntry e)
    {
        // An outbound attempt's outcome (its conn_user is the attempt's token).
        if (e.ConnUser != 0 && e.Type is ServerEventType.Connected or ServerEventType.Disconnected) AttemptPulled(e);
        if (!_room.Any) return;
        if (e.Type == ServerEventType.Drained) _room.Drained(e.Conn);
        else if (e.Type == ServerEventType.Disconnected) _room.Closed(e.Conn);
    }

    // ---- Native callbacks ----
    // Static, [UnmanagedCallersOnly], never throwing: every exception is caught and reported.

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static IocpServer? From(nint server)
    {
        nint user = Native.iocpsrv_user_data(server);
        return user == 0 ? null : GCHandle.FromIntPtr(user).Target as IocpServer;
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int OnConnect(nint server, ulong conn, byte* peer, nint* connUser)
    {
        nint prev = t_server;
        t_server = server;
        IocpServer? self = null;
        nint attempt = *connUser; // a ConnectAsync attempt's token, 0 for an accepted client
        bool refuse = false;
        Exception? thrown = null;
        try
        {
            self = From(server);
            var handler = self?.Connected;
            if (handler is null) return 0;
            var args = new ConnectedEventArgs(new ConnectionId(conn), Native.Str(peer), attempt != 0);
            handler(self!, args);
            refuse = args.Refuse;
            return refuse ? 1 : 0;
        }
        catch (Exception ex)
        {
            thrown = ex;
            refuse = self?.Report(ex, CallbackKind.Connected, conn) ?? true;
            return refuse ? 1 : 0;
        }
        finally
        {
            // Its ConnectAsync completes once the handler has returned (on the thread pool).
            if (attempt != 0) self?.AttemptConnected(attempt, conn, refuse, thrown);
            t_server = prev;
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int OnPacket(nint server, ulong conn, nint connUser, byte* data, nuint len)
    {
        nint prev = t_server;
        t_server = server;
        IocpServer? self = null;
        try
        {
            self = From(server);
            var handler = self?.PacketReceived;
            if (handler is null) return 0;
            handler(self!, new ConnectionId(conn), new ReadOnlySpan<byte>(data, (int)len));
            return 0;
        }
        catch (Exception ex)
        {
            return self?.Report(ex, CallbackKind.PacketReceived, conn) ?? true ? 1 : 0;
        }
        finally
        {
            t_server = prev;
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static int OnPacketBatch(nint server, ulong conn, nint connUser, NativeBuf* packets, int count)
    {
        nint prev = t_server;
        t_server = server;
        IocpServer? self = null;
        try
        {
            self = From(server);
            var handler = self?.PacketsReceived;
            if (handler is null) return 0;
            handler(self!, new ConnectionId(conn), new PacketBatch(packets, count));
            return 0;
        }
        catch (Exception ex)
        {
            return self?.Report(ex, CallbackKind.PacketsReceived, conn) ?? true ? 1 : 0;
        }
        finally
        {
            t_server = prev;
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void OnDisconnect(nint server, ulong conn, nint connUser, int reason)
    {
        nint prev = t_server;
        t_server = server;
        IocpServer? self = null;
        try
        {
            self = From(server);
            if (self is { _room.Any: true }) self._room.Closed(conn);
            self?.Disconnected?.Invoke(self, new DisconnectedEventArgs(new ConnectionId(conn), (DisconnectReason)reason));
        }
        catch (Exception ex)
        {
            self?.Report(ex, CallbackKind.Disconnected, conn);
        }
        finally
        {
            // An outbound attempt that never got established: its ConnectAsync faults.
            if (connUser != 0) self?.AttemptEnded(connUser, conn, reason);
            t_server = prev;
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void OnDrain(nint server, ulong conn, nint connUser)
    {
        nint prev = t_server;
        t_server = server;
        IocpServer? self = null;
        try
        {
            self = From(server);
            if (self is { _room.Any: true }) self._room.Drained(conn);
            self?.Drained?.Invoke(self, new DrainedEventArgs(new ConnectionId(conn)));
        }
        catch (Exception ex)
        {
            self?.Report(ex, CallbackKind.Drained, conn);
        }
        finally
        {
            t_server = prev;
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void OnWorkerStart(nint server, int worker) => WorkerHook(server, worker, start: true);

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void OnWorkerStop(nint server, int worker) => WorkerHook(server, worker, start: false);

    private static void WorkerHook(nint server, int worker, bool start)
    {
        nint prev = t_server;
        t_server = server;
        IocpServer? self = null;
        try
        {
            self = From(server);
            var handler = start ? self?.WorkerStarted : self?.WorkerStopped;
            handler?.Invoke(self!, new WorkerEventArgs(worker));
        }
        catch (Exception ex)
        {
            self?.Report(ex, start ? CallbackKind.WorkerStarted : CallbackKind.WorkerStopped, 0);
        }
        finally
        {
            t_server = prev;
        }
    }

    [UnmanagedCallersOnly(CallConvs = new[] { typeof(CallConvCdecl) })]
    private static void OnLog(nint server, int level, byte* message)
    {
        // The log callback may run on a thread that is not a worker (an API call): do not mark
        // the thread as a handler thread beyond what it already is.
        IocpServer? self = null;
        try
        {
            self = From(server);
            var handler = self?.Log;
            handler?.Invoke(self!, new LogEventArgs(level, Native.Str(message)));
        }
        catch (Exception ex)
        {
            self?.Report(ex, CallbackKind.Log, 0);
        }
    }

    /// <summary>Reports a handler's exception; returns whether to close/refuse the connection.
    /// Never throws.</summary>
    private bool Report(Exception ex, CallbackKind kind, ulong conn)
    {
        try
        {
            var args = new CallbackExceptionEventArgs(ex, kind, new ConnectionId(conn));
            var handler = UnhandledCallbackException;
            if (handler is null)
            {
                WriteError($"iocpsrv: unhandled exception in the {kind} handler (connection {conn}): {ex}");
            }
            else
            {
                try
                {
                    handler(this, args);
                }
                catch (Exception inner)
                {
                    WriteError($"iocpsrv: the UnhandledCallbackException handler threw: {inner}\n  while reporting: {ex}");
                }
            }
            return args.CloseConnection;
        }
        catch
        {
            return true;
        }
    }

    private static void WriteError(string text)
    {
        try
        {
            Console.Error.WriteLine(text);
        }
        catch
        {
            // nowhere left to report it
        }
    }

    // ---- Helpers ----

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(IsDisposed, this);

    private static int Check(int rc, string operation, string? paramName = null)
    {
        if (rc < 0) throw Errors.For(rc, operation, paramName);
        return rc;
    }

    private static int ToTimeoutMs(TimeSpan timeout)
    {
        if (timeout == Timeout.InfiniteTimeSpan) return -1;
        if (timeout < TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(timeout), "Use TimeSpan.Zero, a positive time or Timeout.InfiniteTimeSpan.");
        double ms = Math.Ceiling(timeout.TotalMilliseconds);
        return ms >= int.MaxValue ? int.MaxValue : (int)ms;
    }

    /// <summary>Holds the native handle alive for one call (SafeHandle reference count),
    /// except on this server's own handler threads, where it cannot go away.</summary>
    private readonly ref struct HandleUse
    {
        private readonly ServerHandle? _owner;
        public readonly nint P;
        public HandleUse(ServerHandle? owner, nint p)
        {
            _owner = owner;
            P = p;
        }
        public void Dispose() => _owner?.DangerousRelease();
    }

    private HandleUse Use()
    {
        ThrowIfDisposed();
        if (t_server == _ptr) return new HandleUse(null, _ptr);
        bool added = false;
        _handle.DangerousAddRef(ref added);
        return new HandleUse(_handle, _ptr);
    }
}
