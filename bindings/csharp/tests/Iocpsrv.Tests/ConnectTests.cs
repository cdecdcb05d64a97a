using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;

namespace Iocpsrv.Tests;

/// <summary>The client role (issue 20): StartWithoutListener and ConnectAsync on
/// iocpsrv_start and iocpsrv_connect, in callback and pull mode.</summary>
public class ConnectTests
{
    private static IocpsrvError Code(Exception e) => Assert.IsType<IocpsrvException>(e.InnerException).Error;

    /// <summary>A call-time error of ConnectAsync: thrown by the call itself, not put in the
    /// task (no attempt exists then).</summary>
    private static TException Sync<TException>(Func<Task> call) where TException : Exception
        => Assert.Throws<TException>(() => { _ = call(); });

    /// <summary>A port on 127.0.0.1 where nothing listens (bound once, then closed).</summary>
    internal static int DeadPort()
    {
        using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        s.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)s.LocalEndPoint!).Port;
    }

    /// <summary>A plain listener nobody accepts from, with the smallest backlog, filled by a
    /// few plain client sockets: further SYNs are dropped, so a connect to it neither succeeds
    /// nor fails until a timeout.</summary>
    internal sealed class FullListener : IDisposable
    {
        private readonly Socket _listener;
        private readonly List<Socket> _fillers = new();

        private FullListener(Socket listener) => _listener = listener;

        public int Port => ((IPEndPoint)_listener.LocalEndPoint!).Port;

        public static async Task<FullListener> CreateAsync()
        {
            var l = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            l.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            l.Listen(0);
            var full = new FullListener(l);
            var target = (IPEndPoint)l.LocalEndPoint!;
            await Task.WhenAll(Enumerable.Range(0, 4).Select(async _ =>
            {
                var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                lock (full._fillers) full._fillers.Add(s);
                using var limit = new CancellationTokenSource(300);
                try
                {
                    await s.ConnectAsync(target, limit.Token);
                }
                catch (Exception e) when (e is OperationCanceledException or SocketException)
                {
                    // the backlog is full: that is the point
                }
            }));
            return full;
        }

        public void Dispose()
        {
            foreach (var s in _fillers) s.Dispose();
            _listener.Dispose();
        }
    }

    /// <summary>Records a server's handler calls per connection (ids as the handlers name
    /// them, which may be before ConnectAsync returns) and the contract breaches it can see:
    /// two Connected or two Disconnected, a Connected after a Disconnected, anything once
    /// <see cref="Stopped"/> is set (after Stop returned).</summary>
    internal sealed class Recorder
    {
        public sealed class Conn
        {
            public readonly List<string> Events = new();
            public bool Outbound;
            public string? Peer;
            public DisconnectReason? Reason;
            public readonly Channel<byte[]> Packets = Channel.CreateUnbounded<byte[]>();
            public readonly TaskCompletionSource<DisconnectReason> Ended = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }

        public readonly ConcurrentDictionary<ulong, Conn> Conns = new();
        public readonly ConcurrentQueue<string> Violations = new();
        public volatile bool Stopped;
        public int Disconnects;

        public Conn Of(ConnectionId id) => Conns.GetOrAdd(id.Value, _ => new Conn());

        /// <summary>Accepted connections echo; outbound ones queue their packets.</summary>
        public void Attach(IocpServer server)
        {
            server.Connected += (s, e) =>
            {
                var c = Of(e.Connection);
                lock (c)
                {
                    if (c.Events.Count != 0) Violations.Enqueue($"{e.Connection}: connect after {string.Join(",", c.Events)}");
                    c.Events.Add("connect");
                    c.Outbound = e.IsOutbound;
                    c.Peer = e.Peer;
                }
                if (Stopped) Violations.Enqueue($"{e.Connection}: connect after Stop returned");
            };
            server.PacketReceived += (s, id, data) =>
            {
                var c = Of(id);
                bool outbound;
                lock (c)
                {
                    if (c.Events.Count == 0 || c.Reason is not null) Violations.Enqueue($"{id}: packet outside connect..disconnect");
                    c.Events.Add("packet");
                    outbound = c.Outbound;
                }
                if (outbound) c.Packets.Writer.TryWrite(data.ToArray());
                else s.Send(id, data);
            };
            server.Disconnected += (s, e) =>
            {
                var c = Of(e.Connection);
                lock (c)
                {
                    if (c.Reason is not null) Violations.Enqueue($"{e.Connection}: second disconnect");
                    c.Reason = e.Reason;
                    c.Events.Add("disconnect");
                }
                if (Stopped) Violations.Enqueue($"{e.Connection}: disconnect after Stop returned");
                Interlocked.Increment(ref Disconnects);
                c.Ended.TrySetResult(e.Reason);
            };
        }

        public string[] EventsOf(ConnectionId id)
        {
            var c = Conns[id.Value];
            lock (c) return c.Events.ToArray();
        }
    }

    private static IocpServer ClientEngine(Recorder rec, IocpServerOptions? options = null)
    {
        options ??= new IocpServerOptions();
        options.WorkerThreads ??= 2;
        var client = new IocpServer(options);
        rec.Attach(client);
        return client;
    }

    // Sends `count` packets on an outbound connection and checks every echo, in order.
    private static async Task EchoRoundTrip(IocpServer client, Recorder rec, ConnectionId id, int count, int seed)
    {
        var sent = new List<byte[]>();
        for (int k = 0; k < count; k++)
        {
            var p = T.Pattern(1 + (k * 37 + seed) % 3000, seed * 1000 + k);
            sent.Add(p);
            client.Send(id, p);
        }
        var reader = rec.Of(id).Packets.Reader;
        foreach (var p in sent) Assert.Equal(p, await reader.ReadAsync().AsTask().Within());
    }

    [Fact]
    public async Task ConnectAsyncEchoesThroughAClientEngine()
    {
        using var echo = T.EchoServer();
        echo.Start();
        var rec = new Recorder();
        using var client = ClientEngine(rec);
        client.StartWithoutListener();
        Assert.True(client.IsRunning);
        // No listener: no port.
        Assert.Equal(IocpsrvError.Stopped, Code(Assert.Throws<InvalidOperationException>(() => client.Port)));

        var ids = await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => client.ConnectAsync("127.0.0.1", echo.Port))).Within();
        Assert.Equal(4, ids.Distinct().Count());
        foreach (var id in ids)
        {
            // The task completed after the Connected handler returned.
            Assert.Equal(new[] { "connect" }, rec.EventsOf(id));
            Assert.True(rec.Conns[id.Value].Outbound);
            Assert.Equal($"127.0.0.1:{echo.Port}", rec.Conns[id.Value].Peer);
            var info = client.GetInfo(id);
            Assert.Equal(ConnectionFlags.Outbound, info.Flags);
            Assert.Equal($"127.0.0.1:{echo.Port}", info.Peer);
        }

        // Sends work as soon as the task completed; every echo comes back intact and in order.
        await Task.WhenAll(ids.Select((id, i) => EchoRoundTrip(client, rec, id, 200, i))).Within();
        Assert.Equal(4UL, echo.Stats.ConnectionsTotal);

        foreach (var id in ids) Assert.True(client.Disconnect(id));
        foreach (var id in ids) Assert.Equal(DisconnectReason.LocalClose, await rec.Conns[id.Value].Ended.Task.Within());
        var st = client.Stats;
        Assert.Equal(4UL, st.ConnectionsTotal);
        Assert.Equal(800UL, st.PacketsIn);
        client.Stop();
        rec.Stopped = true;
        foreach (var id in ids)
        {
            var evs = rec.EventsOf(id);
            Assert.Equal("connect", evs[0]);
            Assert.Equal(200, evs.Count(e => e == "packet"));
            Assert.Equal("disconnect", evs[^1]);
        }
        Assert.Empty(rec.Violations);
    }

    [Fact]
    public async Task ConnectAsyncToItself()
    {
        var rec = new Recorder();
        using var server = ClientEngine(rec);
        server.Start("127.0.0.1", 0); // listen, then connect: one engine in both roles
        var id = await server.ConnectAsync("127.0.0.1", server.Port).Within();
        await T.Eventually(() => rec.Conns.Count == 2 && rec.Conns.All(kv => rec.EventsOf(new(kv.Key)).Length > 0), "the accepted side");
        var accepted = new ConnectionId(rec.Conns.Keys.Single(k => k != id.Value));
        Assert.True(rec.Conns[id.Value].Outbound);
        Assert.False(rec.Conns[accepted.Value].Outbound);
        Assert.Equal(server.GetInfo(id).Local, rec.Conns[accepted.Value].Peer);
        Assert.Equal(ConnectionFlags.Outbound, server.GetInfo(id).Flags);
        Assert.Equal(ConnectionFlags.None, server.GetInfo(accepted).Flags);

        await EchoRoundTrip(server, rec, id, 300, 7); // the accepted side echoes

        Assert.True(server.Disconnect(id));
        Assert.Equal(DisconnectReason.LocalClose, await rec.Conns[id.Value].Ended.Task.Within());
        Assert.Equal(DisconnectReason.PeerClosed, await rec.Conns[accepted.Value].Ended.Task.Within());
        server.Stop();
        Assert.Empty(rec.Violations);
        Assert.Equal(2UL, server.Stats.ConnectionsTotal);
    }

    [Fact]
    public async Task RefusedFaultsWithTheReason()
    {
        var rec = new Recorder();
        using var client = ClientEngine(rec);
        client.StartWithoutListener();
        int port = DeadPort();
        var attempts = Enumerable.Range(0, 5).Select(_ => client.ConnectAsync("127.0.0.1", port)).ToArray();
        foreach (var attempt in attempts)
        {
            var ex = await Assert.ThrowsAsync<IocpsrvConnectException>(() => attempt).Within();
            Assert.IsAssignableFrom<IOException>(ex);
            Assert.Equal(DisconnectReason.ConnectRefused, ex.Reason);
            Assert.Equal("connect-refused", ex.ReasonName);
            Assert.Equal("127.0.0.1", ex.Host);
            Assert.Equal(port, ex.Port);
            Assert.False(ex.RefusedByHandler);
            Assert.Contains($"127.0.0.1:{port}", ex.Message);
            Assert.Contains("connect-refused", ex.Message);
            // The attempt's one Disconnected has run (before the task faulted), with no
            // Connected before it.
            Assert.Equal(new[] { "disconnect" }, rec.EventsOf(ex.Connection));
            Assert.Equal(DisconnectReason.ConnectRefused, rec.Conns[ex.Connection.Value].Reason);
        }
        Assert.Equal(5, attempts.Select(a => ((IocpsrvConnectException)a.Exception!.InnerException!).Connection).Distinct().Count());
        Assert.Equal(0, client.ConnectionCount);
        client.Stop();
        Assert.Empty(rec.Violations);
        Assert.Equal(5, rec.Disconnects);
    }

    [Fact]
    public async Task NameNotResolvedFaultsWithTheReason()
    {
        var rec = new Recorder();
        using var client = ClientEngine(rec);
        client.StartWithoutListener();
        var ex = await Assert.ThrowsAsync<IocpsrvConnectException>(() => client.ConnectAsync("no-such-host.invalid", 80)).Within();
        Assert.Equal(DisconnectReason.NameNotResolved, ex.Reason);
        Assert.Equal("no-such-host.invalid", ex.Host);
        Assert.Contains("no-such-host.invalid:80", ex.Message);
        Assert.Equal(new[] { "disconnect" }, rec.EventsOf(ex.Connection));
        client.Stop();
        Assert.Empty(rec.Violations);
    }

    [Fact]
    public async Task TimeoutFaultsWithTheReason()
    {
        using var full = await FullListener.CreateAsync();
        var rec = new Recorder();
        using var client = ClientEngine(rec, new IocpServerOptions { ConnectTimeout = TimeSpan.FromMilliseconds(500) });
        Assert.Equal(500, client.GetOption(ServerOption.ConnectTimeoutMs));
        client.StartWithoutListener();
        var sw = Stopwatch.StartNew();
        var attempt = client.ConnectAsync("127.0.0.1", full.Port);

        // While it hangs: an outbound connection that is connecting; nothing can be sent yet.
        var id = Assert.Single(client.Connections);
        var info = client.GetInfo(id);
        Assert.Equal(ConnectionFlags.Outbound | ConnectionFlags.Connecting, info.Flags & (ConnectionFlags.Outbound | ConnectionFlags.Connecting));
        Assert.Equal($"127.0.0.1:{full.Port}", info.Peer);
        Assert.False(client.TrySend(id, new byte[] { 1 }, out var error));
        Assert.Equal(IocpsrvError.NotConnected, error);
        Assert.Equal(IocpsrvError.NotConnected, Assert.Throws<IocpsrvException>(() => client.Pause(id)).Error);

        var ex = await Assert.ThrowsAsync<IocpsrvConnectException>(() => attempt).Within();
        sw.Stop();
        Assert.Equal(DisconnectReason.ConnectTimeout, ex.Reason);
        Assert.Equal(id, ex.Connection);
        Assert.True(sw.Elapsed >= TimeSpan.FromMilliseconds(450), $"timed out after {sw.Elapsed}");
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5), $"timed out after {sw.Elapsed}");
        Assert.Equal(new[] { "disconnect" }, rec.EventsOf(id));
        client.Stop();
        Assert.Empty(rec.Violations);
    }

    [Fact]
    public async Task CancellationAbortsTheAttempt()
    {
        using var full = await FullListener.CreateAsync();
        var rec = new Recorder();
        using var client = ClientEngine(rec);
        client.StartWithoutListener();

        // A token cancelled already: no attempt at all.
        var before = client.ConnectAsync("127.0.0.1", full.Port, new CancellationToken(true));
        Assert.True(before.IsCanceled);
        Assert.Equal(0, client.ConnectionCount);

        using var cts = new CancellationTokenSource();
        var attempt = client.ConnectAsync("127.0.0.1", full.Port, cts.Token);
        var id = Assert.Single(client.Connections);
        await Task.Delay(100);
        Assert.False(attempt.IsCompleted);
        cts.Cancel();
        var oce = await Assert.ThrowsAnyAsync<OperationCanceledException>(() => attempt).Within();
        Assert.Equal(cts.Token, oce.CancellationToken);
        Assert.True(attempt.IsCanceled);
        // The attempt was aborted: its one Disconnected follows.
        Assert.Equal(DisconnectReason.LocalAbort, await rec.Of(id).Ended.Task.Within());
        Assert.Equal(new[] { "disconnect" }, rec.EventsOf(id));
        Assert.Equal(0, client.ConnectionCount);

        // A token cancelled after the connection was established changes nothing.
        using var echo = T.EchoServer();
        echo.Start();
        using var late = new CancellationTokenSource();
        var ok = await client.ConnectAsync("127.0.0.1", echo.Port, late.Token).Within();
        late.Cancel();
        await EchoRoundTrip(client, rec, ok, 10, 3);
        client.Stop();
        rec.Stopped = true;
        Assert.Equal(DisconnectReason.ServerStopped, rec.Conns[ok.Value].Reason);
        Assert.Empty(rec.Violations);
    }

    [Fact]
    public async Task StopWhileConnectsAreInFlight()
    {
        using var full = await FullListener.CreateAsync();
        using var echo = T.EchoServer();
        echo.Start();
        int dead = DeadPort();
        for (int round = 0; round < 2; round++)
        {
            var rec = new Recorder();
            using var client = ClientEngine(rec);
            client.StartWithoutListener();
            const int N = 60;
            var attempts = new Task<ConnectionId>[N];
            for (int i = 0; i < N; i++)
            {
                // hanging, refused, by name (resolver thread), established
                (string host, int port) = (i % 4) switch
                {
                    0 => ("127.0.0.1", full.Port),
                    1 => ("127.0.0.1", dead),
                    2 => ("localhost", echo.Port),
                    _ => ("127.0.0.1", echo.Port),
                };
                attempts[i] = client.ConnectAsync(host, port);
            }
            if (round == 1) await Task.WhenAll(attempts.Where((_, i) => i % 4 == 3)).Within(); // some established
            client.Stop(TimeSpan.Zero);
            rec.Stopped = true;

            // Stop returned: every attempt has its outcome and its one Disconnected.
            Assert.All(attempts, a => Assert.True(a.IsCompleted));
            Assert.Equal(N, Volatile.Read(ref rec.Disconnects));
            int stopped = 0;
            for (int i = 0; i < N; i++)
            {
                var a = attempts[i];
                ConnectionId id;
                if (a.IsCompletedSuccessfully)
                {
                    Assert.True(i % 4 >= 2, $"attempt {i} connected");
                    id = await a;
                    Assert.Equal("connect", rec.EventsOf(id)[0]);
                    Assert.Equal(DisconnectReason.ServerStopped, rec.Conns[id.Value].Reason);
                }
                else
                {
                    var ex = Assert.IsType<IocpsrvConnectException>(a.Exception!.InnerException);
                    id = ex.Connection;
                    Assert.Equal(new[] { "disconnect" }, rec.EventsOf(id));
                    Assert.Equal(ex.Reason, rec.Conns[id.Value].Reason);
                    if (i % 4 == 1) Assert.Contains(ex.Reason, new[] { DisconnectReason.ConnectRefused, DisconnectReason.ServerStopped });
                    else Assert.Equal(DisconnectReason.ServerStopped, ex.Reason);
                    if (ex.Reason == DisconnectReason.ServerStopped) stopped++;
                }
                Assert.Equal(1, rec.EventsOf(id).Count(e => e == "disconnect"));
            }
            Assert.True(stopped >= N / 4, $"{stopped} ServerStopped"); // at least the hanging ones
            Assert.Equal(N, rec.Conns.Count);
            await Task.Delay(200); // nothing comes after Stop returned
            Assert.Equal(N, Volatile.Read(ref rec.Disconnects));
            Assert.Empty(rec.Violations);
        }
    }

    [Fact]
    public async Task CallTimeErrors()
    {
        using var full = await FullListener.CreateAsync();
        var rec = new Recorder();
        var client = ClientEngine(rec, new IocpServerOptions { MaxConnections = 2, ConnectSource = "127.0.0.1" });
        // Not running: thrown by the call, no attempt.
        Assert.Equal(IocpsrvError.Stopped, Code(Sync<InvalidOperationException>(() => client.ConnectAsync("127.0.0.1", full.Port))));
        Sync<ArgumentNullException>(() => client.ConnectAsync(null!, 80));
        Sync<ArgumentException>(() => client.ConnectAsync("", 80));
        Sync<ArgumentOutOfRangeException>(() => client.ConnectAsync("127.0.0.1", 0));
        Sync<ArgumentOutOfRangeException>(() => client.ConnectAsync("127.0.0.1", 65536));
        Assert.Equal("127.0.0.1", client.GetOptionString(ServerOption.ConnectSource));
        Assert.Equal(IocpsrvError.InvalidArgument,
            Code(Assert.Throws<ArgumentException>(() => client.SetOptionString(ServerOption.ConnectSource, "not-an-address"))));
        Assert.Equal("127.0.0.1", client.GetOptionString(ServerOption.ConnectSource));

        client.StartWithoutListener();
        Assert.Equal(IocpsrvError.State, Code(Assert.Throws<InvalidOperationException>(() => client.StartWithoutListener())));
        Assert.Equal(IocpsrvError.State, Code(Assert.Throws<InvalidOperationException>(() => client.Start("127.0.0.1", 0))));
        Sync<ArgumentOutOfRangeException>(() => client.ConnectAsync("127.0.0.1", -1));
        // A numeric target of the other family than ConnectSource.
        Assert.Equal(IocpsrvError.AddressNotAvailable, Sync<IocpsrvException>(() => client.ConnectAsync("::1", 80)).Error);
        // MaxConnections counts outbound attempts: two that hang hold both slots.
        var first = client.ConnectAsync("127.0.0.1", full.Port);
        var second = client.ConnectAsync("127.0.0.1", full.Port);
        var limit = Sync<IocpsrvException>(() => client.ConnectAsync("127.0.0.1", full.Port));
        Assert.Equal(IocpsrvError.Limit, limit.Error);
        Assert.Equal("IOCPSRV_ELIMIT", limit.ErrorName);
        Assert.Equal(2, client.ConnectionCount);
        // Disconnect of a connecting id: the attempt ends with that reason.
        var ids = client.Connections;
        Assert.True(client.Disconnect(ids[0]));
        await T.Eventually(() => first.IsCompleted || second.IsCompleted, "the disconnected attempt's outcome");
        var closedTask = first.IsCompleted ? first : second;
        var closed = await Assert.ThrowsAsync<IocpsrvConnectException>(() => closedTask).Within();
        Assert.Equal(ids[0], closed.Connection);
        Assert.Equal(DisconnectReason.LocalClose, closed.Reason);
        client.Stop();
        rec.Stopped = true;
        Assert.True(first.IsFaulted && second.IsFaulted);
        var reasons = new[] { first, second }.Select(t => ((IocpsrvConnectException)t.Exception!.InnerException!).Reason).OrderBy(r => r).ToArray();
        Assert.Equal(new[] { DisconnectReason.LocalClose, DisconnectReason.ServerStopped }, reasons);
        Assert.Equal(2, rec.Disconnects);
        Assert.Empty(rec.Violations);

        client.Dispose();
        Sync<ObjectDisposedException>(() => client.ConnectAsync("127.0.0.1", full.Port));
        Assert.Throws<ObjectDisposedException>(() => client.StartWithoutListener());
    }

    [Fact]
    public async Task ConnectedHandlerMayRefuseAnOutboundConnection()
    {
        using var echo = T.EchoServer();
        echo.Start();
        using var client = new IocpServer(new IocpServerOptions { WorkerThreads = 2 });
        var thrown = new InvalidOperationException("handler says no");
        int mode = 0, disconnects = 0;
        client.Connected += (s, e) =>
        {
            Assert.True(e.IsOutbound);
            if (mode == 0) e.Refuse = true;
            else throw thrown;
        };
        client.Disconnected += (s, e) => Interlocked.Increment(ref disconnects);
        client.UnhandledCallbackException += (s, e) => { };
        client.StartWithoutListener();

        var refused = await Assert.ThrowsAsync<IocpsrvConnectException>(() => client.ConnectAsync("127.0.0.1", echo.Port)).Within();
        Assert.True(refused.RefusedByHandler);
        Assert.Equal(DisconnectReason.LocalClose, refused.Reason);
        Assert.Null(refused.InnerException);
        Assert.Contains("refused by the Connected handler", refused.Message);

        mode = 1;
        var threw = await Assert.ThrowsAsync<IocpsrvConnectException>(() => client.ConnectAsync("127.0.0.1", echo.Port)).Within();
        Assert.True(threw.RefusedByHandler);
        Assert.Same(thrown, threw.InnerException);

        await T.Eventually(() => client.ConnectionCount == 0, "both closed");
        client.Stop();
        Assert.Equal(0, disconnects); // a refused connection gets no Disconnected
        Assert.Equal(2UL, client.Stats.ConnectionsRejected);
    }

    [Fact]
    public async Task ConnectAsyncFromAHandler()
    {
        using var backend = T.EchoServer();
        backend.Start();
        var rec = new Recorder();
        using var front = ClientEngine(rec);
        var fromHandler = new TaskCompletionSource<Task<ConnectionId>>(TaskCreationOptions.RunContinuationsAsynchronously);
        front.Connected += (s, e) =>
        {
            // A proxy's first step: the accepted client's handler opens the way to a backend.
            if (!e.IsOutbound) fromHandler.TrySetResult(s.ConnectAsync("127.0.0.1", backend.Port));
        };
        front.Start();
        using var c = await Client.ConnectAsync(front.Port);
        var id = await (await fromHandler.Task.Within()).Within();
        Assert.True(rec.Conns[id.Value].Outbound);
        await EchoRoundTrip(front, rec, id, 20, 5);
        c.Dispose();
        front.Stop();
        Assert.Empty(rec.Violations);
    }

    [Fact]
    public async Task ConnectSourceBindsTheLocalSide()
    {
        using var echo = T.EchoServer();
        var peers = new ConcurrentQueue<string>();
        echo.Connected += (s, e) => peers.Enqueue(e.Peer);
        echo.Start("127.0.0.1", 0);
        var rec = new Recorder();
        using var client = ClientEngine(rec, new IocpServerOptions { ConnectSource = "127.0.0.2" });
        Assert.Equal("127.0.0.2", client.GetOptionString(ServerOption.ConnectSource));
        client.StartWithoutListener();
        var id = await client.ConnectAsync("127.0.0.1", echo.Port).Within();
        Assert.StartsWith("127.0.0.2:", client.GetInfo(id).Local);
        await EchoRoundTrip(client, rec, id, 5, 9);
        Assert.StartsWith("127.0.0.2:", Assert.Single(peers));
        client.Stop();
    }

    // ---- Pull mode ----

    // A pull-mode reader of the whole stream, batches or owned events: records every event,
    // and queues outbound connections' packets per connection.
    private sealed class PullReader
    {
        public readonly ConcurrentQueue<ServerEvent> Seen = new();
        public readonly ConcurrentDictionary<ulong, Channel<byte[]>> Packets = new();
        public Task Done = Task.CompletedTask;

        public Channel<byte[]> Of(ConnectionId id) => Packets.GetOrAdd(id.Value, _ => Channel.CreateUnbounded<byte[]>());

        public void Start(IocpServer server, bool batches)
        {
            Done = Task.Run(async () =>
            {
                if (batches)
                {
                    await foreach (var batch in server.ReadBatchesAsync())
                        foreach (var ev in batch) Take(ev.ToServerEvent());
                }
                else
                {
                    await foreach (var ev in server.ReadEventsAsync()) Take(ev);
                }
            });
        }

        private void Take(ServerEvent ev)
        {
            Seen.Enqueue(ev);
            if (ev.Type == ServerEventType.Packet) Of(ev.Connection).Writer.TryWrite(ev.Payload);
        }

        public ServerEvent[] EventsOf(ConnectionId id) => Seen.Where(e => e.Connection == id).ToArray();
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task PullModeConnectAsync(bool batches)
    {
        using var echo = T.EchoServer();
        echo.Start();
        using var full = await FullListener.CreateAsync();
        using var client = new IocpServer(new IocpServerOptions { PullMode = true, WorkerThreads = 2 });
        client.StartWithoutListener();
        var reader = new PullReader();
        reader.Start(client, batches);

        var id = await client.ConnectAsync("127.0.0.1", echo.Port).Within();
        Assert.Equal(ConnectionFlags.Outbound, client.GetInfo(id).Flags);
        var sent = Enumerable.Range(0, 100).Select(k => T.Pattern(1 + k * 13, k)).ToArray();
        foreach (var p in sent) client.Send(id, p);
        foreach (var p in sent) Assert.Equal(p, await reader.Of(id).Reader.ReadAsync().AsTask().Within());

        var refused = await Assert.ThrowsAsync<IocpsrvConnectException>(() => client.ConnectAsync("127.0.0.1", DeadPort())).Within();
        Assert.Equal(DisconnectReason.ConnectRefused, refused.Reason);
        var unresolved = await Assert.ThrowsAsync<IocpsrvConnectException>(() => client.ConnectAsync("no-such-host.invalid", 80)).Within();
        Assert.Equal(DisconnectReason.NameNotResolved, unresolved.Reason);

        var hanging = client.ConnectAsync("127.0.0.1", full.Port);
        Assert.True(client.Disconnect(id));
        await T.Eventually(() => reader.EventsOf(id).Any(e => e.Type == ServerEventType.Disconnected), "its Disconnected event");
        Assert.False(hanging.IsCompleted);
        client.Stop();
        await reader.Done.Within(); // the stream ends once every event was read
        var stopped = await Assert.ThrowsAsync<IocpsrvConnectException>(() => hanging).Within();
        Assert.Equal(DisconnectReason.ServerStopped, stopped.Reason);

        // The stream: the established one's Connected (the address reached), its packets, its
        // Disconnected; each failed attempt's Disconnected alone, with the task's reason.
        var evs = reader.EventsOf(id);
        Assert.Equal(ServerEventType.Connected, evs[0].Type);
        Assert.Equal($"127.0.0.1:{echo.Port}", evs[0].Peer);
        Assert.Equal(100, evs.Count(e => e.Type == ServerEventType.Packet));
        Assert.Equal(ServerEventType.Disconnected, evs[^1].Type);
        Assert.Equal(DisconnectReason.LocalClose, evs[^1].Reason);
        Assert.Equal(102, evs.Length);
        foreach (var ex in new[] { refused, unresolved, stopped })
        {
            var only = Assert.Single(reader.EventsOf(ex.Connection));
            Assert.Equal(ServerEventType.Disconnected, only.Type);
            Assert.Equal(ex.Reason, only.Reason);
        }
    }

    [Fact]
    public async Task PullModeOutcomeUnreadUntilDispose()
    {
        using var echo = T.EchoServer();
        echo.Start();
        var client = new IocpServer(new IocpServerOptions { PullMode = true, WorkerThreads = 2 });
        client.StartWithoutListener();
        // Nobody reads the stream: the outcome waits in the engine's queue, and so does the task.
        var attempt = client.ConnectAsync("127.0.0.1", echo.Port);
        await T.Eventually(() => echo.Stats.ConnectionsTotal == 1, "the echo server accepted it");
        await Task.Delay(100);
        Assert.False(attempt.IsCompleted);
        client.Dispose(); // the stream is dropped with its events
        await Assert.ThrowsAsync<ObjectDisposedException>(() => attempt).Within();
    }

    [Fact]
    public async Task PullModeStartTwiceKeepsTheRunningStream()
    {
        // A second Start on a running pull-mode server fails (State) and must leave the
        // running run's event stream alone.
        using var server = new IocpServer(new IocpServerOptions { PullMode = true, WorkerThreads = 2 });
        server.StartWithoutListener();
        var reader = new PullReader();
        reader.Start(server, batches: true);
        Assert.Equal(IocpsrvError.State, Code(Assert.Throws<InvalidOperationException>(() => server.Start("127.0.0.1", 0))));
        Assert.Equal(IocpsrvError.State, Code(Assert.Throws<InvalidOperationException>(() => server.StartWithoutListener())));
        using var echo = T.EchoServer();
        echo.Start();
        var id = await server.ConnectAsync("127.0.0.1", echo.Port).Within();
        server.Send(id, new byte[] { 1, 2, 3 });
        Assert.Equal(new byte[] { 1, 2, 3 }, await reader.Of(id).Reader.ReadAsync().AsTask().Within());
        Assert.False(reader.Done.IsCompleted);
        server.Stop();
        await reader.Done.Within();
    }
}
