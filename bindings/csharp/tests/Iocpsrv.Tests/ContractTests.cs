using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Text;

namespace Iocpsrv.Tests;

public class ContractTests
{
    [Fact]
    public async Task OrderIsConnectPacketsThenExactlyOneDisconnect()
    {
        const int Clients = 16, Packets = 200;
        using var server = new IocpServer(new IocpServerOptions { WorkerThreads = 4 });
        var rec = new ContractRecorder();
        var seqs = new ConcurrentDictionary<ulong, int>();
        var orderErrors = new ConcurrentQueue<string>();
        server.PacketReceived += (s, id, data) =>
        {
            int seq = BinaryPrimitives.ReadInt32LittleEndian(data);
            int expected = seqs.AddOrUpdate(id.Value, 0, (_, v) => v + 1);
            if (seq != expected) orderErrors.Enqueue($"{id}: got {seq}, expected {expected}");
        };
        rec.Attach(server);
        server.Start();

        await Task.WhenAll(Enumerable.Range(0, Clients).Select(async i =>
        {
            using var c = await Client.ConnectAsync(server.Port);
            var frames = new List<byte>();
            for (int k = 0; k < Packets; k++)
            {
                var p = new byte[4 + (k % 13)];
                BinaryPrimitives.WriteInt32LittleEndian(p, k);
                frames.AddRange(c.Frame(p));
            }
            await c.SendRawAsync(frames.ToArray()); // many packets per read
            for (int k = 0; k < Packets; k++)
                Assert.Equal(k, BinaryPrimitives.ReadInt32LittleEndian(await c.ReadAsync()));
        }));
        await rec.AllDisconnected(Clients).Within();
        Assert.Empty(orderErrors);
        rec.AssertContract();
        Assert.Equal(Clients, rec.Conns.Count);
        Assert.All(rec.Conns.Values, c => Assert.Equal(Packets, c.Packets));
        Assert.All(rec.Conns.Values, c => Assert.Contains(c.Reason, new DisconnectReason?[] { DisconnectReason.PeerClosed, DisconnectReason.PeerReset }));
    }

    [Fact]
    public async Task StaleIdGetsNotConnected()
    {
        using var server = T.EchoServer();
        var gone = new TaskCompletionSource<ConnectionId>(TaskCreationOptions.RunContinuationsAsynchronously);
        server.Disconnected += (s, e) => gone.TrySetResult(e.Connection);
        server.Start();
        using (var c = await Client.ConnectAsync(server.Port))
        {
            await c.SendAsync(new byte[] { 1 });
            await c.ReadAsync();
        }
        var id = await gone.Task.Within();
        var ex = Assert.Throws<IocpsrvException>(() => server.Send(id, new byte[] { 1 }));
        Assert.Equal(IocpsrvError.NotConnected, ex.Error);
        Assert.Equal("IOCPSRV_ENOTCONN", ex.ErrorName);
        Assert.Contains(IocpServer.ErrorText(-3), ex.Message);
        Assert.False(server.TrySend(id, new byte[] { 1 }));
        Assert.False(server.TrySend(id, new byte[] { 1 }, out var error));
        Assert.Equal(IocpsrvError.NotConnected, error);
        Assert.False(server.TrySend(id, new byte[] { 1 }, new byte[] { 2 }));
        Assert.False(server.TrySend(id, new byte[] { 1 }, new byte[] { 2 }, out error));
        Assert.Equal(IocpsrvError.NotConnected, error);
        Assert.False(server.Disconnect(id));
        Assert.False(server.TryGetInfo(id, out _));
        Assert.Equal(IocpsrvError.NotConnected, Assert.Throws<IocpsrvException>(() => server.GetInfo(id)).Error);
        Assert.Equal(IocpsrvError.NotConnected, Assert.Throws<IocpsrvException>(() => server.Pause(id)).Error);
        Assert.Equal(IocpsrvError.NotConnected, Assert.Throws<IocpsrvException>(() => server.PendingBytes(id)).Error);
        Assert.Equal(IocpsrvError.NotConnected, Assert.Throws<IocpsrvException>(() => server.Send(new ConnectionId(12345), default)).Error);

        // A new client never gets the old id.
        var next = new TaskCompletionSource<ConnectionId>(TaskCreationOptions.RunContinuationsAsynchronously);
        server.Connected += (s, e) => next.TrySetResult(e.Connection);
        using var c2 = await Client.ConnectAsync(server.Port);
        Assert.NotEqual(id, await next.Task.Within());
    }

    [Fact]
    public async Task ConnectHandlerCanRefuse()
    {
        using var server = T.EchoServer();
        int disconnects = 0;
        server.Connected += (s, e) => e.Refuse = true;
        server.Disconnected += (s, e) => Interlocked.Increment(ref disconnects);
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        Assert.True(await c.ClosedByServerAsync());
        await T.Eventually(() => server.Stats.ConnectionsRejected == 1, "connections_rejected");
        server.Stop(TimeSpan.FromSeconds(5));
        Assert.Equal(0, Volatile.Read(ref disconnects));
    }

    [Fact]
    public async Task DisconnectGracefulFlushesAndAbortResets()
    {
        using var server = new IocpServer();
        var reasons = new ConcurrentDictionary<ulong, DisconnectReason>();
        var two = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        server.PacketReceived += (s, id, data) =>
        {
            s.Send(id, Encoding.ASCII.GetBytes("bye"));
            s.Disconnect(id, graceful: data[0] == (byte)'g');
        };
        server.Disconnected += (s, e) =>
        {
            reasons[e.Connection.Value] = e.Reason;
            if (reasons.Count == 2) two.TrySetResult();
        };
        server.Start();
        using var g = await Client.ConnectAsync(server.Port);
        await g.SendAsync(Encoding.ASCII.GetBytes("g"));
        Assert.Equal("bye", Encoding.ASCII.GetString(await g.ReadAsync())); // flushed first
        Assert.True(await g.ClosedByServerAsync());
        g.ShutdownSend();
        using var a = await Client.ConnectAsync(server.Port);
        await a.SendAsync(Encoding.ASCII.GetBytes("a"));
        Assert.True(await a.ClosedByServerAsync());
        await two.Task.Within();
        Assert.Contains(DisconnectReason.LocalClose, reasons.Values);
        Assert.Contains(DisconnectReason.LocalAbort, reasons.Values);
    }

    [Fact]
    public async Task PauseAndResume()
    {
        using var server = new IocpServer();
        var connected = new TaskCompletionSource<ConnectionId>(TaskCreationOptions.RunContinuationsAsynchronously);
        int packets = 0;
        var got = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        server.Connected += (s, e) =>
        {
            s.Pause(e.Connection); // from its own handler: no packet until Resume
            connected.TrySetResult(e.Connection);
        };
        server.PacketReceived += (s, id, data) =>
        {
            if (Interlocked.Increment(ref packets) == 3) got.TrySetResult();
        };
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        var id = await connected.Task.Within();
        for (int i = 0; i < 3; i++) await c.SendAsync(new byte[] { (byte)i });
        Assert.True(server.GetInfo(id).Flags.HasFlag(ConnectionFlags.Paused));
        await Task.Delay(200); // a negative check: nothing may arrive while paused
        Assert.Equal(0, Volatile.Read(ref packets));
        server.Resume(id);
        await got.Task.Within();
        Assert.False(server.GetInfo(id).Flags.HasFlag(ConnectionFlags.Paused));
    }

    [Fact]
    public async Task StopFromOutsideGivesEveryConnectionServerStopped()
    {
        const int Clients = 10;
        var server = T.EchoServer();
        var rec = new ContractRecorder();
        rec.Attach(server, echo: false);
        var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        int connects = 0;
        server.Connected += (s, e) =>
        {
            if (Interlocked.Increment(ref connects) == Clients) ready.TrySetResult();
        };
        server.Start();
        var clients = new List<Client>();
        for (int i = 0; i < Clients; i++) clients.Add(await Client.ConnectAsync(server.Port));
        await ready.Task.Within();
        int after = 0;
        var closing = clients.Select(c => c.ClosedByServerAsync()).ToList(); // clients answer the FIN
        server.Stop(TimeSpan.FromSeconds(20));
        // When Stop returns no handler runs or will run.
        server.PacketReceived += (s, id, d) => Interlocked.Increment(ref after);
        server.Disconnected += (s, e) => Interlocked.Increment(ref after);
        await rec.AllDisconnected(Clients).Within();
        Assert.False(server.IsRunning);
        rec.AssertContract();
        Assert.All(rec.Conns.Values, c => Assert.Equal(DisconnectReason.ServerStopped, c.Reason));
        Assert.All(await Task.WhenAll(closing), Assert.True);
        foreach (var c in clients) c.Dispose();
        server.Dispose();
        Assert.Equal(0, Volatile.Read(ref after));
    }

    [Fact]
    public async Task HandlersRunOnWorkerThreadsAndWorkerHooksFire()
    {
        var started = new ConcurrentBag<int>();
        var stopped = new ConcurrentBag<int>();
        var threeStarted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var server = new IocpServer(new IocpServerOptions { WorkerThreads = 3 });
        server.WorkerStarted += (s, e) =>
        {
            started.Add(e.Worker);
            if (started.Count == 3) threeStarted.TrySetResult();
        };
        server.WorkerStopped += (s, e) => stopped.Add(e.Worker);
        var onHandler = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        server.PacketReceived += (s, id, d) => onHandler.TrySetResult(s.IsHandlerThread);
        server.Start();
        Assert.False(server.IsHandlerThread);
        using (var c = await Client.ConnectAsync(server.Port))
        {
            await c.SendAsync(new byte[] { 1 });
            Assert.True(await onHandler.Task.Within());
        }
        await threeStarted.Task.Within();
        server.Stop(TimeSpan.FromSeconds(5));
        Assert.Equal(new[] { 0, 1, 2 }, started.Order().ToArray());
        Assert.Equal(new[] { 0, 1, 2 }, stopped.Order().ToArray());
        server.Dispose();
    }

    [Fact]
    public async Task ABlockedHandlerDelaysOnlyItsOwnConnection()
    {
        using var server = new IocpServer(new IocpServerOptions { WorkerThreads = 2 });
        using var release = new ManualResetEventSlim();
        var blocked = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        server.PacketReceived += (s, id, data) =>
        {
            if (data.Length == 1 && data[0] == 0xB)
            {
                blocked.TrySetResult();
                release.Wait(T.Wait); // bounded
            }
            s.Send(id, data);
        };
        server.Start();
        using var a = await Client.ConnectAsync(server.Port);
        using var b = await Client.ConnectAsync(server.Port);
        await a.SendAsync(new byte[] { 0xB });
        await blocked.Task.Within();
        for (int i = 0; i < 10; i++)
        {
            using var fresh = await Client.ConnectAsync(server.Port);
            await b.SendAsync(new byte[] { (byte)i, 1 });
            await fresh.SendAsync(new byte[] { (byte)i, 2 });
            Assert.Equal(new byte[] { (byte)i, 1 }, await b.ReadAsync());
            Assert.Equal(new byte[] { (byte)i, 2 }, await fresh.ReadAsync());
        }
        release.Set();
        Assert.Equal(new byte[] { 0xB }, await a.ReadAsync());
    }

    [Fact]
    public async Task HandlersSendToOtherConnections()
    {
        using var server = new IocpServer();
        var ids = new ConcurrentDictionary<string, ConnectionId>();
        var both = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        server.Connected += (s, e) =>
        {
            ids[e.Peer] = e.Connection;
            if (ids.Count == 2) both.TrySetResult();
        };
        server.PacketReceived += (s, id, data) =>
        {
            foreach (var other in ids.Values)
                if (other != id) s.Send(other, data); // a chat relay
        };
        server.Start();
        using var a = await Client.ConnectAsync(server.Port);
        using var b = await Client.ConnectAsync(server.Port);
        await both.Task.Within();
        await a.SendAsync(Encoding.ASCII.GetBytes("hello b"));
        Assert.Equal("hello b", Encoding.ASCII.GetString(await b.ReadAsync()));
        await b.SendAsync(Encoding.ASCII.GetBytes("hello a"));
        Assert.Equal("hello a", Encoding.ASCII.GetString(await a.ReadAsync()));
    }
}
