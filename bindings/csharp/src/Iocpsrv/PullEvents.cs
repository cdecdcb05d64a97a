using System.Threading.Channels;

namespace Iocpsrv;

/// <summary>One event the pump took from the engine, with the number of the poll that took
/// it (polls are numbered from 1, in order).</summary>
internal readonly record struct PulledEvent(ServerEvent Event, long Poll);

/// <summary>
/// The event stream of one pull-mode run as <see cref="IocpServer.Events"/> hands it out:
/// owned <see cref="ServerEvent"/>s in a bounded channel, with the <see cref="PullGate"/>
/// applying Disconnect, Refuse and Pause to the events still in it.
/// </summary>
/// <remarks>One reader at a time (the channel's own rule for per-connection order). The pump
/// writes; any thread may call the gate.</remarks>
internal sealed class PullEvents : ChannelReader<ServerEvent>
{
    private readonly Channel<PulledEvent> _channel;
    private readonly PullGate _gate;
    private TaskCompletionSource<bool>? _readySignal; // a reader waiting while events are set aside; under the gate's lock
    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);

    internal PullEvents(int capacity, PullGate gate)
    {
        _gate = gate;
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

    /// <summary>The gate saw a Resume make set-aside events readable: wake a waiting reader.</summary>
    internal void OnReady()
    {
        TaskCompletionSource<bool>? wake;
        lock (_gate.Lock)
        {
            wake = _readySignal;
            _readySignal = null;
        }
        wake?.TrySetResult(true);
    }

    /// <inheritdoc />
    public override bool TryRead(out ServerEvent item)
    {
        if (!_gate.Active)
        {
            if (_channel.Reader.TryRead(out var p))
            {
                item = p.Event;
                return true;
            }
        }
        else
        {
            lock (_gate.Lock)
            {
                if (_gate.TryTakeSetAside(out item))
                {
                    if (!_gate.HasReady && _channel.Reader.Completion.IsCompleted && _channel.Reader.Count == 0) _completion.TrySetResult();
                    return true;
                }
                while (_channel.Reader.TryRead(out var p))
                {
                    item = p.Event;
                    ulong conn = item.Connection.Value;
                    switch (_gate.Admit(item.Type, conn, p.Poll))
                    {
                        case Admission.Read: return true;
                        case Admission.SetAside: _gate.SetAside(conn, item); break;
                    }
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
        lock (_gate.Lock)
        {
            if (!_gate.HasReady && _channel.Reader.Count == 0) _completion.TrySetResult();
        }
    }

    /// <inheritdoc />
    public override ValueTask<bool> WaitToReadAsync(CancellationToken cancellationToken = default)
    {
        TaskCompletionSource<bool>? signal = null;
        if (_gate.Active)
        {
            lock (_gate.Lock)
            {
                if (_gate.HasReady) return new ValueTask<bool>(true);
                // Only set-aside events can become readable without the channel (a Resume).
                if (_gate.HasSetAside) signal = _readySignal ??= new(TaskCreationOptions.RunContinuationsAsynchronously);
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
}
