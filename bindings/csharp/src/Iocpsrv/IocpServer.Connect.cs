using System.Text;

namespace Iocpsrv;

// The client role (iocpsrv_start, iocpsrv_connect): outbound connections on the same engine.
//
// Each ConnectAsync is an attempt with a token of its own (never 0), given to iocpsrv_connect
// as the connection's conn_user: the engine may run the attempt's callbacks (or queue its pull
// events) on a worker before iocpsrv_connect has returned its id, so the token, not the id,
// names the attempt. The attempt is resolved once, by whichever comes first:
//   callback mode  OnConnect, after the Connected handler returned (result, or a fault if the
//                  handler refused it), or OnDisconnect of an attempt never established (fault
//                  with the reason);
//   pull mode      the pump taking the attempt's Connected event (result) or its Disconnected
//                  event without a Connected before it (fault), as it polls;
//   the token      cancellation (OperationCanceledException; the attempt is aborted with
//                  iocpsrv_disconnect, and its Disconnected still follows);
//   a lost run     pull mode: the run's pump ended without taking the outcome (Dispose, or a
//                  new Start with the old run's events unread).
public sealed unsafe partial class IocpServer
{
    private readonly object _attemptsLock = new();
    private readonly Dictionary<long, ConnectAttempt> _attempts = new(); // unresolved by the engine yet
    private long _lastAttemptToken;

    /// <summary>One ConnectAsync. Its task completes on the thread pool, never inline on a
    /// worker or the pump.</summary>
    private sealed class ConnectAttempt : TaskCompletionSource<ConnectionId>
    {
        internal ConnectAttempt(IocpServer server, long token, string host, int port)
            : base(TaskCreationOptions.RunContinuationsAsynchronously)
        {
            Server = server;
            Token = token;
            Host = host;
            Port = port;
        }

        internal readonly IocpServer Server;
        internal readonly long Token;
        internal readonly string Host;
        internal readonly int Port;
        internal ulong Id;                          // once iocpsrv_connect returned it
        internal PullRun? Run;                      // pull mode: the run whose stream brings its outcome (under _attemptsLock)
        internal CancellationTokenRegistration Cancel; // under _attemptsLock

        internal void OnCancel(CancellationToken token)
        {
            if (TrySetCanceled(token)) Server.AbortAttempt(Id);
        }

        internal void Fail(ulong conn, DisconnectReason reason, bool refusedByHandler = false, Exception? inner = null)
            => TrySetException(new IocpsrvConnectException(Host, Port, new ConnectionId(conn), reason, refusedByHandler, inner));
    }

    /// <summary>
    /// Starts the engine without a listener (iocpsrv_start): the worker threads run, and
    /// <see cref="ConnectAsync"/> opens outbound connections, which are served like accepted
    /// ones (the same handlers, or pull-mode events, framing, sends and options). Stopped and
    /// disposed as a listening server; it may <see cref="Start(string?, int)"/> (listen) after
    /// a stop. <see cref="Port"/> throws while it runs (there is no listener). An engine that
    /// both listens and connects calls <see cref="Start(string?, int)"/>, then
    /// <see cref="ConnectAsync"/>. Not from a handler.
    /// </summary>
    /// <exception cref="InvalidOperationException">Already running, or called from a handler.</exception>
    /// <exception cref="IocpsrvException">OutOfMemory, System.</exception>
    public void StartWithoutListener()
    {
        ThrowIfDisposed();
        StartCore(listen: false, null, 0);
    }

    /// <summary>
    /// Opens an outbound connection to <paramref name="host"/> ("127.0.0.1", "::1",
    /// "example.com") and <paramref name="port"/> on this running engine (after
    /// <see cref="Start(string?, int)"/> or <see cref="StartWithoutListener"/>), without
    /// blocking; any thread, handlers included. A numeric host is used at once, a name is
    /// resolved on the engine's resolver thread and its addresses tried in order, all within
    /// <see cref="IocpServerOptions.ConnectTimeout"/> (default 10 s).
    /// <para>The task completes with the connection's id once it is established: in callback
    /// mode after its <see cref="Connected"/> handler has returned (with
    /// <see cref="ConnectedEventArgs.IsOutbound"/> set; it may run before this method
    /// returns), in pull mode when the binding takes its Connected event from the engine (the
    /// reader then reads that event; keep the stream read, see the README). From then on it is
    /// an ordinary connection: Send, Disconnect, packets, exactly one Disconnected.</para>
    /// <para>It faults with <see cref="IocpsrvConnectException"/> when the attempt ends
    /// without being established; <see cref="IocpsrvConnectException.Reason"/> says why
    /// (ConnectRefused, ConnectTimeout, NameNotResolved, ConnectUnreachable, ConnectFailed,
    /// ServerStopped, ...). Such an attempt gets no Connected, only its one Disconnected with
    /// that reason, as the library reports it.</para>
    /// <para>Cancelling <paramref name="cancellationToken"/> before it completes aborts the
    /// attempt (iocpsrv_disconnect; its Disconnected follows, reason LocalAbort, even if it
    /// was established meanwhile) and cancels the task.</para>
    /// <para>Errors of the call itself are thrown at once, and no attempt exists then (no
    /// Disconnected comes): a bad argument, a server not running
    /// (<see cref="InvalidOperationException"/>, Stopped), no room for another connection
    /// (<see cref="IocpsrvException"/>, Limit: <see cref="IocpServerOptions.MaxConnections"/>
    /// counts both directions), a numeric host of the wrong family for
    /// <see cref="IocpServerOptions.ConnectSource"/> (AddressNotAvailable).</para>
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="host"/> is null.</exception>
    /// <exception cref="ArgumentException"><paramref name="host"/> is empty.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="port"/> is not 1..65535.</exception>
    /// <exception cref="InvalidOperationException">The server is not running (Stopped).</exception>
    /// <exception cref="IocpsrvException">Limit, AddressNotAvailable, OutOfMemory, System.</exception>
    /// <exception cref="ObjectDisposedException">The server was disposed.</exception>
    public Task<ConnectionId> ConnectAsync(string host, int port, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(host);
        ArgumentOutOfRangeException.ThrowIfLessThan(port, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(port, 65535);
        ThrowIfDisposed();
        if (cancellationToken.IsCancellationRequested) return Task.FromCanceled<ConnectionId>(cancellationToken);

        byte[] hostBytes = new byte[Encoding.UTF8.GetByteCount(host) + 1];
        Encoding.UTF8.GetBytes(host, hostBytes);
        long token = Interlocked.Increment(ref _lastAttemptToken);
        var attempt = new ConnectAttempt(this, token, host, port);
        lock (_attemptsLock)
        {
            attempt.Run = _pullMode ? Volatile.Read(ref _pull) : null;
            _attempts.Add(token, attempt);
        }

        int rc;
        ulong id = 0;
        try
        {
            using var r = Use();
            fixed (byte* h = hostBytes) rc = Native.iocpsrv_connect(r.P, h, port, (nint)token, &id);
        }
        catch
        {
            lock (_attemptsLock) _attempts.Remove(token);
            throw;
        }
        if (rc < 0)
        {
            lock (_attemptsLock) _attempts.Remove(token);
            throw Errors.For(rc, $"iocpsrv_connect({host}, {port})", rc == (int)IocpsrvError.InvalidArgument ? nameof(host) : null);
        }

        attempt.Id = id;
        bool lost = false;
        lock (_attemptsLock)
        {
            if (_pullMode && _attempts.ContainsKey(token))
            {
                // iocpsrv_connect succeeded on the run that is current now (a new run's stream
                // replaces the old one before its listen); if that run's pump has already
                // ended, the outcome can no longer be read.
                attempt.Run = Volatile.Read(ref _pull);
                if (attempt.Run.AttemptsEnded) lost = _attempts.Remove(token);
            }
        }
        if (lost) attempt.TrySetException(RunEndedError());

        if (cancellationToken.CanBeCanceled && !attempt.Task.IsCompleted)
        {
            var registration = cancellationToken.UnsafeRegister(static (s, t) => ((ConnectAttempt)s!).OnCancel(t), attempt);
            bool keep;
            lock (_attemptsLock)
            {
                keep = _attempts.ContainsKey(token);
                if (keep) attempt.Cancel = registration;
            }
            if (!keep) registration.Unregister(); // resolved meanwhile
        }
        return attempt.Task;
    }

    // The attempt named by a callback's or event's conn_user, taken out of the table (once).
    private ConnectAttempt? TakeAttempt(nint connUser)
    {
        if (connUser == 0) return null;
        ConnectAttempt? attempt;
        lock (_attemptsLock)
        {
            if (!_attempts.Remove(connUser, out attempt)) return null;
            attempt.Cancel.Unregister();
        }
        return attempt;
    }

    // Callback mode, OnConnect once the Connected handler has returned.
    private void AttemptConnected(nint connUser, ulong conn, bool refused, Exception? handlerError)
    {
        var attempt = TakeAttempt(connUser);
        if (attempt is null) return;
        if (!refused) attempt.TrySetResult(new ConnectionId(conn));
        else attempt.Fail(conn, DisconnectReason.LocalClose, refusedByHandler: true, handlerError);
    }

    // Callback mode, OnDisconnect: still in the table means never established.
    private void AttemptEnded(nint connUser, ulong conn, int reason)
        => TakeAttempt(connUser)?.Fail(conn, (DisconnectReason)reason);

    // Pull mode, the pump as it takes an outbound connection's Connected or Disconnected.
    private void AttemptPulled(in EventEntry e)
    {
        var attempt = TakeAttempt((nint)e.ConnUser);
        if (attempt is null) return;
        if (e.Type == ServerEventType.Connected) attempt.TrySetResult(new ConnectionId(e.Conn));
        else attempt.Fail(e.Conn, e.Reason);
    }

    // A cancelled attempt: aborted, connecting or not (its Disconnected follows).
    private void AbortAttempt(ulong id)
    {
        try
        {
            Close(new ConnectionId(id), Native.CloseAbort);
        }
        catch (ObjectDisposedException)
        {
            // destroyed meanwhile: every connection has ended
        }
        catch (Exception ex)
        {
            Report(ex, CallbackKind.EventPump, id);
        }
    }

    /// <summary>Pull mode: the pump of <paramref name="run"/> has ended, so no outcome is taken
    /// from its stream any more; the attempts of that run still waiting fail.</summary>
    private void EndAttempts(PullRun run)
    {
        List<ConnectAttempt>? lost = null;
        lock (_attemptsLock)
        {
            run.AttemptsEnded = true;
            foreach (var a in _attempts.Values)
            {
                // An attempt still inside iocpsrv_connect (no id yet) checks its run itself.
                if (a.Run == run && a.Id != 0) (lost ??= new()).Add(a);
            }
            if (lost is not null) foreach (var a in lost) _attempts.Remove(a.Token);
        }
        if (lost is null) return;
        foreach (var a in lost)
        {
            a.Cancel.Unregister();
            a.TrySetException(RunEndedError());
        }
    }

    /// <summary>Callback mode, after the native stop: every attempt has had its disconnect,
    /// so none is left but one a stop raced with (defensive).</summary>
    private void EndCallbackAttempts()
    {
        if (_pullMode) return;
        List<ConnectAttempt>? lost = null;
        lock (_attemptsLock)
        {
            foreach (var a in _attempts.Values)
                if (a.Id != 0) (lost ??= new()).Add(a);
            if (lost is not null) foreach (var a in lost) _attempts.Remove(a.Token);
        }
        if (lost is null) return;
        foreach (var a in lost)
        {
            a.Cancel.Unregister();
            a.Fail(a.Id, DisconnectReason.ServerStopped);
        }
    }

    private Exception RunEndedError() => IsDisposed
        ? new ObjectDisposedException(nameof(IocpServer), "The server was disposed before the outcome of this connect attempt was read from its event stream.")
        : new InvalidOperationException("The server's event stream ended (a new Start) before the outcome of this connect attempt was read from it.");
}
