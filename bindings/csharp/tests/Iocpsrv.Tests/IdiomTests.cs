using System.Collections.Concurrent;
using System.Text;

namespace Iocpsrv.Tests;

/// <summary>The .NET idioms: StopAsync (graceful, cancellable), IAsyncDisposable,
/// ObjectDisposedException after Dispose, typed exceptions, TrySend's bool + error.</summary>
public class IdiomTests
{
    /// <summary>A server that records every Disconnected and hands out the first client's id.</summary>
    private sealed class Watched : IDisposable
    {
        public readonly IocpServer Server;
        public readonly ConcurrentQueue<DisconnectReason> Reasons = new();
        public readonly TaskCompletionSource<ConnectionId> First = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Watched(IocpServerOptions? options = null)
        {
            Server = T.EchoServer(options);
            Server.Connected += (s, e) => First.TrySetResult(e.Connection);
            Server.Disconnected += (s, e) => Reasons.Enqueue(e.Reason);
            Server.Start();
        }

        public void Dispose() => Server.Dispose();
    }

    [Fact]
    public async Task StopAsyncIsGracefulAndReturnsBeforeTheStopEnds()
    {
        using var w = new Watched();
        using var c = await Client.ConnectAsync(w.Server.Port);
        var id = await w.First.Task.Within();
        var big = T.Pattern(1 << 20, 3);
        w.Server.Send(id, big);

        Task stop = w.Server.StopAsync(TimeSpan.FromSeconds(30));
        // The client has neither read the packet nor closed: a graceful stop cannot end yet,
        // and StopAsync did not wait for it.
        await Task.Delay(200);
        Assert.False(stop.IsCompleted);

        Assert.Equal(big, await c.ReadAsync());      // queued before the stop: written
        Assert.True(await c.ClosedByServerAsync());  // then our FIN, and the client's
        await stop.Within();
        Assert.False(w.Server.IsRunning);
        Assert.True(w.Server.WhenStopped.IsCompleted);
        Assert.Equal(DisconnectReason.ServerStopped, Assert.Single(w.Reasons));
    }

    [Fact]
    public async Task CancellingStopAsyncResetsTheConnectionsStillClosing()
    {
        using var w = new Watched();
        using var c = await Client.ConnectAsync(w.Server.Port);
        await w.First.Task.Within();
        using var cts = new CancellationTokenSource();

        // No limit: the stop waits for a client that never closes, until cancelled.
        Task stop = w.Server.StopAsync(Timeout.InfiniteTimeSpan, cts.Token);
        await Task.Delay(300);
        Assert.False(stop.IsCompleted);
        Assert.True(w.Server.IsRunning);
        cts.Cancel();
        await stop.Within(); // completes, and does not throw OperationCanceledException
        Assert.False(w.Server.IsRunning);
        Assert.Equal(DisconnectReason.ServerStopped, Assert.Single(w.Reasons));
        Assert.True(await c.ClosedByServerAsync());

        // The server starts again after a cancelled stop.
        w.Server.Start();
        using var again = await Client.ConnectAsync(w.Server.Port);
        await again.SendAsync(new byte[] { 9 });
        Assert.Equal(new byte[] { 9 }, await again.ReadAsync());
    }

    [Fact]
    public async Task StopAsyncWithACancelledTokenIsAbortive()
    {
        using var w = new Watched();
        using var c = await Client.ConnectAsync(w.Server.Port);
        await w.First.Task.Within();
        var started = DateTime.UtcNow;
        await w.Server.StopAsync(Timeout.InfiniteTimeSpan, new CancellationToken(true)).Within();
        Assert.False(w.Server.IsRunning);
        Assert.Equal(DisconnectReason.ServerStopped, Assert.Single(w.Reasons));
        Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(20));
    }

    [Fact]
    public async Task StopAsyncWhenNotRunningOrDisposedCompletes()
    {
        var server = new IocpServer();
        Assert.True(server.StopAsync().IsCompleted);
        server.Start();
        await server.StopAsync().Within();
        await server.StopAsync().Within(); // again: nothing to do
        server.Dispose();
        Assert.True(server.StopAsync().IsCompleted);
        // Argument errors are thrown by the call itself, not through the task.
        Assert.Throws<ArgumentOutOfRangeException>(() => { _ = server.StopAsync(TimeSpan.FromSeconds(-1)); });
    }

    [Fact]
    public async Task StopAsyncFromAHandler()
    {
        using var server = T.EchoServer();
        var stopTask = new TaskCompletionSource<Task>(TaskCreationOptions.RunContinuationsAsynchronously);
        server.PacketReceived += (s, id, data) =>
        {
            if (data.Length == 0) stopTask.TrySetResult(s.StopAsync(TimeSpan.Zero));
        };
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        await c.SendAsync(Array.Empty<byte>());
        var stop = await stopTask.Task.Within();
        await stop.Within();
        Assert.False(server.IsRunning);
    }

    [Fact]
    public async Task DisposeAsyncWritesQueuedSendsFirst()
    {
        var w = new Watched();
        using var c = await Client.ConnectAsync(w.Server.Port);
        var id = await w.First.Task.Within();
        var big = T.Pattern(1 << 20, 5);
        w.Server.Send(id, big);
        var read = Task.Run(async () =>
        {
            var p = await c.ReadAsync();
            await c.ClosedByServerAsync();
            return p;
        });
        await w.Server.DisposeAsync().AsTask().Within();
        Assert.True(w.Server.IsDisposed);
        Assert.False(w.Server.IsRunning);
        Assert.Equal(big, await read.Within());
        Assert.Equal(DisconnectReason.ServerStopped, Assert.Single(w.Reasons));
        await w.Server.DisposeAsync(); // twice: nothing
        Assert.Throws<ObjectDisposedException>(() => w.Server.Stats);
    }

    [Fact]
    public async Task AwaitUsingDisposesAStoppedServer()
    {
        IocpServer kept;
        await using (var server = new IocpServer())
        {
            kept = server;
            server.Start();
        }
        Assert.True(kept.IsDisposed);
        Assert.False(kept.IsRunning);
    }

    [Fact]
    public void EveryMemberThrowsObjectDisposedExceptionAfterDispose()
    {
        var server = new IocpServer(new IocpServerOptions { PullMode = true });
        server.Start();
        var id = new ConnectionId(1);
        server.Dispose();
        var members = new Dictionary<string, Action>
        {
            ["Start"] = () => server.Start(),
            ["Port"] = () => _ = server.Port,
            ["Stats"] = () => _ = server.Stats,
            ["ConnectionCount"] = () => _ = server.ConnectionCount,
            ["Connections"] = () => _ = server.Connections,
            ["SetOption"] = () => server.SetOption(ServerOption.MaxConnections, 5),
            ["GetOption"] = () => server.GetOption(ServerOption.MaxConnections),
            ["SetOptionString"] = () => server.SetOptionString(ServerOption.ProxyTrusted, "::1"),
            ["GetOptionString"] = () => server.GetOptionString(ServerOption.ProxyTrusted),
            ["Send"] = () => server.Send(id, new byte[1]),
            ["Send(head, body)"] = () => server.Send(id, new byte[1], new byte[1]),
            ["Broadcast"] = () => server.Broadcast(new byte[1]),
            ["Disconnect"] = () => server.Disconnect(id),
            ["Pause"] = () => server.Pause(id),
            ["Resume"] = () => server.Resume(id),
            ["PendingBytes"] = () => server.PendingBytes(id),
            ["GetInfo"] = () => server.GetInfo(id),
            ["TryGetInfo"] = () => server.TryGetInfo(id, out _),
            ["Events"] = () => _ = server.Events,
            ["ReadEventsAsync"] = () => server.ReadEventsAsync(),
        };
        foreach (var (name, call) in members)
        {
            var ex = Record.Exception(call);
            Assert.True(ex is ObjectDisposedException, $"{name} threw {ex?.GetType().Name ?? "nothing"}");
        }
        // These are safe to call after Dispose.
        Assert.False(server.TrySend(id, new byte[1], out var error));
        Assert.Equal(IocpsrvError.Stopped, error);
        Assert.False(server.TrySend(id, new byte[1], new byte[1]));
        server.Stop();
        server.Dispose();
        Assert.True(server.IsDisposed);
        Assert.False(server.IsRunning);
        Assert.True(server.WhenStopped.IsCompleted);
    }

    [Fact]
    public void LibraryErrorsMapToTheExpectedExceptionTypes()
    {
        var expected = new Dictionary<IocpsrvError, Type>
        {
            [IocpsrvError.InvalidArgument] = typeof(ArgumentException),
            [IocpsrvError.Range] = typeof(ArgumentException),
            [IocpsrvError.UnknownOption] = typeof(ArgumentException),
            [IocpsrvError.TooBig] = typeof(ArgumentException),
            [IocpsrvError.NoSpace] = typeof(ArgumentException),
            [IocpsrvError.State] = typeof(InvalidOperationException),
            [IocpsrvError.InCallback] = typeof(InvalidOperationException),
            [IocpsrvError.Busy] = typeof(InvalidOperationException),
            [IocpsrvError.Stopped] = typeof(InvalidOperationException),
            [IocpsrvError.NotSupported] = typeof(NotSupportedException),
            [IocpsrvError.NotConnected] = typeof(IocpsrvException),
            [IocpsrvError.QueueFull] = typeof(IocpsrvException),
            [IocpsrvError.OutOfMemory] = typeof(IocpsrvException),
            [IocpsrvError.AddressInUse] = typeof(IocpsrvException),
            [IocpsrvError.AddressNotAvailable] = typeof(IocpsrvException),
            [IocpsrvError.System] = typeof(IocpsrvException),
            [IocpsrvError.AccessDenied] = typeof(IocpsrvException),
            [IocpsrvError.Limit] = typeof(IocpsrvException),
        };
        foreach (IocpsrvError code in Enum.GetValues<IocpsrvError>())
        {
            if (code == IocpsrvError.Ok) continue;
            Assert.True(expected.ContainsKey(code), $"{code} has no expected exception type");
            var ex = Errors.For((int)code, "op", "arg");
            Assert.Equal(expected[code], ex.GetType());
            var lib = ex as IocpsrvException ?? Assert.IsType<IocpsrvException>(ex.InnerException);
            Assert.Equal(code, lib.Error);
            Assert.StartsWith("op: " + IocpServer.ErrorName((int)code), lib.Message);
            Assert.Contains(lib.Message, ex.Message);
            if (ex is ArgumentException arg) Assert.Equal("arg", arg.ParamName);
        }
    }

    [Fact]
    public async Task TrySendSaysWhy()
    {
        using var w = new Watched(new IocpServerOptions { WorkerThreads = 2, MaxPacketSize = 16 });
        using var c = await Client.ConnectAsync(w.Server.Port);
        var id = await w.First.Task.Within();
        Assert.True(w.Server.TrySend(id, Encoding.ASCII.GetBytes("ok"), out var error));
        Assert.Equal(IocpsrvError.Ok, error);
        Assert.True(w.Server.TrySend(id, Encoding.ASCII.GetBytes("he"), Encoding.ASCII.GetBytes("ad"), out error));
        Assert.Equal(IocpsrvError.Ok, error);
        Assert.False(w.Server.TrySend(id, new byte[17], out error));
        Assert.Equal(IocpsrvError.TooBig, error);
        Assert.False(w.Server.TrySend(new ConnectionId(987654321), new byte[1], out error));
        Assert.Equal(IocpsrvError.NotConnected, error);
        Assert.Equal("ok", Encoding.ASCII.GetString(await c.ReadAsync()));
        Assert.Equal("head", Encoding.ASCII.GetString(await c.ReadAsync()));
        w.Server.Stop();
        Assert.False(w.Server.TrySend(id, new byte[1], out error));
        Assert.Contains(error, new[] { IocpsrvError.Stopped, IocpsrvError.NotConnected });
        Assert.Throws<InvalidOperationException>(() => w.Server.Broadcast(new byte[1]));
        Assert.False(w.Server.Disconnect(id)); // every connection ended with the stop
    }
}
