namespace Iocpsrv;

/// <summary>What a reader does with an event it took from the pump.</summary>
internal enum Admission
{
    /// <summary>Hand it to the consumer now.</summary>
    Read,
    /// <summary>Drop it: its connection was closed (Disconnect, Refuse) after it was polled.</summary>
    Skip,
    /// <summary>Keep it aside (<see cref="PullGate.SetAside"/>): its connection is paused, or
    /// resumed with earlier events still set aside.</summary>
    SetAside,
}

/// <summary>
/// Keeps the pull contract for the events the binding has already taken from the engine.
/// </summary>
/// <remarks>
/// The engine keeps the callback contract in pull mode: after iocpsrv_disconnect no packet or
/// drain of that connection is handed out by a later poll, after iocpsrv_pause_receive its
/// packets wait in the engine, in order, until iocpsrv_resume_receive, and a refused
/// connection gets no further event at all. What the engine cannot reach are the events a poll
/// has already taken: those the reader has not handed out yet (in the channel, or in the rest
/// of the current batch). For those, and only those, this gate applies Disconnect, Refuse and
/// Pause when they return: a closed connection's packets and drains are skipped; a paused
/// connection's packets are set aside and read, in order, after Resume (before anything later
/// of it); its Disconnected comes after them, or drops them if it ends paused, as the engine
/// drops the ones it held.
/// <para>Polls are numbered from 1 in order; a close applies to the events of the polls made
/// until it returned, so its entry goes once the reader is past them. Everything here runs
/// under <see cref="Lock"/>; <see cref="Active"/> is the lock-free check that there is nothing
/// to apply (the common case).</para>
/// </remarks>
internal sealed class PullGate
{
    internal readonly object Lock = new();
    private long _polls;

    // Closed connections: the number of the last poll that may have taken events of theirs
    // (in FIFO order, so that an entry goes once the reader is past that poll).
    private readonly Dictionary<ulong, long> _closed = new();
    private readonly Queue<(ulong Conn, long Poll)> _closedOrder = new();

    // Paused connections, and resumed ones whose set-aside events are not read yet.
    private readonly Dictionary<ulong, Held> _held = new();
    private readonly Queue<ulong> _ready = new();     // resumed with events set aside
    private int _heldEvents;                          // set aside, in all
    private volatile int _entries;                    // _closed.Count + _held.Count

    private sealed class Held
    {
        public bool Paused = true;
        public readonly Queue<ServerEvent> Events = new();
    }

    /// <summary>Called (outside the lock) when a Resume made set-aside events readable: a
    /// reader that waits must wake up.</summary>
    internal Action? Ready;

    /// <summary>False when no close or pause is pending: events are read as they come.</summary>
    internal bool Active => _entries != 0;

    /// <summary>The pump, before each poll: that poll's number.</summary>
    internal long NextPoll() => Interlocked.Increment(ref _polls);

    /// <summary>Under <see cref="Lock"/>: a resumed connection has set-aside events to read.</summary>
    internal bool HasReady => _ready.Count != 0;

    /// <summary>Under <see cref="Lock"/>: events are set aside (only a Resume can make them
    /// readable without a new poll).</summary>
    internal bool HasSetAside => _heldEvents != 0;

    /// <summary>iocpsrv_disconnect (any mode) returned 0 for <paramref name="conn"/>: its
    /// packets and drains not read yet are skipped; what was set aside is dropped.</summary>
    internal void Closed(ulong conn)
    {
        lock (Lock)
        {
            long poll = Volatile.Read(ref _polls); // later polls hand out nothing of it
            _closed[conn] = poll;
            _closedOrder.Enqueue((conn, poll));
            if (_held.Remove(conn, out var h)) _heldEvents -= h.Events.Count;
            Recount();
        }
    }

    /// <summary>iocpsrv_pause_receive returned 0: its packets not read yet are set aside until
    /// <see cref="Resumed"/>.</summary>
    internal void Paused(ulong conn)
    {
        lock (Lock)
        {
            if (_held.TryGetValue(conn, out var h)) h.Paused = true;
            else _held[conn] = new Held();
            Recount();
        }
    }

    /// <summary>iocpsrv_resume_receive returned 0: what was set aside is read first.</summary>
    internal void Resumed(ulong conn)
    {
        lock (Lock)
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
        }
        Ready?.Invoke();
    }

    // Under Lock.
    private void Recount() => _entries = _closed.Count + _held.Count;

    /// <summary>Under <see cref="Lock"/>: the next set-aside event of a resumed connection, in
    /// order. Once a connection has none left, what follows of it is read directly.</summary>
    internal bool TryTakeSetAside(out ServerEvent item)
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
                    _held.Remove(conn);
                    Recount();
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

    /// <summary>Under <see cref="Lock"/>: what to do with an event of poll
    /// <paramref name="poll"/> that is about to be read. On <see cref="Admission.SetAside"/> the
    /// caller hands the event (with a payload it owns) to <see cref="SetAside"/>.</summary>
    internal Admission Admit(ServerEventType type, ulong conn, long poll)
    {
        // Events of polls after a close's last one: nothing of that connection comes before
        // them any more.
        while (_closedOrder.Count != 0 && _closedOrder.Peek().Poll < poll)
        {
            var (c, last) = _closedOrder.Dequeue();
            if (_closed.TryGetValue(c, out long current) && current == last) _closed.Remove(c);
            Recount();
        }
        switch (type)
        {
            case ServerEventType.Packet:
                if (_closed.ContainsKey(conn)) return Admission.Skip;
                return _held.ContainsKey(conn) ? Admission.SetAside : Admission.Read;
            case ServerEventType.Drained:
                return _closed.ContainsKey(conn) ? Admission.Skip : Admission.Read;
            case ServerEventType.Disconnected:
                if (!_held.TryGetValue(conn, out var h)) return Admission.Read;
                if (!h.Paused) return Admission.SetAside; // after its packets, which are ready
                _held.Remove(conn); // it ended paused: dropped, as the engine drops its own
                _heldEvents -= h.Events.Count;
                Recount();
                return Admission.Read;
            default:
                return Admission.Read;
        }
    }

    /// <summary>Under <see cref="Lock"/>, after <see cref="Admit"/> said
    /// <see cref="Admission.SetAside"/>.</summary>
    internal void SetAside(ulong conn, ServerEvent ev)
    {
        _held[conn].Events.Enqueue(ev);
        _heldEvents++;
    }
}
