using System.Buffers.Binary;
using System.Security.Cryptography;

namespace Iocpsrv.Tests;

public class LoadTests
{
    [Fact]
    public async Task TwoHundredConcurrentClientsPipelining()
    {
        const int Clients = 200, Packets = 25, Depth = 8;
        using var server = T.EchoServer(new IocpServerOptions { WorkerThreads = 4 });
        var rec = new ContractRecorder();
        rec.Attach(server, echo: false);
        var all = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        int connected = 0;
        server.Connected += (s, e) =>
        {
            if (Interlocked.Increment(ref connected) == Clients) all.TrySetResult();
        };
        server.Start();

        var clients = await Task.WhenAll(Enumerable.Range(0, Clients).Select(_ => Client.ConnectAsync(server.Port)));
        try
        {
            await all.Task.Within();
            Assert.Equal(Clients, server.ConnectionCount);
            await Task.WhenAll(clients.Select(async (c, i) =>
            {
                // Keep Depth packets in flight; verify every echo in order.
                int sent = 0;
                for (; sent < Depth; sent++) await c.SendAsync(Payload(i, sent));
                for (int k = 0; k < Packets; k++)
                {
                    Assert.Equal(Payload(i, k), await c.ReadAsync());
                    if (sent < Packets) await c.SendAsync(Payload(i, sent++));
                }
            }));
        }
        finally
        {
            foreach (var c in clients) c.Dispose();
        }
        await rec.AllDisconnected(Clients).Within();
        rec.AssertContract();
        var st = server.Stats;
        Assert.Equal((ulong)Clients, st.ConnectionsTotal);
        Assert.Equal((ulong)(Clients * Packets), st.PacketsIn);
        Assert.Equal(0UL, st.ConnectionsNow);
    }

    private static byte[] Payload(int client, int seq)
    {
        var p = T.Pattern(8 + (seq * 37 + client) % 300, client * 1000 + seq);
        BinaryPrimitives.WriteInt32LittleEndian(p, client);
        BinaryPrimitives.WriteInt32LittleEndian(p.AsSpan(4), seq);
        return p;
    }

    [Fact]
    public async Task EightMebibytePackets()
    {
        const int Size = 8 << 20;
        using var server = new IocpServer(new IocpServerOptions { MaxPacketSize = Size, WorkerThreads = 2 });
        byte[]? hash = null;
        server.PacketReceived += (s, id, data) =>
        {
            hash = SHA256.HashData(data);
            s.Send(id, data);
        };
        var reason = new TaskCompletionSource<DisconnectReason>(TaskCreationOptions.RunContinuationsAsynchronously);
        server.Disconnected += (s, e) => reason.TrySetResult(e.Reason);
        server.Start();
        Assert.Equal(Size, server.GetOption(ServerOption.MaxPacketSize));

        var payload = T.Pattern(Size, 8);
        using (var c = await Client.ConnectAsync(server.Port))
        {
            var write = c.SendAsync(payload);
            var echo = await c.ReadAsync(); // read while writing: the echo can fill the socket buffers
            await write;
            Assert.Equal(Size, echo.Length);
            Assert.True(payload.AsSpan().SequenceEqual(echo));
            Assert.Equal(SHA256.HashData(payload), hash);

            // One byte over the limit: the connection closes with a protocol error, and the
            // claimed size is never allocated.
            var header = new byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(header, Size + 1);
            await c.SendRawAsync(header);
            Assert.True(await c.ClosedByServerAsync());
        }
        Assert.Equal(DisconnectReason.ProtocolError, await reason.Task.Within());
        Assert.Equal(1UL, server.Stats.ProtocolErrors);
    }

    [Fact]
    public async Task SendingTooBigAPacketIsTooBig()
    {
        using var server = new IocpServer(new IocpServerOptions { MaxPacketSize = 1024 });
        var id = new TaskCompletionSource<ConnectionId>(TaskCreationOptions.RunContinuationsAsynchronously);
        server.Connected += (s, e) => id.TrySetResult(e.Connection);
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        var conn = await id.Task.Within();
        var arg = Assert.Throws<ArgumentException>(() => server.Send(conn, new byte[1025]));
        Assert.Equal("payload", arg.ParamName);
        var ex = Assert.IsType<IocpsrvException>(arg.InnerException);
        Assert.Equal(IocpsrvError.TooBig, ex.Error);
        Assert.Equal("IOCPSRV_ETOOBIG", ex.ErrorName);
        Assert.False(server.TrySend(conn, new byte[1025], out var error));
        Assert.Equal(IocpsrvError.TooBig, error);
        server.Send(conn, new byte[1024]);
        Assert.Equal(1024, (await c.ReadAsync()).Length);
    }

    [Fact]
    public async Task QueueFullThenDrained()
    {
        const int Chunk = 64 * 1024;
        using var server = new IocpServer(new IocpServerOptions
        {
            SendQueueLimit = 256 * 1024,
            SendBufferSize = 8 * 1024,
        });
        var id = new TaskCompletionSource<ConnectionId>(TaskCreationOptions.RunContinuationsAsynchronously);
        var drained = new TaskCompletionSource<ConnectionId>(TaskCreationOptions.RunContinuationsAsynchronously);
        server.Connected += (s, e) => id.TrySetResult(e.Connection);
        server.Drained += (s, e) => drained.TrySetResult(e.Connection);
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        c.Socket.ReceiveBufferSize = 8 * 1024;
        var conn = await id.Task.Within();

        // The client reads nothing: the queue fills (bounded: kernel buffers are small).
        var chunk = new byte[Chunk];
        int sent = 0;
        var rc = IocpsrvError.Ok;
        for (; sent < 2000; sent++)
        {
            if (!server.TrySend(conn, chunk, out rc)) break;
        }
        Assert.Equal(IocpsrvError.QueueFull, rc);
        Assert.True(server.PendingBytes(conn) > 0);
        Assert.True(server.Stats.SendQueueRejections >= 1);
        // Now read everything: the queue drains and Drained fires.
        for (int i = 0; i < sent; i++) Assert.Equal(Chunk, (await c.ReadAsync()).Length);
        Assert.Equal(conn, await drained.Task.Within());
        Assert.True(server.TrySend(conn, chunk));
    }
}
