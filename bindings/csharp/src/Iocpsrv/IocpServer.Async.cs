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
}
