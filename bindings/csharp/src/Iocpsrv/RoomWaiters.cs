namespace Iocpsrv;

/// <summary>
/// The <see cref="IocpServer.SendAsync"/> calls waiting for room in a connection's send queue:
/// woken by the engine's drain (the Drained callback, or the DRAIN event a poll takes), failed
/// when the connection ends or the server stops.
/// </summary>
/// <remarks>Completions run their continuations on the thread pool: a drain arrives on an
/// engine worker or the pull pump, where awaiting code must not run. <see cref="Any"/> keeps
/// the engine's callbacks and the pump free of a lock when nobody waits (the common case).</remarks>
internal sealed class RoomWaiters
{
    private readonly object _lock = new();
    private readonly Dictionary<ulong, List<TaskCompletionSource>> _waiting = new();
    private volatile int _count;

    /// <summary>False while no SendAsync waits (read without the lock).</summary>
    internal bool Any => _count != 0;

    /// <summary>A waiter for <paramref name="conn"/>'s next drain; register it before the send
    /// that may be refused, so that the drain that refusal brings cannot be missed.</summary>
    internal TaskCompletionSource Register(ulong conn)
    {
        var waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_lock)
        {
            if (!_waiting.TryGetValue(conn, out var list)) _waiting[conn] = list = new List<TaskCompletionSource>(1);
            list.Add(waiter);
            _count++;
        }
        return waiter;
    }

    internal void Unregister(ulong conn, TaskCompletionSource waiter)
    {
        lock (_lock)
        {
            if (!_waiting.TryGetValue(conn, out var list) || !list.Remove(waiter)) return;
            _count--;
            if (list.Count == 0) _waiting.Remove(conn);
        }
    }

    /// <summary>The connections someone waits on (for the pull-mode room check).</summary>
    internal ulong[] Connections()
    {
        lock (_lock) return _waiting.Keys.ToArray();
    }

    /// <summary>The engine drained <paramref name="conn"/>'s queue: its waiters send again.</summary>
    internal void Drained(ulong conn) => Take(conn)?.ForEach(w => w.TrySetResult());

    /// <summary><paramref name="conn"/> ended (or was closed by this server): its waiters fail.</summary>
    internal void Closed(ulong conn)
    {
        var waiters = Take(conn);
        if (waiters is null) return;
        var error = new IocpsrvException((int)IocpsrvError.NotConnected, "SendAsync: the connection closed while the send waited for room");
        foreach (var w in waiters) w.TrySetException(error);
    }

    /// <summary>The run ended: every waiter fails with <paramref name="error"/>.</summary>
    internal void FailAll(Exception error)
    {
        List<TaskCompletionSource> all;
        lock (_lock)
        {
            all = _waiting.Values.SelectMany(l => l).ToList();
            _waiting.Clear();
            _count = 0;
        }
        foreach (var w in all) w.TrySetException(error);
    }

    private List<TaskCompletionSource>? Take(ulong conn)
    {
        lock (_lock)
        {
            if (!_waiting.Remove(conn, out var list)) return null;
            _count -= list.Count;
            return list;
        }
    }
}
