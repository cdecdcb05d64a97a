using System.Threading.Channels;

namespace Iocpsrv;

/// <summary>One event the pump took from the engine, with the number of the poll that took
/// it (polls are numbered from 1, in order).</summary>
internal readonly record struct PulledEvent(ServerEvent Event, long Poll);

/// <summary>
/// The event stream of one pull-mode run, as <see cref="IocpServer.Events"/> hands it out.
/// </summary>
/// <remarks>
/// The engine keeps the callback contract in pull mode: after iocpsrv_disconnect no packet or
/// drain of that connection is handed out by a later iocpsrv_poll, after
/// iocpsrv_pause_receive its packets wait in the engine, in order, until
/// iocpsrv_resume_receive, and a refused connection (IOCPSRV_CLOSE_REFUSE) gets no further
/// event at all. What the engine cannot reach are the events the pump has already taken from
/// it: those in the channel, waiting for the reader. For those, and only those, this reader
/// applies Disconnect, Refuse and Pause when they return: a closed connection's packets and
/// drains are skipped; a paused connection's packets are set aside and read, in order, after
/// Resume (before anything later of it); its Disconnected comes after them, or drops them if
/// it ends paused, as the engine drops the ones it held.
/// <para>One reader at a time (the channel's own rule for per-connection order). The pump
/// writes, any thread may call Closed, Paused and Resumed.</para>
/// </remarks>
internal sealed class PullEvents : ChannelReader<ServerEvent>
{
    private readonly Channel<PulledEvent> _channel;
    private readonly object _lock = new();
    private long _polls;

    // Closed connections: the number of the last poll that may have taken events of theirs
    // (in FIFO order, so that an entry goes once the reader is past that poll).
    private readonly Dictionary<ulong, long> _closed = new();
    private readonly Queue<(ulong Conn, long Poll)> _closedOrder = new();

    // Paused connections, and resumed ones whose set-aside events are not read yet.
    private readonly Dictionary<ulong, Held> _held = new();
    private readonly Queue<ulong> _ready = new();     // resumed with events set aside
    private int _heldEvents;                          // set aside, in all
    private TaskCompletionSource<bool>? _readySignal; // a reader waiting while events are set aside

    private volatile int _entries;                    // _closed.Count + _held.Count: 0 = nothing to apply
    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private sealed class Held
    {
        public bool Paused = true;
        public readonly Queue<ServerEvent> Events = new();
    }

    internal PullEvents(int capacity)
    {
        _channel = Channel.CreateBounded<PulledEvent>(new BoundedChannelOptions(capacity)
        {
            SingleWriter = true,
            FullMode = BoundedChannelFullMode.Wait,
            AllowSynchronousContinuations = false,
        });
        _channel.Reader.Completion.ContinueWith(static (_, s) => ((PullEvents)s!).MaybeComplete(), this,
            CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
    }

    /// <summary>The pump's side.</summary>
    internal ChannelWriter<PulledEvent> Writer => _channel.Writer;

    /// <summary>The pump, before each iocpsrv_poll: that poll's number.</summary>
    internal long NextPoll() => Interlocked.Increment(ref _polls);

    /// <summary>iocpsrv_disconnect (any mode) has returned 0 for <paramref name="conn"/>: its
    /// packets and drains still in the channel are skipped; what was set aside is dropped.</summary>
    internal void Closed(ulong conn)
    {
        lock (_lock)
        {
            long poll = Volatile.Read(ref _polls); // later polls hand out nothing of it
            _closed[conn] = poll;
            _closedOrder.Enqueue((conn, poll));
            if (_held.Remove(conn, out var h)) _heldEvents -= h.Events.Count;
            Recount();
        }
    }

    /// <summary>iocpsrv_pause_receive has returned 0: its packets still in the channel are set
    /// aside until <see cref="Resumed"/>.</summary>
    internal void Paused(ulong conn)
    {
        lock (_lock)
        {
            if (_held.TryGetValue(conn, out var h)) h.Paused = true;
            else _held[conn] = new Held();
            Recount();
        }
    }

    /// <summary>iocpsrv_resume_receive has returned 0: what was set aside is read first.</summary>
    internal void Resumed(ulong conn)
    {
        TaskCompletionSource<bool>? wake = null;
        lock (_lock)
        {
            if (!_held.TryGetValue(conn, out var h) || !h.Paused) return;
            h.Paused = false;
            if (h.Events.Count == 0)
            {
                _held.Remove(conn);
                Recount();
                return;
            }
            _ready.Enqueue(conn);
            wake = _readySignal;
            _readySignal = null;
        }
        wake?.TrySetResult(true);
    }

    // Under _lock.
    private void Recount() => _entries = _closed.Count + _held.Count;

    /// <inheritdoc />
    public override bool TryRead(out ServerEvent item)
    {
        if (_entries == 0)
        {
            if (_channel.Reader.TryRead(out var p))
            {
                item = p.Event;
                return true;
            }
        }
        else
        {
            lock (_lock)
            {
                if (NextSetAside(out item)) return true;
                while (_channel.Reader.TryRead(out var p))
                {
                    item = p.Event;
                    if (Deliver(in p)) return true;
                }
            }
        }
        item = default;
        MaybeComplete();
        return false;
    }

    // The run has ended and nothing is left to read: Completion completes.
    private void MaybeComplete()
    {
        if (!_channel.Reader.Completion.IsCompleted) return;
        lock (_lock)
        {
            if (_ready.Count == 0 && _channel.Reader.Count == 0) _completion.TrySetResult();
        }
    }

    /// <inheritdoc />
    public override ValueTask<bool> WaitToReadAsync(CancellationToken cancellationToken = default)
    {
        TaskCompletionSource<bool>? signal = null;
        if (_entries != 0)
        {
            lock (_lock)
            {
                if (_ready.Count != 0) return new ValueTask<bool>(true);
                // Only set-aside events can become readable without the channel (a Resume).
                if (_heldEvents != 0) signal = _readySignal ??= new(TaskCreationOptions.RunContinuationsAsynchronously);
            }
        }
        var wait = _channel.Reader.WaitToReadAsync(cancellationToken);
        if (signal is null || wait.IsCompleted) return wait;
        return WaitEither(wait, signal.Task);
    }

    private static async ValueTask<bool> WaitEither(ValueTask<bool> channel, Task<bool> resumed)
    {
        var c = channel.AsTask();
        return await Task.WhenAny(c, resumed).ConfigureAwait(false) == resumed || await c.ConfigureAwait(false);
    }

    /// <summary>Completes once the run has ended and every event was read.</summary>
    public override Task Completion => _completion.Task;

    // The next set-aside event of a resumed connection. Under _lock.
    private bool NextSetAside(out ServerEvent item)
    {
        while (_ready.Count != 0)
        {
            ulong conn = _ready.Peek();
            if (_held.TryGetValue(conn, out var h) && !h.Paused && h.Events.Count != 0)
            {
                item = h.Events.Dequeue();
                _heldEvents--;
                if (h.Events.Count == 0)
                {
                    _ready.Dequeue();
                    _held.Remove(conn); // what follows in the channel is read directly
                    Recount();
                    if (_ready.Count == 0 && _channel.Reader.Completion.IsCompleted) _completion.TrySetResult();
                }
                return true;
            }
            _ready.Dequeue(); // paused again (it stays set aside), or closed meanwhile
            if (h is not null && !h.Paused)
            {
                _held.Remove(conn);
                Recount();
            }
        }
        item = default;
        return false;
    }

    // Whether an event taken from the channel is read now (else skipped or set aside). Under _lock.
    private bool Deliver(in PulledEvent p)
    {
        // Events of polls after a close's last one: nothing of that connection is in the channel
        // before them any more.
        while (_closedOrder.Count != 0 && _closedOrder.Peek().Poll < p.Poll)
        {
            var (c, poll) = _closedOrder.Dequeue();
            if (_closed.TryGetValue(c, out long last) && last == poll) _closed.Remove(c);
            Recount();
        }
        var ev = p.Event;
        ulong conn = ev.Connection.Value;
        switch (ev.Type)
        {
            case ServerEventType.Packet:
                if (_closed.ContainsKey(conn)) return false;
                if (_held.TryGetValue(conn, out var h))
                {
                    h.Events.Enqueue(ev);
                    _heldEvents++;
                    return false;
                }
                return true;
            case ServerEventType.Drained:
                return !_closed.ContainsKey(conn);
            case ServerEventType.Disconnected:
                if (_held.TryGetValue(conn, out h))
                {
                    if (!h.Paused)
                    {
                        h.Events.Enqueue(ev); // after its packets, which are ready
                        _heldEvents++;
                        return false;
                    }
                    _held.Remove(conn); // it ended paused: dropped, as the engine drops its own
                    _heldEvents -= h.Events.Count;
                    Recount();
                }
                return true;
            default:
                return true;
        }
    }
}
