using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Text;

namespace Iocpsrv.Tests;

/// <summary>PacketsReceived: callback mode with the engine's packet-batch callback (one call
/// per receive and connection).</summary>
public class PacketBatchTests
{
    private static byte[] Seq(int k, int size)
    {
        var p = T.Pattern(Math.Max(size, 4), k);
        BinaryPrimitives.WriteInt32LittleEndian(p, k);
        return p;
    }

    [Fact]
    public async Task OneCallCarriesSeveralPacketsInArrivalOrder()
    {
        const int Packets = 200;
        using var server = new IocpServer(new IocpServerOptions { WorkerThreads = 2 });
        var counts = new ConcurrentQueue<int>();
        server.PacketsReceived += (s, id, packets) =>
        {
            counts.Enqueue(packets.Count);
            foreach (var payload in packets) s.Send(id, payload);
        };
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        var sent = Enumerable.Range(0, Packets).Select(k => Seq(k, k % 40)).ToList();
        await c.SendRawAsync(sent.SelectMany(p => c.Frame(p)).ToArray()); // one write: whole receives of many packets
        foreach (var p in sent) Assert.Equal(p, await c.ReadAsync());

        Assert.Equal(Packets, counts.Sum());
        Assert.True(counts.Max() > 1, "every call carried one packet");
        Assert.True(counts.Max() <= 64); // IOCPSRV_BATCH_MAX
    }

    [Fact]
    public async Task TheIndexerChecksItsRangeAndTheEnumeratorSeesWhatItDoes()
    {
        using var server = new IocpServer(new IocpServerOptions { WorkerThreads = 2 });
        var seen = new TaskCompletionSource<(Exception? OutOfRange, string Indexed, string Enumerated)>(TaskCreationOptions.RunContinuationsAsynchronously);
        server.PacketsReceived += (s, id, packets) =>
        {
            Exception? error = null;
            try
            {
                _ = packets[packets.Count];
            }
            catch (ArgumentOutOfRangeException e)
            {
                error = e;
            }
            var indexed = new List<string>();
            for (int i = 0; i < packets.Count; i++) indexed.Add(Encoding.ASCII.GetString(packets[i]));
            var enumerated = new List<string>();
            foreach (var p in packets) enumerated.Add(Encoding.ASCII.GetString(p));
            seen.TrySetResult((error, string.Join(",", indexed), string.Join(",", enumerated)));
        };
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        await c.SendRawAsync(c.Frame(Encoding.ASCII.GetBytes("a")).Concat(c.Frame(Encoding.ASCII.GetBytes("bc"))).ToArray());
        var (outOfRange, indexed, enumerated) = await seen.Task.Within();
        Assert.NotNull(outOfRange);
        Assert.StartsWith("a", indexed);
        Assert.Equal(indexed, enumerated);
    }

    [Fact]
    public void BothPacketHandlersAtOnceAreRefusedAtStart()
    {
        using var server = new IocpServer();
        server.PacketReceived += (s, id, p) => { };
        server.PacketsReceived += (s, id, p) => { };
        Assert.Throws<InvalidOperationException>(() => server.Start());
        Assert.False(server.IsRunning);
    }

    [Fact]
    public async Task AThrowingHandlerClosesTheConnectionUnlessTheReporterKeepsIt()
    {
        using var server = new IocpServer(new IocpServerOptions { WorkerThreads = 2 });
        bool keep = false;
        var reported = new ConcurrentQueue<CallbackKind>();
        var secondReport = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        server.UnhandledCallbackException += (s, e) =>
        {
            reported.Enqueue(e.Callback);
            e.CloseConnection = !Volatile.Read(ref keep);
            if (reported.Count == 2) secondReport.TrySetResult();
        };
        server.PacketsReceived += (s, id, packets) =>
        {
            foreach (var p in packets)
            {
                if (p.SequenceEqual("boom"u8)) throw new InvalidOperationException("boom");
                s.Send(id, p);
            }
        };
        server.Start();

        using (var c = await Client.ConnectAsync(server.Port))
        {
            await c.SendAsync(Encoding.ASCII.GetBytes("boom"));
            Assert.True(await c.ClosedByServerAsync());
        }
        Volatile.Write(ref keep, true);
        using var kept = await Client.ConnectAsync(server.Port);
        await kept.SendAsync(Encoding.ASCII.GetBytes("boom"));
        // After the report: a packet of the same batch as "boom" would go unhandled with it.
        await secondReport.Task.Within();
        await kept.SendAsync(Encoding.ASCII.GetBytes("still here"));
        Assert.Equal("still here", Encoding.ASCII.GetString(await kept.ReadAsync()));
        Assert.All(reported, k => Assert.Equal(CallbackKind.PacketsReceived, k));
        Assert.Equal(2, reported.Count);
    }

    [Fact]
    public async Task TheWayIsChosenAgainAtEachStart()
    {
        using var server = new IocpServer(new IocpServerOptions { WorkerThreads = 2 });
        int batches = 0, single = 0;
        PacketBatchHandler inBatches = (s, id, packets) =>
        {
            Interlocked.Increment(ref batches);
            foreach (var p in packets) s.Send(id, p);
        };
        server.PacketsReceived += inBatches;
        server.Start();
        using (var c = await Client.ConnectAsync(server.Port))
        {
            await c.SendAsync(Encoding.ASCII.GetBytes("one"));
            Assert.Equal("one", Encoding.ASCII.GetString(await c.ReadAsync()));
        }
        server.Stop();
        server.PacketsReceived -= inBatches;
        server.PacketReceived += (s, id, p) =>
        {
            Interlocked.Increment(ref single);
            s.Send(id, p);
        };
        server.Start();
        using (var c = await Client.ConnectAsync(server.Port))
        {
            await c.SendAsync(Encoding.ASCII.GetBytes("two"));
            Assert.Equal("two", Encoding.ASCII.GetString(await c.ReadAsync()));
        }
        Assert.Equal(1, Volatile.Read(ref batches));
        Assert.Equal(1, Volatile.Read(ref single));
    }
}
