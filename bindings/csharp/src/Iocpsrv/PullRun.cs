namespace Iocpsrv;

/// <summary>
/// One pull-mode run's event stream and the thread that polls for it. The stream is read in one
/// of two ways, chosen by the first reader: <see cref="IocpServer.Events"/> /
/// <see cref="IocpServer.ReadEventsAsync"/> (owned <see cref="ServerEvent"/>s through a bounded
/// channel; the pump polls ahead) or <see cref="IocpServer.ReadBatchAsync"/> (batches read in
/// place; the pump polls when asked). Until a reader comes the pump does not poll: the events
/// wait in the engine, whose queue limit pushes back on the clients.
/// </summary>
internal sealed class PullRun
{
    private enum Mode { Undecided, Channel, Batches }

    private readonly IocpServer _server;
    private readonly object _lock = new();
    private Mode _mode;
    private Thread? _pump;
    private CancellationTokenSource? _stop;

    internal PullRun(IocpServer server, int channelCapacity)
    {
        _server = server;
        ChannelCapacity = channelCapacity;
        Channel = new PullEvents(channelCapacity, Gate);
        Batches = new BatchReader(server, Gate);
    }

    internal PullGate Gate { get; } = new();

    /// <summary>Set (under the server's attempts lock) once this run's pump has ended: no
    /// ConnectAsync outcome is taken from its stream any more.</summary>
    internal bool AttemptsEnded;
    internal int ChannelCapacity { get; }
    internal PullEvents Channel { get; }
    internal BatchReader Batches { get; }

    /// <summary>True on this run's pump thread.</summary>
    internal bool IsPumpThread => _pump == Thread.CurrentThread;

    /// <summary>The channel is this run's reader (throws if batches are).</summary>
    internal PullEvents UseChannel()
    {
        Choose(Mode.Channel);
        return Channel;
    }

    /// <summary>Batches are this run's reader (throws if the channel is).</summary>
    internal BatchReader UseBatches()
    {
        Choose(Mode.Batches);
        return Batches;
    }

    private void Choose(Mode mode)
    {
        lock (_lock)
        {
            if (_mode == mode) return;
            if (_mode != Mode.Undecided)
                throw new InvalidOperationException("A run's events are read either as batches (ReadBatchAsync) or one by one (Events, ReadEventsAsync), not both.");
            _mode = mode;
            Gate.Ready = mode == Mode.Channel ? Channel.OnReady : Batches.OnSetAsideReady;
            Monitor.PulseAll(_lock);
        }
    }

    /// <summary>Starts the pump (after a successful listen).</summary>
    internal void Start(Action<PullRun, CancellationToken> pump)
    {
        var stop = new CancellationTokenSource();
        var thread = new Thread(() => pump(this, stop.Token)) { IsBackground = true, Name = "iocpsrv-pull" };
        _stop = stop;
        _pump = thread;
        thread.Start();
    }

    /// <summary>The pump's first step: blocks until a reader chose how to read (false if the
    /// run is stopped first).</summary>
    internal bool WaitForReader(CancellationToken stop, out bool batches)
    {
        using var wake = stop.UnsafeRegister(static s =>
        {
            var self = (PullRun)s!;
            lock (self._lock) Monitor.PulseAll(self._lock);
        }, this);
        lock (_lock)
        {
            while (_mode == Mode.Undecided && !stop.IsCancellationRequested) Monitor.Wait(_lock);
            batches = _mode == Mode.Batches;
            return !stop.IsCancellationRequested;
        }
    }

    /// <summary>Whether the pump was started (a run that listened).</summary>
    internal bool Started => _pump is not null;

    /// <summary>Stops the pump and waits for it, except on the pump thread itself (a handler
    /// of UnhandledCallbackException reporting the pump may dispose the server), which ends
    /// once it returns.</summary>
    internal void StopPump()
    {
        if (_pump is null) return;
        _stop!.Cancel();
        if (IsPumpThread) return;
        _pump.Join();
        _stop.Dispose(); // only once the pump, which registers on its token, is gone
    }

    /// <summary>Ends the stream for readers (either kind): what was taken is still read, then
    /// it ends. Also for a run whose pump never started, so that no reader waits forever.</summary>
    internal void Complete()
    {
        Channel.Writer.TryComplete();
        Batches.End();
    }
}
