using System.Buffers.Binary;
using System.Text;

namespace Iocpsrv.Tests;

/// <summary>The pull API: ReadEventsAsync / Events on the library's pull mode.</summary>
public class PullTests
{
    [Fact]
    public async Task AwaitForeachEchoServer()
    {
        const int Clients = 4, Packets = 300;
        using var server = new IocpServer(new IocpServerOptions { PullMode = true, WorkerThreads = 2, PullChannelCapacity = 16 });
        Assert.True(server.IsPullMode);
        Assert.Equal(1, server.GetOption(ServerOption.PullMode));
        server.Start();

        var seen = new List<ServerEvent>();
        using var cts = new CancellationTokenSource(T.Wait);
        var consumer = Task.Run(async () =>
        {
            await foreach (var ev in server.ReadEventsAsync(cts.Token))
            {
                seen.Add(ev);
                if (ev.Type == ServerEventType.Packet) server.Send(ev.Connection, ev.Payload);
            }
        });

        await Task.WhenAll(Enumerable.Range(0, Clients).Select(async i =>
        {
            using var c = await Client.ConnectAsync(server.Port);
            var frames = new List<byte>();
            for (int k = 0; k < Packets; k++) frames.AddRange(c.Frame(Payload(i, k)));
            await c.SendRawAsync(frames.ToArray());
            for (int k = 0; k < Packets; k++) Assert.Equal(Payload(i, k), await c.ReadAsync());
        }));
        await T.Eventually(() => server.Stats.ConnectionsNow == 0, "connections_now == 0");
        server.Stop(TimeSpan.FromSeconds(5));
        await consumer.Within(); // the stream ends once the server stopped and all was read

        // Per connection: connect (with the peer), packets in order with intact owned
        // payloads (copied before the next poll), one disconnect, last.
        var byConn = seen.GroupBy(e => e.Connection).ToList();
        Assert.Equal(Clients, byConn.Count);
        foreach (var g in byConn)
        {
            var evs = g.ToList();
            Assert.Equal(ServerEventType.Connected, evs[0].Type);
            Assert.StartsWith("127.0.0.1:", evs[0].Peer);
            Assert.Equal(ServerEventType.Disconnected, evs[^1].Type);
            Assert.Equal(DisconnectReason.PeerClosed, evs[^1].Reason);
            var packets = evs.Where(e => e.Type == ServerEventType.Packet).ToList();
            Assert.Equal(Packets, packets.Count);
            Assert.Equal(Packets + 2, evs.Count);
            int client = BinaryPrimitives.ReadInt32LittleEndian(packets[0].Payload);
            for (int k = 0; k < Packets; k++) Assert.Equal(Payload(client, k), packets[k].Payload);
        }
    }

    [Fact]
    public async Task SecondStartLeavesTheRunningStreamAlone()
    {
        // Start on a running pull-mode server fails with State; the binding used to replace the
        // running run's event stream first, so the reader's stream ended and no event of the
        // running server was ever read again.
        using var server = new IocpServer(new IocpServerOptions { PullMode = true, WorkerThreads = 2 });
        server.Start();
        var seen = new System.Collections.Concurrent.ConcurrentQueue<ServerEvent>();
        var done = Task.Run(async () =>
        {
            await foreach (var batch in server.ReadBatchesAsync())
                foreach (var ev in batch) seen.Enqueue(ev.ToServerEvent());
        });
        var ex = Assert.Throws<InvalidOperationException>(() => server.Start());
        Assert.Equal(IocpsrvError.State, Assert.IsType<IocpsrvException>(ex.InnerException).Error);
        using var c = await Client.ConnectAsync(server.Port);
        await c.SendAsync(new byte[] { 1, 2, 3 });
        await T.Eventually(() => seen.Any(e => e.Type == ServerEventType.Packet), "the packet event");
        Assert.False(done.IsCompleted);
        server.Stop(TimeSpan.Zero);
        await done.Within();
    }

    private static byte[] Payload(int client, int seq)
    {
        var p = T.Pattern(8 + seq % 50, client * 7919 + seq);
        BinaryPrimitives.WriteInt32LittleEndian(p, client);
        BinaryPrimitives.WriteInt32LittleEndian(p.AsSpan(4), seq);
        return p;
    }

    [Fact]
    public async Task ChannelReaderAndDisconnectFromTheConsumer()
    {
        using var server = new IocpServer(new IocpServerOptions { PullMode = true });
        var reader = server.Events; // before Start: the first run's events
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        var ev = await reader.ReadAsync().AsTask().Within();
        Assert.Equal(ServerEventType.Connected, ev.Type);
        Assert.Equal(c.LocalEndPoint, ev.Peer);
        await c.SendAsync(Array.Empty<byte>());
        ev = await reader.ReadAsync().AsTask().Within();
        Assert.Equal(ServerEventType.Packet, ev.Type);
        Assert.Empty(ev.Payload);
        // The consumer closes it (Refuse would close it without its Disconnected).
        Assert.True(server.Disconnect(ev.Connection));
        Assert.True(await c.ClosedByServerAsync());
        ev = await reader.ReadAsync().AsTask().Within();
        Assert.Equal(ServerEventType.Disconnected, ev.Type);
        Assert.Equal(DisconnectReason.LocalClose, ev.Reason);
    }

    [Fact]
    public async Task StopDeliversServerStoppedThenEndsAndRestartGetsANewStream()
    {
        using var server = new IocpServer(new IocpServerOptions { PullMode = true });
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        var first = await server.Events.ReadAsync().AsTask().Within();
        Assert.Equal(ServerEventType.Connected, first.Type);
        server.Stop(TimeSpan.Zero);
        var rest = new List<ServerEvent>();
        await foreach (var ev in server.ReadEventsAsync().WithCancellation(new CancellationTokenSource(T.Wait).Token)) rest.Add(ev);
        var last = Assert.Single(rest);
        Assert.Equal(ServerEventType.Disconnected, last.Type);
        Assert.Equal(DisconnectReason.ServerStopped, last.Reason);
        Assert.Equal(first.Connection, last.Connection);

        server.Start();
        using var c2 = await Client.ConnectAsync(server.Port);
        await c2.SendAsync(Encoding.ASCII.GetBytes("second run"));
        var events = server.Events;
        Assert.Equal(ServerEventType.Connected, (await events.ReadAsync().AsTask().Within()).Type);
        var p = await events.ReadAsync().AsTask().Within();
        Assert.Equal("second run", Encoding.ASCII.GetString(p.Payload));
    }

    [Fact]
    public async Task SlowConsumerPushesBackWithoutLosingEvents()
    {
        const int Packets = 2000;
        using var server = new IocpServer(new IocpServerOptions { PullMode = true, PullQueueLimit = 16, PullChannelCapacity = 4 });
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        var frames = new List<byte>();
        for (int k = 0; k < Packets; k++)
        {
            var p = new byte[4];
            BinaryPrimitives.WriteInt32LittleEndian(p, k);
            frames.AddRange(c.Frame(p));
        }
        var send = c.SendRawAsync(frames.ToArray());
        int next = 0;
        using var cts = new CancellationTokenSource(T.Wait);
        await foreach (var ev in server.ReadEventsAsync(cts.Token))
        {
            if (ev.Type != ServerEventType.Packet) continue;
            Assert.Equal(next++, BinaryPrimitives.ReadInt32LittleEndian(ev.Payload));
            if (next % 100 == 0) await Task.Yield();
            if (next == Packets) break;
        }
        await send;
        Assert.Equal(Packets, next);
    }

    // The contract's guarantees in pull mode, for events not read yet when the call returns:
    // those still in the engine (it keeps them) and those the pump already buffered (the
    // reader keeps them). A small channel splits a client's packets between the two.

    private static byte[] Frames(Client c, int from, int to)
    {
        var frames = new List<byte>();
        for (int k = from; k < to; k++)
        {
            var p = new byte[4];
            BinaryPrimitives.WriteInt32LittleEndian(p, k);
            frames.AddRange(c.Frame(p));
        }
        return frames.ToArray();
    }

    private static int Seq(ServerEvent ev) => BinaryPrimitives.ReadInt32LittleEndian(ev.Payload);

    [Fact]
    public async Task NoPacketIsReadAfterDisconnectReturns()
    {
        const int Packets = 600; // more than the pump takes in one poll (256)
        using var server = new IocpServer(new IocpServerOptions { PullMode = true, WorkerThreads = 2, PullChannelCapacity = 4 });
        server.Start();
        var reader = server.Events;
        using var c = await Client.ConnectAsync(server.Port);
        await c.SendRawAsync(Frames(c, 0, Packets));
        Assert.Equal(ServerEventType.Connected, (await reader.ReadAsync().AsTask().Within()).Type);
        await T.Eventually(() => server.Stats.PacketsIn >= Packets, "every packet queued");
        var first = await reader.ReadAsync().AsTask().Within();
        Assert.Equal(0, Seq(first));
        Assert.True(server.Stats.PullQueueDepth > 0); // some still in the engine, the rest taken by the pump
        Assert.True(server.Disconnect(first.Connection));
        var next = await reader.ReadAsync().AsTask().Within();
        Assert.Equal(ServerEventType.Disconnected, next.Type); // no packet before it
        Assert.Equal(DisconnectReason.LocalClose, next.Reason);
        Assert.True(await c.ClosedByServerAsync());
        server.Stop(TimeSpan.FromSeconds(5));
        await foreach (var ev in reader.ReadAllAsync().WithCancellation(new CancellationTokenSource(T.Wait).Token))
            Assert.Fail($"unexpected {ev}");
    }

    [Fact]
    public async Task PauseHoldsThePacketsNotReadYetUntilResumeInOrder()
    {
        const int Packets = 20;
        using var server = new IocpServer(new IocpServerOptions { PullMode = true, WorkerThreads = 2, PullChannelCapacity = 4 });
        server.Start();
        var reader = server.Events;
        using var c = await Client.ConnectAsync(server.Port);
        await c.SendRawAsync(Frames(c, 0, Packets));
        Assert.Equal(ServerEventType.Connected, (await reader.ReadAsync().AsTask().Within()).Type);
        await T.Eventually(() => server.Stats.PacketsIn >= Packets, "every packet queued");
        var first = await reader.ReadAsync().AsTask().Within();
        Assert.Equal(0, Seq(first));
        var conn = first.Connection;
        server.Pause(conn);
        await c.SendRawAsync(Frames(c, Packets, Packets + 1)); // one more while paused

        // Nothing of it is read while it is paused (a negative check needs a little time).
        using (var quiet = new CancellationTokenSource(TimeSpan.FromMilliseconds(300)))
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => reader.ReadAsync(quiet.Token).AsTask());
        Assert.True(server.GetInfo(conn).Flags.HasFlag(ConnectionFlags.Paused));

        // A reader waiting meanwhile is woken by Resume (from another thread).
        var waiting = reader.ReadAsync().AsTask();
        await Task.Delay(100);
        Assert.False(waiting.IsCompleted);
        await Task.Run(() => server.Resume(conn));
        var got = new List<int> { 0, Seq(await waiting.Within()) };
        while (got.Count < Packets + 1)
        {
            var ev = await reader.ReadAsync().AsTask().Within();
            Assert.Equal(ServerEventType.Packet, ev.Type);
            got.Add(Seq(ev));
        }
        Assert.Equal(Enumerable.Range(0, Packets + 1), got);
    }

    [Fact]
    public async Task PauseThenEndWhilePausedDropsTheHeldPacketsAndDisconnectedStillComes()
    {
        using var server = new IocpServer(new IocpServerOptions { PullMode = true, WorkerThreads = 2, PullChannelCapacity = 4 });
        server.Start();
        var reader = server.Events;
        using var c = await Client.ConnectAsync(server.Port);
        await c.SendRawAsync(Frames(c, 0, 20));
        Assert.Equal(ServerEventType.Connected, (await reader.ReadAsync().AsTask().Within()).Type);
        await T.Eventually(() => server.Stats.PacketsIn >= 20, "every packet queued");
        var first = await reader.ReadAsync().AsTask().Within();
        server.Pause(first.Connection);
        server.Stop(TimeSpan.Zero);
        var rest = new List<ServerEvent>();
        await foreach (var ev in reader.ReadAllAsync().WithCancellation(new CancellationTokenSource(T.Wait).Token)) rest.Add(ev);
        var last = Assert.Single(rest);
        Assert.Equal(ServerEventType.Disconnected, last.Type);
        Assert.Equal(DisconnectReason.ServerStopped, last.Reason);
        Assert.True(reader.Completion.IsCompleted);
    }

    [Fact]
    public async Task RefuseGivesNoFurtherEventNotEvenDisconnected()
    {
        using var server = new IocpServer(new IocpServerOptions { PullMode = true, WorkerThreads = 2, PullChannelCapacity = 4 });
        server.Start();
        var reader = server.Events;
        using var refused = await Client.ConnectAsync(server.Port);
        await refused.SendRawAsync(Frames(refused, 0, 10));
        var hello = await reader.ReadAsync().AsTask().Within();
        Assert.Equal(ServerEventType.Connected, hello.Type);
        await T.Eventually(() => server.Stats.PacketsIn >= 10, "every packet queued");
        Assert.True(server.Refuse(hello.Connection));
        Assert.True(await refused.ClosedByServerAsync());
        refused.Dispose();
        await T.Eventually(() => server.Stats.ConnectionsNow == 0, "connections_now == 0");
        Assert.Equal(1UL, server.Stats.ConnectionsRejected);
        Assert.False(server.Refuse(hello.Connection)); // gone
        Assert.False(server.Disconnect(hello.Connection));

        using var ok = await Client.ConnectAsync(server.Port);
        await ok.SendAsync(Encoding.ASCII.GetBytes("served"));
        await T.Eventually(() => server.Stats.PacketsIn >= 11, "the packet read");
        ok.ShutdownSend();
        server.Stop(TimeSpan.FromSeconds(5));
        var rest = new List<ServerEvent>();
        await foreach (var ev in reader.ReadAllAsync().WithCancellation(new CancellationTokenSource(T.Wait).Token)) rest.Add(ev);
        Assert.DoesNotContain(rest, e => e.Connection == hello.Connection);
        Assert.Equal(new[] { ServerEventType.Connected, ServerEventType.Packet, ServerEventType.Disconnected },
            rest.Select(e => e.Type));
    }

    [Fact]
    public void EventsNeedPullMode()
    {
        using var server = new IocpServer();
        Assert.Throws<InvalidOperationException>(() => server.Events);
        Assert.Throws<InvalidOperationException>(() => server.ReadEventsAsync());
    }

    [Fact]
    public async Task DisposeEndsTheStream()
    {
        var server = new IocpServer(new IocpServerOptions { PullMode = true });
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        var reader = server.Events;
        Assert.Equal(ServerEventType.Connected, (await reader.ReadAsync().AsTask().Within()).Type);
        server.Dispose();
        await Task.Run(async () => { await foreach (var _ in reader.ReadAllAsync()) { } }).Within();
        Assert.True(await c.ClosedByServerAsync());
    }
}
