using System.Threading.Tasks.Sources;

namespace Iocpsrv;

/// <summary>
/// The batch stream of one pull-mode run (<see cref="IocpServer.ReadBatchAsync"/>): the pump
/// thread and the consumer take turns, one poll per batch asked for.
/// </summary>
/// <remarks>
/// <para>Why turns, not a pump that reads ahead: the consumer's gathered sends must reach the
/// engine from the thread that polls, right before it polls (IOCPSRV_OPT_PULL_BATCH_SENDS
/// then writes them once per connection, at that poll); a pump blocked in a poll that read
/// ahead would hold them back until some event came. Polling only when a batch is asked for
/// also keeps the engine's own contract: a client's end of stream closes it only after the
/// consumer is done with the packets before it (the engine acts on it at the next poll). The
/// engine's queue is the buffer, with its back-pressure (PullQueueLimit).</para>
/// <para>A turn: the consumer asks (<see cref="ReadAsync"/>), the pump hands the gathered
/// sends over (iocpsrv_send_packed), polls (iocpsrv_poll_packed into its pooled buffer) and
/// completes the consumer's request with the batch. The consumer's code never runs on the pump
/// thread: its own sends there would be held back until the pump's next poll.</para>
/// <para>Outside the turns: events set aside while their connection was paused are handed out
/// (without a poll) as soon as they are readable, first, even to a consumer already waiting; a
/// poll that finds the request cancelled keeps its events for the next one.</para>
/// </remarks>
internal sealed class BatchReader
{
    internal const int BufferSize = 64 << 10;
    private const int PollTimeoutMs = 100; // how soon the pump sees a cancelled run or request

    private readonly IocpServer _server;
    private readonly object _lock = new();
    private readonly PackedSends _sends = new();
    private readonly PollBuffer _buffer = new(BufferSize);
    private readonly BatchRequest[] _requests = { new(), new() }; // alternate: one may still be completing
    private int _nextRequest;
    private EventEntry[] _entries = new EventEntry[256];

    private BatchRequest? _pending;      // the consumer waits for a batch
    private EventBatch? _current;        // the batch the consumer reads
    private (int Count, long Poll)? _polledAhead; // a poll's events nobody asked for any more
    private RefusedSend[] _refused = Array.Empty<RefusedSend>(); // for the next batch
    private bool _ended;

    internal BatchReader(IocpServer server, PullGate gate)
    {
        _server = server;
        Gate = gate;
    }

    internal PullGate Gate { get; }

    /// <summary>EventBatch.Send: gathered until the next hand-over.</summary>
    internal void Gather(ulong conn, ReadOnlySpan<byte> payload) => _sends.Append(conn, payload);

    /// <summary>Hands the gathered sends to the engine from this thread and returns the
    /// refused ones.</summary>
    internal RefusedSend[] HandOver(nint server) => _sends.HandOver(server);

    /// <summary>The pump before each poll, and Stop before the native stop (so that a graceful
    /// stop writes them): the refusals are listed in the next batch.</summary>
    internal void HandOverNow(nint server)
    {
        var refused = _sends.HandOver(server);
        if (refused.Length != 0) AddRefused(refused);
    }

    /// <summary>EventBatch.FlushSends.</summary>
    internal RefusedSend[] Flush() => _server.FlushGathered(this, forNextBatch: false);

    private void AddRefused(RefusedSend[] refused)
    {
        lock (_lock) _refused = _refused.Length == 0 ? refused : [.. _refused, .. refused];
    }

    private RefusedSend[] TakeRefused()
    {
        var r = _refused;
        _refused = Array.Empty<RefusedSend>();
        return r;
    }

    // ---- The consumer's side ----

    /// <summary>The next batch: the rest of the current one if it was not read to the end,
    /// else set-aside events made readable by a Resume, else a poll's events; null once the run
    /// has ended and everything was read.</summary>
    internal ValueTask<EventBatch?> ReadAsync(nint server, CancellationToken cancellationToken)
    {
        if (cancellationToken.IsCancellationRequested) return ValueTask.FromCanceled<EventBatch?>(cancellationToken);
        (int Count, long Poll) ahead;
        lock (_lock)
        {
            if (_pending is not null) throw new InvalidOperationException("ReadBatchAsync is already waiting: one reader at a time.");
            if (_current is { HasUnread: true } rest) return new(rest);
            _current?.Replace();
            _current = null;
            if (TryTakeSetAsideLocked() is { } held) return new(held);
            if (_polledAhead is null)
            {
                if (_ended) return new((EventBatch?)null);
                return Wait(cancellationToken);
            }
            ahead = _polledAhead.Value;
            _polledAhead = null;
        }
        // A poll made ahead (its request was cancelled): the pump is idle, so the sends go from
        // here (written at once, as from any thread that does not poll).
        HandOverNow(server);
        lock (_lock) return new(_current = NewBatch(_entries, ahead.Count, ahead.Poll));
    }

    // Under _lock.
    private ValueTask<EventBatch?> Wait(CancellationToken cancellationToken)
    {
        var request = _requests[_nextRequest ^= 1];
        request.Reset();
        _pending = request;
        Monitor.PulseAll(_lock);
        request.CancelOn(cancellationToken, this);
        return new ValueTask<EventBatch?>(request, request.Version);
    }

    // Under _lock: the set-aside events a Resume made readable, as a batch of their own.
    private EventBatch? TryTakeSetAsideLocked()
    {
        List<EventEntry>? held = null;
        lock (Gate.Lock)
        {
            if (!Gate.HasReady) return null;
            while (Gate.TryTakeSetAside(out var ev)) (held ??= new()).Add(EventEntry.From(ev));
        }
        if (held is null) return null;
        return _current = NewBatch(held.ToArray(), held.Count, poll: 0);
    }

    // Under _lock.
    private EventBatch NewBatch(EventEntry[] entries, int count, long poll) => new(this, entries, count, poll, TakeRefused());

    /// <summary>The gate's Ready: a consumer already waiting gets the set-aside events now.</summary>
    internal void OnSetAsideReady()
    {
        BatchRequest? request;
        EventBatch? batch;
        lock (_lock)
        {
            request = _pending;
            if (request is null || (batch = TryTakeSetAsideLocked()) is null) return;
            _pending = null;
        }
        request.Complete(batch);
    }

    /// <summary>The request's token fired: it completes cancelled (a poll under way keeps its
    /// events for the next request).</summary>
    internal void Cancel(BatchRequest request, short version, CancellationToken cancellationToken)
    {
        lock (_lock)
        {
            // The version: a registration left from an earlier use of this request object must
            // not cancel a later read.
            if (_pending != request || request.Version != version) return;
            _pending = null;
        }
        request.Fail(new OperationCanceledException(cancellationToken));
    }

    // ---- The pump's side ----

    /// <summary>The pump thread's loop, until the run's end (the engine reports it stopped and
    /// drained) or <paramref name="stop"/>.</summary>
    internal void Run(nint server, CancellationToken stop, Action<EventEntry> observe)
    {
        using var wake = stop.UnsafeRegister(static s =>
        {
            var self = (BatchReader)s!;
            lock (self._lock) Monitor.PulseAll(self._lock);
        }, this);
        try
        {
            while (WaitForRequest(stop))
            {
                if (!PollForRequest(server, stop, observe)) break;
            }
        }
        finally
        {
            End();
        }
    }

    private bool WaitForRequest(CancellationToken stop)
    {
        lock (_lock)
        {
            while (_pending is null && !stop.IsCancellationRequested) Monitor.Wait(_lock);
            return !stop.IsCancellationRequested;
        }
    }

    // Polls until events come (handed to the request, or kept if it went away meanwhile) or
    // the request goes away. False once the run has ended.
    private bool PollForRequest(nint server, CancellationToken stop, Action<EventEntry> observe)
    {
        while (!stop.IsCancellationRequested)
        {
            HandOverNow(server); // written by the poll below, once per connection (the pump is the polling thread)
            long poll = Gate.NextPoll();
            long n = _buffer.Poll(server, PollTimeoutMs);
            if (n == (int)IocpsrvError.Stopped) return false;
            if (n < 0) throw new IocpsrvException((int)n, "iocpsrv_poll_packed");
            if (n > 0)
            {
                int count = Parse(n, observe);
                Deliver(count, poll);
                return true;
            }
            lock (_lock)
            {
                if (_pending is null) return true; // cancelled: wait for the next request
            }
        }
        return false;
    }

    private int Parse(long written, Action<EventEntry> observe)
    {
        byte[] buffer = _buffer.Array;
        int count = 0, offset = 0;
        while (offset < written)
        {
            var entry = PackedRecords.ReadEvent(buffer, (int)written, ref offset);
            if (count == _entries.Length) Array.Resize(ref _entries, count * 2);
            _entries[count++] = entry;
            observe(entry);
        }
        return count;
    }

    private void Deliver(int count, long poll)
    {
        BatchRequest? request;
        EventBatch batch;
        lock (_lock)
        {
            request = _pending;
            if (request is null)
            {
                _polledAhead = (count, poll);
                return;
            }
            _pending = null;
            batch = _current = NewBatch(_entries, count, poll);
        }
        request.Complete(batch);
    }

    /// <summary>The run has ended (or the pump stops): a waiting consumer gets null, later ones
    /// after the events still here.</summary>
    internal void End()
    {
        BatchRequest? request;
        lock (_lock)
        {
            _ended = true;
            request = _pending;
            _pending = null;
        }
        request?.Complete(null);
    }

    /// <summary>One ReadBatchAsync that waits: a reusable IValueTaskSource (no allocation per
    /// batch). Its continuation always runs on the thread pool: never on the pump thread,
    /// where the consumer's sends would be held back, nor inside Resume.</summary>
    internal sealed class BatchRequest : IValueTaskSource<EventBatch?>
    {
        private ManualResetValueTaskSourceCore<EventBatch?> _core = new() { RunContinuationsAsynchronously = true };
        private CancellationTokenRegistration _cancel;

        internal short Version => _core.Version;

        internal void Reset() => _core.Reset();

        internal void CancelOn(CancellationToken token, BatchReader reader)
        {
            _cancel = token.CanBeCanceled
                ? token.UnsafeRegister(static (s, t) =>
                {
                    var (request, owner, version) = ((BatchRequest, BatchReader, short))s!;
                    owner.Cancel(request, version, t);
                }, (this, reader, Version))
                : default;
        }

        internal void Complete(EventBatch? batch)
        {
            _cancel.Unregister();
            _core.SetResult(batch);
        }

        internal void Fail(Exception error)
        {
            _core.SetException(error);
        }

        public EventBatch? GetResult(short token) => _core.GetResult(token);

        public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

        public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
            => _core.OnCompleted(continuation, state, token, flags);
    }
}
