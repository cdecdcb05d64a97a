using System.Text;

namespace Iocpsrv.Tests;

/// <summary>SendAsync: waits for room (the engine's drain) instead of failing with QueueFull,
/// against a real client that stops reading and then resumes.</summary>
public class SendAsyncTests
{
    // A 64 KiB queue and 4 KiB socket buffers on both sides: a client that does not read
    // fills them after a few 16 KiB packets.
    private const int PacketSize = 16 << 10, Packets = 48;

    private static IocpServerOptions Tight(bool pull = false) => new()
    {
        WorkerThreads = 2,
        SendQueueLimit = 64 << 10,
        SendBufferSize = 4096,
        PullMode = pull,
    };

    private static byte[] Payload(int k) => T.Pattern(PacketSize, k);

    private static Task<Client> SlowReader(IocpServer server) => Client.ConnectAsync(server.Port, receiveBufferSize: 4096);

    // Callback mode: the id of the next client to connect.
    private static Task<ConnectionId> NextConnection(IocpServer server)
    {
        var connected = new TaskCompletionSource<ConnectionId>(TaskCreationOptions.RunContinuationsAsynchronously);
        server.Connected += (s, e) => connected.TrySetResult(e.Connection);
        return connected.Task;
    }

    // Sends Payload(0..) with SendAsync until one has to wait; returns it and how many were
    // queued before it.
    private static (ValueTask Waiting, int Queued) FillUntilWaiting(IocpServer server, ConnectionId id, CancellationToken token = default)
    {
        for (int k = 0; ; k++)
        {
            var send = server.SendAsync(id, Payload(k), token);
            if (!send.IsCompleted) return (send, k);
            send.GetAwaiter().GetResult();
        }
    }

    [Fact]
    public async Task WaitsWhileTheClientDoesNotReadAndCompletesInOrderWhenItResumes()
    {
        using var server = new IocpServer(Tight());
        var connected = NextConnection(server);
        server.Start();
        using var c = await SlowReader(server);
        var id = await connected.Within();

        var sender = Task.Run(async () =>
        {
            for (int k = 0; k < Packets; k++) await server.SendAsync(id, Payload(k));
        });
        // The queue is full once the engine has refused a send: SendAsync waits, it does not throw.
        await T.Eventually(() => server.Stats.SendQueueRejections > 0, "a send refused");
        Assert.False(sender.IsCompleted);

        for (int k = 0; k < Packets; k++) Assert.Equal(Payload(k), await c.ReadAsync()); // the client resumes
        await sender.Within();
    }

    [Fact]
    public async Task CancellingTheWaitLeavesThePacketUnsent()
    {
        using var server = new IocpServer(Tight());
        var connected = NextConnection(server);
        server.Start();
        using var c = await SlowReader(server);
        var id = await connected.Within();

        using var cts = new CancellationTokenSource();
        var (waiting, queued) = FillUntilWaiting(server, id, cts.Token);
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting.AsTask().Within());

        server.Send(id, Encoding.ASCII.GetBytes("after"));
        for (int k = 0; k < queued; k++) Assert.Equal(Payload(k), await c.ReadAsync());
        Assert.Equal("after", Encoding.ASCII.GetString(await c.ReadAsync())); // the cancelled one never went
    }

    [Fact]
    public async Task FailsWhenTheConnectionEndsWhileWaiting()
    {
        using var server = new IocpServer(Tight());
        var first = NextConnection(server);
        server.Start();
        using (var c = await SlowReader(server))
        {
            var id = await first.Within();
            var (waiting, _) = FillUntilWaiting(server, id);
            c.Socket.LingerState = new System.Net.Sockets.LingerOption(true, 0);
            c.Dispose(); // a reset: the server's Disconnected ends the wait
            var ex = await Assert.ThrowsAsync<IocpsrvException>(() => waiting.AsTask().Within());
            Assert.Equal(IocpsrvError.NotConnected, ex.Error);
        }

        // The server closing it does the same.
        var second = new TaskCompletionSource<ConnectionId>(TaskCreationOptions.RunContinuationsAsynchronously);
        server.Connected += (s, e) => second.TrySetResult(e.Connection);
        using var c2 = await SlowReader(server);
        var id2 = await second.Task.Within();
        var (waiting2, _) = FillUntilWaiting(server, id2);
        Assert.True(server.Disconnect(id2, graceful: false));
        var ex2 = await Assert.ThrowsAsync<IocpsrvException>(() => waiting2.AsTask().Within());
        Assert.Equal(IocpsrvError.NotConnected, ex2.Error);
    }

    [Fact]
    public async Task PullModeTheDrainEventOfTheStreamEndsTheWait()
    {
        var saved = IocpServer.RoomCheckInterval;
        IocpServer.RoomCheckInterval = Timeout.InfiniteTimeSpan; // only the DRAIN event can wake it
        try
        {
            using var server = new IocpServer(Tight(pull: true));
            server.Start();
            var id = new TaskCompletionSource<ConnectionId>(TaskCreationOptions.RunContinuationsAsynchronously);
            var drained = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            var consumer = Task.Run(async () =>
            {
                await foreach (var batch in server.ReadBatchesAsync())
                {
                    foreach (var ev in batch)
                    {
                        if (ev.Type == ServerEventType.Connected) id.TrySetResult(ev.Connection);
                        if (ev.Type == ServerEventType.Drained) drained.TrySetResult();
                    }
                }
            });
            using var c = await SlowReader(server);
            var conn = await id.Task.Within();
            var sender = Task.Run(async () =>
            {
                for (int k = 0; k < Packets; k++) await server.SendAsync(conn, Payload(k));
            });
            await T.Eventually(() => server.Stats.SendQueueRejections > 0, "a send refused");
            Assert.False(sender.IsCompleted);

            for (int k = 0; k < Packets; k++) Assert.Equal(Payload(k), await c.ReadAsync());
            await sender.Within();
            await drained.Task.Within(); // the consumer saw the drain too
            server.Stop();
            await consumer.Within();
        }
        finally
        {
            IocpServer.RoomCheckInterval = saved;
        }
    }

    [Fact]
    public async Task PullModeAwaitedInsideTheReadingLoopItStillCompletes()
    {
        // Nobody reads the stream while the consumer awaits: the drain event waits in it, and
        // SendAsync's own look at the queue ends the wait.
        using var server = new IocpServer(Tight(pull: true));
        server.Start();
        var consumer = Task.Run(async () =>
        {
            await foreach (var batch in server.ReadBatchesAsync())
            {
                foreach (var ev in batch)
                {
                    if (ev.Type != ServerEventType.Packet) continue;
                    for (int k = 0; k < Packets; k++) await server.SendAsync(ev.Connection, Payload(k));
                    return;
                }
            }
        });
        using var c = await SlowReader(server);
        await c.SendAsync(Encoding.ASCII.GetBytes("go"));
        await T.Eventually(() => server.Stats.SendQueueRejections > 0, "a send refused");
        Assert.False(consumer.IsCompleted);

        for (int k = 0; k < Packets; k++) Assert.Equal(Payload(k), await c.ReadAsync());
        await consumer.Within();
    }

    [Fact]
    public async Task AStopWhileWaitingFailsTheSend()
    {
        using var server = new IocpServer(Tight(pull: true));
        server.Start();
        using var c = await SlowReader(server);
        var batch = (await server.ReadBatchAsync().AsTask().Within())!;
        ConnectionId id = default;
        foreach (var ev in batch) id = ev.Connection;
        var (waiting, _) = FillUntilWaiting(server, id);
        server.Stop(TimeSpan.Zero);
        await Assert.ThrowsAsync<InvalidOperationException>(() => waiting.AsTask().Within());
    }

    [Fact]
    public async Task WithRoomItCompletesAtOnceAndErrorsAreThrownAsSendDoes()
    {
        using var server = T.EchoServer(new IocpServerOptions { WorkerThreads = 2, MaxPacketSize = 16 });
        var connected = NextConnection(server);
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        var id = await connected.Within();
        var send = server.SendAsync(id, Encoding.ASCII.GetBytes("hi"));
        Assert.True(send.IsCompletedSuccessfully);
        Assert.Equal("hi", Encoding.ASCII.GetString(await c.ReadAsync()));
        await Assert.ThrowsAsync<ArgumentException>(() => server.SendAsync(id, new byte[17]).AsTask());
        var ex = await Assert.ThrowsAsync<IocpsrvException>(() => server.SendAsync(new ConnectionId(12345), new byte[1]).AsTask());
        Assert.Equal(IocpsrvError.NotConnected, ex.Error);
        server.Stop();
        await Assert.ThrowsAsync<InvalidOperationException>(() => server.SendAsync(id, new byte[1]).AsTask());
    }
}
