using System.Collections.Concurrent;
using System.Text;

namespace Iocpsrv.Tests;

/// <summary>Exceptions in handlers, and Stop/Dispose from handler threads.</summary>
public class HandlerTests
{
    [Fact]
    public async Task ThrowingPacketHandlerIsReportedAndClosesOnlyThatConnection()
    {
        using var server = new IocpServer();
        var reported = new TaskCompletionSource<CallbackExceptionEventArgs>(TaskCreationOptions.RunContinuationsAsynchronously);
        var reasons = new ConcurrentDictionary<ulong, DisconnectReason>();
        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        server.PacketReceived += (s, id, data) =>
        {
            if (data.Length == 4 && Encoding.ASCII.GetString(data) == "boom") throw new InvalidOperationException("handler failure");
            s.Send(id, data);
        };
        server.UnhandledCallbackException += (s, e) => reported.TrySetResult(e);
        server.Disconnected += (s, e) =>
        {
            reasons[e.Connection.Value] = e.Reason;
            closed.TrySetResult();
        };
        server.Start();

        using var good = await Client.ConnectAsync(server.Port);
        using var bad = await Client.ConnectAsync(server.Port);
        await bad.SendAsync(Encoding.ASCII.GetBytes("boom"));
        var e = await reported.Task.Within();
        Assert.IsType<InvalidOperationException>(e.Exception);
        Assert.Equal("handler failure", e.Exception.Message);
        Assert.Equal(CallbackKind.PacketReceived, e.Callback);
        Assert.True(await bad.ClosedByServerAsync()); // default: CloseConnection = true
        await closed.Task.Within();
        Assert.Equal(DisconnectReason.LocalClose, Assert.Single(reasons.Values));
        Assert.Equal(e.Connection.Value, Assert.Single(reasons.Keys));

        // The process and the other connection are fine.
        await good.SendAsync(Encoding.ASCII.GetBytes("still here"));
        Assert.Equal("still here", Encoding.ASCII.GetString(await good.ReadAsync()));
    }

    [Fact]
    public async Task ReporterCanKeepTheConnectionOpen()
    {
        using var server = new IocpServer();
        int reports = 0;
        server.PacketReceived += (s, id, data) =>
        {
            if (data[0] == 0) throw new FormatException("bad packet");
            s.Send(id, data);
        };
        server.UnhandledCallbackException += (s, e) =>
        {
            Interlocked.Increment(ref reports);
            e.CloseConnection = false;
        };
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        await c.SendAsync(new byte[] { 0 });
        await c.SendAsync(new byte[] { 1 });
        Assert.Equal(new byte[] { 1 }, await c.ReadAsync());
        Assert.Equal(1, Volatile.Read(ref reports));
    }

    [Fact]
    public async Task ThrowingConnectRefusesAndThrowingDisconnectIsReported()
    {
        using var server = new IocpServer();
        var kinds = new ConcurrentQueue<CallbackKind>();
        var disconnectReported = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        int n = 0;
        server.Connected += (s, e) =>
        {
            if (Interlocked.Increment(ref n) == 1) throw new Exception("refuse me");
        };
        server.Disconnected += (s, e) => throw new Exception("in disconnect");
        server.UnhandledCallbackException += (s, e) =>
        {
            kinds.Enqueue(e.Callback);
            if (e.Callback == CallbackKind.Disconnected) disconnectReported.TrySetResult();
        };
        server.Start();
        using (var first = await Client.ConnectAsync(server.Port))
            Assert.True(await first.ClosedByServerAsync());
        using (var second = await Client.ConnectAsync(server.Port))
        {
            second.ShutdownSend();
            Assert.True(await second.ClosedByServerAsync());
        }
        await disconnectReported.Task.Within();
        Assert.Equal(new[] { CallbackKind.Connected, CallbackKind.Disconnected }, kinds.ToArray());
        Assert.Equal(1UL, server.Stats.ConnectionsRejected);
    }

    [Fact]
    public async Task ThrowingReporterAndNoReporterDoNotCrash()
    {
        using var server = new IocpServer();
        server.PacketReceived += (s, id, data) => throw new Exception("test: unreported handler exception (expected on stderr)");
        server.Start();
        using (var c = await Client.ConnectAsync(server.Port))
        {
            await c.SendAsync(new byte[] { 1 });
            Assert.True(await c.ClosedByServerAsync());
        }
        server.UnhandledCallbackException += (s, e) => throw new Exception("test: the reporter throws too (expected on stderr)");
        using (var c = await Client.ConnectAsync(server.Port))
        {
            await c.SendAsync(new byte[] { 1 });
            Assert.True(await c.ClosedByServerAsync());
        }
    }

    [Fact]
    public async Task StopFromAHandler()
    {
        using var server = T.EchoServer();
        var rec = new ContractRecorder();
        rec.Attach(server, echo: false);
        var stopCalled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        server.PacketReceived += (s, id, data) =>
        {
            if (Encoding.ASCII.GetString(data) != "stop") return;
            var t0 = Environment.TickCount64;
            s.Stop(TimeSpan.FromSeconds(20)); // returns at once on a handler thread
            if (Environment.TickCount64 - t0 > 1000) throw new Exception("Stop blocked its own handler");
            stopCalled.TrySetResult();
        };
        server.Start();
        using var other = await Client.ConnectAsync(server.Port);
        await other.SendAsync(new byte[] { 9 });
        Assert.Equal(new byte[] { 9 }, await other.ReadAsync());
        using var c = await Client.ConnectAsync(server.Port);
        var closing = new[] { c.ClosedByServerAsync(), other.ClosedByServerAsync() };
        await c.SendAsync(Encoding.ASCII.GetBytes("stop"));
        await stopCalled.Task.Within();
        await server.WhenStopped.Within();
        Assert.False(server.IsRunning);
        await rec.AllDisconnected(2).Within();
        rec.AssertContract();
        Assert.All(rec.Conns.Values, x => Assert.Equal(DisconnectReason.ServerStopped, x.Reason));
        Assert.All(await Task.WhenAll(closing), Assert.True);

        // The server can run again.
        server.Start();
        using var again = await Client.ConnectAsync(server.Port);
        await again.SendAsync(new byte[] { 5 });
        Assert.Equal(new byte[] { 5 }, await again.ReadAsync());
    }

    [Fact]
    public async Task DisposeFromAHandler()
    {
        var server = T.EchoServer();
        var disposeReturned = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var reasons = new ConcurrentQueue<DisconnectReason>();
        server.Disconnected += (s, e) => reasons.Enqueue(e.Reason);
        server.PacketReceived += (s, id, data) =>
        {
            if (data.Length != 0) return;
            s.Dispose(); // defers the destroy to the thread pool
            // The server is still usable for sends during this handler.
            s.TrySend(id, new byte[] { 1 });
            disposeReturned.TrySetResult();
        };
        server.Start();
        int port = server.Port;
        using var c = await Client.ConnectAsync(port);
        await c.SendAsync(Array.Empty<byte>());
        await disposeReturned.Task.Within();
        Assert.True(server.IsDisposed);
        await server.WhenStopped.Within();
        Assert.False(server.IsRunning);
        Assert.True(await c.ClosedByServerAsync());
        Assert.Equal(DisconnectReason.ServerStopped, Assert.Single(reasons));
        Assert.False(server.TrySend(new ConnectionId(1), new byte[1], out var error));
        Assert.Equal(IocpsrvError.Stopped, error);
        Assert.Throws<ObjectDisposedException>(() => server.Stats);
        // The port is free again.
        using var next = T.EchoServer();
        next.Start("127.0.0.1", port);
    }

    [Fact]
    public async Task StartFromAHandlerIsRefused()
    {
        using var server = new IocpServer();
        var result = new TaskCompletionSource<Exception?>(TaskCreationOptions.RunContinuationsAsynchronously);
        server.PacketReceived += (s, id, data) =>
        {
            try
            {
                s.Start();
                result.TrySetResult(null);
            }
            catch (Exception ex)
            {
                result.TrySetResult(ex);
            }
        };
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        await c.SendAsync(new byte[] { 1 });
        Assert.IsType<InvalidOperationException>(await result.Task.Within());
    }

    [Fact]
    public async Task HandlerForOneServerCanStopAnother()
    {
        using var a = new IocpServer();
        using var b = T.EchoServer();
        b.Start();
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        a.PacketReceived += (s, id, data) =>
        {
            b.Stop(TimeSpan.Zero); // another server: a synchronous stop
            done.TrySetResult();
        };
        a.Start();
        using var c = await Client.ConnectAsync(a.Port);
        await c.SendAsync(new byte[] { 1 });
        await done.Task.Within();
        Assert.False(b.IsRunning);
        Assert.True(a.IsRunning);
    }

    [Fact]
    public async Task StartRightAfterAStopFromAHandler()
    {
        using var server = T.EchoServer();
        for (int round = 0; round < 5; round++)
        {
            var stopCalled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            ServerEventHandler<ConnectedEventArgs> onConnect = (s, e) =>
            {
                s.Stop(TimeSpan.Zero);
                stopCalled.TrySetResult();
            };
            server.Connected += onConnect;
            server.Start();
            var firstRun = server.WhenStopped;
            using (var c = new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp))
            {
                try
                {
                    await c.ConnectAsync("127.0.0.1", server.Port).Within();
                }
                catch (System.Net.Sockets.SocketException)
                {
                    // the abortive stop may reset the client before its connect completes
                }
                await stopCalled.Task.Within();
                server.Connected -= onConnect;
                // The stop may or may not have been finished by the thread pool yet.
                server.Start();
                await firstRun.Within();
                Assert.True(server.IsRunning);
                Assert.False(server.WhenStopped.IsCompleted);
                using var c2 = await Client.ConnectAsync(server.Port);
                await c2.SendAsync(new byte[] { (byte)round });
                Assert.Equal(new byte[] { (byte)round }, await c2.ReadAsync());
            }
            server.Stop(TimeSpan.Zero);
            Assert.True(server.WhenStopped.IsCompleted);
        }
    }
}
