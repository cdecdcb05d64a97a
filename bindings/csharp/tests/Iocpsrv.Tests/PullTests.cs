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
        // Pull mode cannot refuse at connect time: the consumer disconnects instead.
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
