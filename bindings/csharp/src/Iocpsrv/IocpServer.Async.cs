using System.Runtime.CompilerServices;

namespace Iocpsrv;

// The async members of IocpServer. In a file of their own because the main part is an
// unsafe context, where C# allows no await.
public sealed partial class IocpServer
{
    // Waits for `stop`; if the token fires first, resets every connection the stop is closing
    // (its Closing flag is set: the stop, not a Disconnect of ours, began the close, so the
    // reason stays ServerStopped) until the stop has finished.
    private async Task ResetOnCancel(Task stop, CancellationToken cancellationToken)
    {
        var cancelled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using (cancellationToken.UnsafeRegister(static s => ((TaskCompletionSource)s!).TrySetResult(), cancelled))
        {
            if (await Task.WhenAny(stop, cancelled.Task).ConfigureAwait(false) == stop)
            {
                await stop.ConfigureAwait(false);
                return;
            }
        }
        while (!stop.IsCompleted)
        {
            ResetClosingConnections();
            await Task.WhenAny(stop, Task.Delay(10)).ConfigureAwait(false);
        }
        await stop.ConfigureAwait(false);
    }

    /// <summary>
    /// Stops gracefully (<see cref="StopAsync(CancellationToken)"/>, with the
    /// <see cref="DefaultStopTimeout"/> limit) if running, then frees the server as
    /// <see cref="Dispose"/> does. Unlike <see cref="Dispose"/>, which resets the connections
    /// at once, queued sends are written first. From a handler of this server it is
    /// <see cref="Dispose"/>.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (IsDisposed) return;
        if (!IsHandlerThread && _running) await StopAsync(DefaultStopTimeout).ConfigureAwait(false);
        Dispose();
    }

    // ---- Pull mode, in batches ----

    /// <summary>
    /// Pull mode: the next batch of events, read in place (no copy, no allocation per event;
    /// payloads valid until the next call), or null once the server has stopped and every event
    /// of the run was read. Each call polls the engine once (one native call) and first hands
    /// over the replies gathered with <see cref="EventBatch.Send"/> (one more). A batch not read
    /// to the end is returned again with the rest. One reader at a time; a run is read either
    /// with this or with <see cref="Events"/>, not both.
    /// </summary>
    /// <exception cref="InvalidOperationException">Not a pull-mode server; another call is
    /// waiting; or this run's events are read with <see cref="Events"/>.</exception>
    /// <exception cref="OperationCanceledException">The token fired while waiting (events that
    /// came meanwhile are kept for the next call).</exception>
    public ValueTask<EventBatch?> ReadBatchAsync(CancellationToken cancellationToken = default)
        => ReadBatchFrom(BatchesOfThisRun(), cancellationToken);

    /// <summary>Pull mode: <see cref="ReadBatchAsync"/> as an async stream of batches; it ends
    /// when the server has stopped and every event was read. Leaving the loop early hands over
    /// the replies gathered so far.</summary>
    public IAsyncEnumerable<EventBatch> ReadBatchesAsync(CancellationToken cancellationToken = default)
        => ReadBatches(BatchesOfThisRun(), cancellationToken);

    private BatchReader BatchesOfThisRun()
    {
        ThrowIfDisposed();
        ThrowIfNotPullMode(nameof(ReadBatchAsync));
        return Volatile.Read(ref _pull).UseBatches();
    }

    private ValueTask<EventBatch?> ReadBatchFrom(BatchReader reader, CancellationToken cancellationToken)
    {
        using var r = Use();
        return reader.ReadAsync(r.P, cancellationToken);
    }

    private async IAsyncEnumerable<EventBatch> ReadBatches(BatchReader reader, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        try
        {
            while (await ReadBatchFrom(reader, cancellationToken).ConfigureAwait(false) is { } batch) yield return batch;
        }
        finally
        {
            FlushGatheredIfRunning(reader);
        }
    }

    // Leaving a ReadBatchesAsync loop early: its last replies must not wait for a batch nobody
    // will ask for.
    private void FlushGatheredIfRunning(BatchReader reader)
    {
        if (!_running || IsDisposed) return;
        try
        {
            FlushGathered(reader, forNextBatch: true);
        }
        catch (ObjectDisposedException)
        {
            // disposed meanwhile: nothing is written any more
        }
    }

    // ---- Sending when there is room ----

    /// <summary>How often a pull-mode <see cref="SendAsync"/> also looks at the queue itself
    /// (internal so that tests can turn it off and see the drain do the work).</summary>
    internal static TimeSpan RoomCheckInterval = TimeSpan.FromMilliseconds(20);

    /// <summary>
    /// Queues one packet (copied), waiting for room when the connection's queue is over
    /// <see cref="IocpServerOptions.SendQueueLimit"/> instead of failing with QueueFull: the
    /// send is tried again each time the engine drains the queue (the <see cref="Drained"/>
    /// moment), until it is queued. Completes at once when there is room. Keep
    /// <paramref name="payload"/> unchanged until then. Await each call before the next send
    /// to the same connection to keep their order.
    /// <para>Pull mode: the engine reports a drain as an event of the stream, so the queue is
    /// also looked at every 20 ms while the send waits; it completes even when nobody reads the
    /// stream (a consumer awaiting it in its reading loop).</para>
    /// </summary>
    /// <exception cref="IocpsrvException">NotConnected: the connection is unknown, or ended while
    /// the send waited; OutOfMemory.</exception>
    /// <exception cref="ArgumentException">The payload is larger than MaxPacketSize.</exception>
    /// <exception cref="InvalidOperationException">The server is not running, or stopped while
    /// the send waited.</exception>
    /// <exception cref="OperationCanceledException">The token fired while the send waited
    /// (the packet was not queued).</exception>
    /// <exception cref="ObjectDisposedException">The server was disposed.</exception>
    public ValueTask SendAsync(ConnectionId connection, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken = default)
    {
        ThrowIfDisposed();
        if (cancellationToken.IsCancellationRequested) return ValueTask.FromCanceled(cancellationToken);
        int rc = SendCore(connection, payload.Span);
        if (rc == 0) return ValueTask.CompletedTask;
        if (rc != (int)IocpsrvError.QueueFull) return ValueTask.FromException(SendError(rc, "iocpsrv_send", nameof(payload)));
        return SendWhenRoom(connection, payload, cancellationToken);
    }

    private async ValueTask SendWhenRoom(ConnectionId connection, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        while (true)
        {
            var drained = _room.Register(connection.Value);
            try
            {
                // Tried again once registered: the engine drains once after every refusal, so
                // the drain of a refusal from here on cannot be missed.
                int rc = SendCore(connection, payload.Span);
                if (rc == 0) return;
                if (rc != (int)IocpsrvError.QueueFull) throw SendError(rc, "iocpsrv_send", nameof(payload));
                await WaitForRoom(drained.Task, connection, cancellationToken).ConfigureAwait(false);
            }
            finally
            {
                _room.Unregister(connection.Value, drained);
            }
        }
    }

    private async Task WaitForRoom(Task drained, ConnectionId connection, CancellationToken cancellationToken)
    {
        if (!_pullMode)
        {
            await drained.WaitAsync(cancellationToken).ConfigureAwait(false);
            return;
        }
        // The drain is an event of the stream, and a stream nobody reads would never bring it:
        // the queue is looked at as well, and below half its limit (the drain's own test) the
        // send is tried again.
        while (true)
        {
            var tick = Task.Delay(RoomCheckInterval, cancellationToken);
            if (await Task.WhenAny(drained, tick).ConfigureAwait(false) == drained)
            {
                await drained.ConfigureAwait(false); // throws if the connection ended
                return;
            }
            await tick.ConfigureAwait(false); // throws if cancelled
            if (QueueBelowHalf(connection)) return;
        }
    }
}
