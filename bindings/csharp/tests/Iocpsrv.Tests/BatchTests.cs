using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace Iocpsrv.Tests;

/// <summary>Pull mode read in batches (ReadBatchAsync): events as views into the pooled poll
/// buffer, replies gathered and handed over with iocpsrv_send_packed, the pull contract kept
/// for the events of a batch not read yet.</summary>
public class BatchTests
{
    private static IocpServer PullServer(IocpServerOptions? options = null)
    {
        options ??= new IocpServerOptions();
        options.PullMode = true;
        options.WorkerThreads ??= 2;
        return new IocpServer(options);
    }

    // Reads batches until `count` events came, as owned copies.
    private static async Task<List<ServerEvent>> Read(IocpServer server, int count)
    {
        var seen = new List<ServerEvent>();
        while (seen.Count < count)
        {
            var batch = await server.ReadBatchAsync().AsTask().Within();
            Assert.NotNull(batch);
            foreach (var ev in batch) seen.Add(ev.ToServerEvent());
        }
        return seen;
    }

    // The events of a batch not read yet, as owned copies (a batch is not an IEnumerable: each
    // event is read once, which LINQ's repeated enumerations would hide).
    private static List<ServerEvent> Copy(EventBatch batch)
    {
        var list = new List<ServerEvent>();
        foreach (var ev in batch) list.Add(ev.ToServerEvent());
        return list;
    }

    private static byte[] Seq(int k)
    {
        var p = new byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(p, k);
        return p;
    }

    private static byte[] Frames(Client c, int from, int to) =>
        Enumerable.Range(from, to - from).SelectMany(k => c.Frame(Seq(k))).ToArray();

    private static int SeqOf(ServerEvent ev) => BinaryPrimitives.ReadInt32LittleEndian(ev.Payload);

    [Fact]
    public async Task EveryEventTypeComesThroughPackedBatches()
    {
        // A small queue and small socket buffers, so that replies to a client that does not
        // read are refused (QueueFull) and a Drained event follows once it reads.
        using var server = PullServer(new IocpServerOptions { SendQueueLimit = 16 << 10, SendBufferSize = 4096 });
        server.Start();
        using var c = await Client.ConnectAsync(server.Port, receiveBufferSize: 4096);
        await c.SendAsync(Encoding.ASCII.GetBytes("fill"));

        var first = await Read(server, 2); // in one batch or two, as the poll finds them
        Assert.Equal(2, first.Count);
        var (connected, packet) = (first[0], first[1]);
        Assert.Equal(ServerEventType.Connected, connected.Type);
        Assert.Equal(c.LocalEndPoint, connected.Peer);
        Assert.Equal(ServerEventType.Packet, packet.Type);
        Assert.Equal(connected.Connection, packet.Connection);
        Assert.Equal("fill", Encoding.ASCII.GetString(packet.Payload));

        // Fill the queue until the engine refuses (the client is not reading).
        int queued = 0;
        while (server.TrySend(packet.Connection, T.Pattern(4096, queued), out var error)) queued++;
        Assert.True(queued > 0);
        for (int k = 0; k < queued; k++) Assert.Equal(T.Pattern(4096, k), await c.ReadAsync());
        var drained = Assert.Single(await Read(server, 1));
        Assert.Equal(ServerEventType.Drained, drained.Type);
        Assert.Equal(packet.Connection, drained.Connection);

        c.ShutdownSend();
        var gone = Assert.Single(await Read(server, 1));
        Assert.Equal(ServerEventType.Disconnected, gone.Type);
        Assert.Equal(DisconnectReason.PeerClosed, gone.Reason);
        Assert.Equal(packet.Connection, gone.Connection);
    }

    [Fact]
    public async Task ZeroLengthAndMaximumSizePacketsGrowThePollBuffer()
    {
        const int Max = 1 << 20;
        // 65512 bytes take a whole 64 KiB record (24-byte header); one more does not fit the
        // buffer's base size, nor does the maximum: the buffer grows (IOCPSRV_ENOSPACE) and the
        // same event is polled again.
        int[] sizes = { 0, 65512, 65513, Max, 0, 3 };
        using var server = PullServer(new IocpServerOptions { MaxPacketSize = Max });
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        var sent = sizes.Select((n, i) => T.Pattern(n, i)).ToList();
        var write = Task.Run(async () => { foreach (var p in sent) await c.SendAsync(p); });

        var consumer = Task.Run(async () =>
        {
            var hashes = new List<byte[]>();
            EventBatch? batch = null;
            while (hashes.Count < sizes.Length)
            {
                batch = await server.ReadBatchAsync().AsTask().Within();
                foreach (var ev in batch!)
                {
                    if (ev.Type != ServerEventType.Packet) continue;
                    hashes.Add(SHA256.HashData(ev.Payload.Span));
                    batch.Send(ev.Connection, ev.Payload.Span); // a maximum-size send record too
                }
            }
            Assert.Empty(batch!.FlushSends()); // leaving the loop: the last echoes go now
            return hashes;
        });
        for (int i = 0; i < sizes.Length; i++)
        {
            var echo = await c.ReadAsync();
            Assert.Equal(sizes[i], echo.Length);
            Assert.Equal(sent[i], echo);
        }
        await write.Within();
        var got = await consumer.Within();
        Assert.Equal(sent.Select(p => SHA256.HashData(p)), got);
    }

    [Fact]
    public async Task TheChannelReaderGrowsItsPollBufferToo()
    {
        const int Big = 200 << 10; // above the channel pump's base buffer (32 KiB)
        using var server = PullServer(new IocpServerOptions { MaxPacketSize = Big });
        var reader = server.Events;
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        var payload = T.Pattern(Big, 5);
        await c.SendAsync(payload);
        await c.SendAsync(Array.Empty<byte>());
        Assert.Equal(ServerEventType.Connected, (await reader.ReadAsync().AsTask().Within()).Type);
        Assert.Equal(payload, (await reader.ReadAsync().AsTask().Within()).Payload);
        Assert.Empty((await reader.ReadAsync().AsTask().Within()).Payload);
    }

    [Fact]
    public async Task ManyConnectionsInOneBatchAndTheirRepliesInOneHandOver()
    {
        const int Clients = 50;
        using var server = PullServer();
        server.Start();
        var clients = await Task.WhenAll(Enumerable.Range(0, Clients).Select(_ => Client.ConnectAsync(server.Port)));
        try
        {
            for (int i = 0; i < Clients; i++) await clients[i].SendAsync(Encoding.ASCII.GetBytes(clients[i].LocalEndPoint));
            // Nothing is polled before a reader asks: everything is queued in the engine, and
            // the first poll takes it all (100 small records fit the 64 KiB buffer).
            await T.Eventually(() => server.Stats.PacketsIn == Clients, "every packet queued");

            var batch = await server.ReadBatchAsync().AsTask().Within();
            var peers = new Dictionary<ConnectionId, string>();
            var packets = new Dictionary<ConnectionId, string>();
            foreach (var ev in batch!)
            {
                switch (ev.Type)
                {
                    case ServerEventType.Connected:
                        peers.Add(ev.Connection, ev.Peer!);
                        break;
                    case ServerEventType.Packet:
                        Assert.True(peers.ContainsKey(ev.Connection), "a packet before its connection's Connected");
                        packets.Add(ev.Connection, Encoding.ASCII.GetString(ev.Payload.Span));
                        batch.Send(ev.Connection, ev.Payload.Span);
                        break;
                }
            }
            Assert.Equal(Clients, peers.Count);
            Assert.Equal(Clients, packets.Count);
            Assert.All(packets, p => Assert.Equal(peers[p.Key], p.Value)); // each packet with its own connection

            // The replies go out when the next batch is asked for: each client gets its own.
            var next = server.ReadBatchAsync().AsTask();
            foreach (var c in clients) Assert.Equal(c.LocalEndPoint, Encoding.ASCII.GetString(await c.ReadAsync()));
            Assert.False(next.IsCompleted); // nothing else came
        }
        finally
        {
            foreach (var c in clients) c.Dispose();
        }
    }

    [Fact]
    public async Task GatheredSendsOfEveryPaddingArriveWhole()
    {
        using var server = PullServer();
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        var replies = Enumerable.Range(0, 18).Select(n => T.Pattern(n, n)).Append(T.Pattern(100_001, 1)).ToList();
        // Each round in another order: the gathering buffers are reused, so a padding byte left
        // from an earlier record would show (the engine refuses a buffer with non-zero padding).
        List<byte[]> Round(int r) => replies.Skip(r * 5 % replies.Count).Concat(replies.Take(r * 5 % replies.Count)).ToList();

        var consumer = Task.Run(async () =>
        {
            await foreach (var batch in server.ReadBatchesAsync())
            {
                foreach (var ev in batch)
                {
                    if (ev.Type == ServerEventType.Packet)
                        foreach (var r in Round(ev.Payload.Span[0])) batch.Send(ev.Connection, r);
                    if (ev.Type == ServerEventType.Disconnected) return;
                }
            }
        });
        for (byte round = 0; round < 4; round++)
        {
            await c.SendAsync(new[] { round });
            foreach (var r in Round(round)) Assert.Equal(r, await c.ReadAsync());
        }
        c.ShutdownSend();
        await consumer.Within();
    }

    [Fact]
    public async Task RefusedSendsAreReportedWithTheirConnectionAndLaterOnesOfItAreRefusedToo()
    {
        using var server = PullServer(new IocpServerOptions { MaxPacketSize = 64 });
        server.Start();
        using var a = await Client.ConnectAsync(server.Port);
        using var b = await Client.ConnectAsync(server.Port);
        await a.SendAsync(Encoding.ASCII.GetBytes("a"));
        await b.SendAsync(Encoding.ASCII.GetBytes("b"));
        var events = await Read(server, 4);
        var idA = events.Single(e => e.Type == ServerEventType.Packet && e.Payload[0] == (byte)'a').Connection;
        var idB = events.Single(e => e.Type == ServerEventType.Packet && e.Payload[0] == (byte)'b').Connection;
        var dead = new ConnectionId(idA.Value ^ 0x5a5a_0000); // never handed out

        // FlushSends hands over at once and returns the refusals.
        await a.SendAsync(Encoding.ASCII.GetBytes("next"));
        var batch = (await server.ReadBatchAsync().AsTask().Within())!;
        batch.Send(idA, new byte[65]);                    // above MaxPacketSize: TooBig
        batch.Send(idB, Encoding.ASCII.GetBytes("b ok"));
        batch.Send(idA, Encoding.ASCII.GetBytes("a ok")); // after A's refusal: refused as well
        batch.Send(dead, new byte[1]);
        var refused = batch.FlushSends();
        Assert.Equal(new[]
        {
            new RefusedSend(idA, IocpsrvError.TooBig),
            new RefusedSend(idA, IocpsrvError.TooBig),
            new RefusedSend(dead, IocpsrvError.NotConnected),
        }, refused);
        Assert.Equal("b ok", Encoding.ASCII.GetString(await b.ReadAsync()));

        // Without FlushSends, the refusals come with the next batch.
        foreach (var _ in batch) { }
        batch.Send(dead, new byte[1]);
        batch.Send(idA, Encoding.ASCII.GetBytes("a later"));
        await b.SendAsync(Encoding.ASCII.GetBytes("more"));
        var next = (await server.ReadBatchAsync().AsTask().Within())!;
        Assert.Equal(new[] { new RefusedSend(dead, IocpsrvError.NotConnected) }, next.RefusedSends);
        Assert.Equal("a later", Encoding.ASCII.GetString(await a.ReadAsync())); // "a ok" never went
    }

    [Fact]
    public async Task DisconnectSkipsTheRestOfThatConnectionsEventsInTheBatch()
    {
        using var server = PullServer();
        server.Start();
        using var a = await Client.ConnectAsync(server.Port);
        using var b = await Client.ConnectAsync(server.Port);
        await a.SendRawAsync(Frames(a, 0, 50));
        await b.SendRawAsync(Frames(b, 0, 50));
        await T.Eventually(() => server.Stats.PacketsIn == 100, "every packet queued");

        var batch = (await server.ReadBatchAsync().AsTask().Within())!;
        ConnectionId? closed = null;
        var read = new List<ServerEvent>();
        foreach (var ev in batch)
        {
            read.Add(ev.ToServerEvent());
            if (closed is null && ev.Type == ServerEventType.Packet)
            {
                closed = ev.Connection;
                Assert.True(server.Disconnect(ev.Connection));
            }
        }
        var other = read.First(e => e.Type == ServerEventType.Connected && e.Connection != closed).Connection;
        Assert.Single(read, e => e.Type == ServerEventType.Packet && e.Connection == closed); // none after the Disconnect
        Assert.Equal(Enumerable.Range(0, 50), read.Where(e => e.Type == ServerEventType.Packet && e.Connection == other).Select(SeqOf));

        var rest = await Read(server, 1);
        var gone = Assert.Single(rest);
        Assert.Equal(ServerEventType.Disconnected, gone.Type);
        Assert.Equal(closed, gone.Connection);
        Assert.Equal(DisconnectReason.LocalClose, gone.Reason);
    }

    [Fact]
    public async Task PauseSetsTheRestOfTheBatchAsideAndResumeHandsItToTheWaitingReaderInOrder()
    {
        const int Packets = 20;
        using var server = PullServer();
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        await c.SendRawAsync(Frames(c, 0, Packets));
        await T.Eventually(() => server.Stats.PacketsIn == Packets, "every packet queued");

        var batch = (await server.ReadBatchAsync().AsTask().Within())!;
        var got = new List<int>();
        ConnectionId conn = default;
        foreach (var ev in batch)
        {
            Assert.NotEqual(ServerEventType.Disconnected, ev.Type);
            if (ev.Type != ServerEventType.Packet) continue;
            got.Add(BinaryPrimitives.ReadInt32LittleEndian(ev.Payload.Span));
            conn = ev.Connection;
            server.Pause(conn); // the rest of this batch is set aside (copied: the buffer is reused)
        }
        Assert.Equal(new[] { 0 }, got);

        // Nothing of it is read while it is paused (a negative check needs a little time)...
        var waiting = server.ReadBatchAsync().AsTask();
        Assert.NotSame(waiting, await Task.WhenAny(waiting, Task.Delay(300)));
        // ...and Resume, from another thread, hands the set-aside events to the waiting reader.
        await Task.Run(() => server.Resume(conn));
        var resumed = (await waiting.Within())!;
        foreach (var ev in resumed) got.Add(BinaryPrimitives.ReadInt32LittleEndian(ev.Payload.Span));
        Assert.Equal(Enumerable.Range(0, Packets), got);

        await c.SendRawAsync(Frames(c, Packets, Packets + 1));
        Assert.Equal(Packets, SeqOf(Assert.Single(await Read(server, 1))));
    }

    [Fact]
    public async Task ABatchIsReadOnceItsViewsDieWithItAndRentedCopiesLive()
    {
        using var server = PullServer();
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        await c.SendRawAsync(Frames(c, 0, 10));
        await T.Eventually(() => server.Stats.PacketsIn == 10, "every packet queued");

        var batch = (await server.ReadBatchAsync().AsTask().Within())!;
        BatchEvent kept = default;
        System.Buffers.IMemoryOwner<byte>? rented = null;
        int read = 0;
        foreach (var ev in batch)
        {
            if (ev.Type != ServerEventType.Packet) continue;
            kept = ev;
            rented = ev.RentPayload();
            if (++read == 3) break; // leave the rest unread
        }
        // Not read to the end: the same batch comes back with the rest.
        var again = (await server.ReadBatchAsync().AsTask().Within())!;
        Assert.Same(batch, again);
        Assert.Equal(Enumerable.Range(3, 7), Copy(again).Select(SeqOf));
        Assert.Empty(Copy(again)); // each event is read once

        await c.SendRawAsync(Frames(c, 10, 11));
        var next = (await server.ReadBatchAsync().AsTask().Within())!;
        Assert.NotSame(batch, next);
        Assert.False(batch.IsCurrent);
        Assert.Throws<InvalidOperationException>(() => kept.Payload);   // a view into a reused buffer
        Assert.Throws<InvalidOperationException>(() => batch.GetEnumerator().MoveNext());
        using (rented)
        {
            Assert.Equal(Seq(2), rented!.Memory.ToArray()); // the copy lives on
        }
        Assert.Equal(10, SeqOf(Assert.Single(Copy(next))));
    }

    [Fact]
    public async Task ACancelledReadKeepsTheEventsThatCameForTheNextRead()
    {
        using var server = PullServer();
        server.Start();
        using (var cts = new CancellationTokenSource())
        {
            var waiting = server.ReadBatchAsync(cts.Token).AsTask();
            cts.Cancel();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting.Within());
        }
        using var c = await Client.ConnectAsync(server.Port);
        await c.SendAsync(Seq(1));
        var events = await Read(server, 2);
        Assert.Equal(new[] { ServerEventType.Connected, ServerEventType.Packet }, events.Select(e => e.Type));
    }

    [Fact]
    public async Task StopWritesTheGatheredRepliesThenTheStreamEnds()
    {
        using var server = PullServer();
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        await c.SendAsync(Encoding.ASCII.GetBytes("last words?"));
        await T.Eventually(() => server.Stats.PacketsIn == 1, "the packet queued");
        var batch = (await server.ReadBatchAsync().AsTask().Within())!;
        ConnectionId conn = default;
        foreach (var ev in batch)
        {
            conn = ev.Connection;
            if (ev.Type == ServerEventType.Packet) batch.Send(ev.Connection, Encoding.ASCII.GetBytes("bye"));
        }
        server.Stop(TimeSpan.FromSeconds(5)); // hands the reply over before the graceful stop
        Assert.Equal("bye", Encoding.ASCII.GetString(await c.ReadAsync()));
        Assert.True(await c.ClosedByServerAsync());

        var rest = new List<ServerEvent>();
        while (await server.ReadBatchAsync().AsTask().Within() is { } more)
            foreach (var ev in more) rest.Add(ev.ToServerEvent());
        var gone = Assert.Single(rest);
        Assert.Equal(ServerEventType.Disconnected, gone.Type);
        Assert.Equal(DisconnectReason.ServerStopped, gone.Reason);
        Assert.Equal(conn, gone.Connection);
        Assert.Null(await server.ReadBatchAsync().AsTask().Within()); // and stays ended
    }

    [Fact]
    public async Task AReaderWaitingBeforeStartGetsTheRunsEvents()
    {
        using var server = PullServer();
        var first = server.ReadBatchAsync().AsTask(); // before Start: the first run's stream
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        var batch = await first.Within();
        Assert.Equal(ServerEventType.Connected, Assert.Single(Copy(batch!)).Type);
    }

    [Fact]
    public async Task DisposeEndsAWaitingReadEvenOfARunThatNeverStarted()
    {
        var never = PullServer();
        var waiting = never.ReadBatchAsync().AsTask();
        Assert.False(waiting.IsCompleted);
        never.Dispose();
        Assert.Null(await waiting.Within());

        var server = PullServer();
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        Assert.Single(await Read(server, 1));
        waiting = server.ReadBatchAsync().AsTask();
        server.Dispose();
        // It ends: with null, or with the connection's last event if the pump took it first.
        var last = await waiting.Within();
        if (last is not null) Assert.Equal(DisconnectReason.ServerStopped, Assert.Single(Copy(last)).Reason);
    }

    [Fact]
    public async Task SendsGatheredAfterTheStopAreRefusedNotThrown()
    {
        using var server = PullServer();
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        var batch = (await server.ReadBatchAsync().AsTask().Within())!;
        var id = Assert.Single(Copy(batch)).Connection;
        server.Stop(TimeSpan.Zero);
        batch.Send(id, new byte[1]); // a consumer answering the last events after a stop
        Assert.Equal(new[] { new RefusedSend(id, IocpsrvError.Stopped) }, batch.FlushSends());
    }

    [Fact]
    public async Task ARunIsReadEitherInBatchesOrOneByOne()
    {
        using var callbacks = new IocpServer();
        Assert.Throws<InvalidOperationException>(() => callbacks.ReadBatchAsync());
        Assert.Throws<InvalidOperationException>(() => callbacks.ReadBatchesAsync());

        using var server = PullServer();
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        Assert.Equal(ServerEventType.Connected, Assert.Single(await Read(server, 1)).Type);
        Assert.Throws<InvalidOperationException>(() => server.Events);
        // The next run chooses again.
        server.Stop(TimeSpan.Zero);
        while (await server.ReadBatchAsync().AsTask().Within() is { } b) foreach (var _ in b) { }
        server.Start();
        var reader = server.Events;
        Assert.Throws<InvalidOperationException>(() => server.ReadBatchAsync());
        using var c2 = await Client.ConnectAsync(server.Port);
        Assert.Equal(ServerEventType.Connected, (await reader.ReadAsync().AsTask().Within()).Type);
        server.Dispose();
        Assert.Throws<ObjectDisposedException>(() => server.ReadBatchAsync());
    }
}
