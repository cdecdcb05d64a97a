using System.Net.Sockets;
using System.Text;

namespace Iocpsrv.Tests;

public class OptionsTests
{
    [Fact]
    public void EveryOptionIsAppliedAndReadBack()
    {
        var o = new IocpServerOptions
        {
            WorkerThreads = 3,
            Concurrency = 2,
            ListenBacklog = 64,
            AcceptsPosted = 8,
            MaxConnections = 500,
            MaxPacketSize = 2 << 20,
            Framing = Framing.Length16BigEndian,
            SendQueueLimit = 1 << 20,
            IdleTimeout = TimeSpan.FromSeconds(30),
            KeepAlive = TimeSpan.FromSeconds(60),
            NoDelay = false,
            ReceiveBufferSize = 65536,
            SendBufferSize = 32768,
            ReadBufferSize = 4096,
            PullMode = true,
            PullQueueLimit = 100,
            CloseTimeout = TimeSpan.FromMilliseconds(1500),
            IPv6Only = true,
            ConnectTimeout = TimeSpan.FromMilliseconds(2500),
            ConnectSource = "::1",
        };
        using var server = new IocpServer(o);
        Assert.Equal(3, server.GetOption(ServerOption.WorkerThreads));
        Assert.Equal(2, server.GetOption(ServerOption.Concurrency));
        Assert.Equal(64, server.GetOption(ServerOption.ListenBacklog));
        Assert.Equal(8, server.GetOption(ServerOption.AcceptsPosted));
        Assert.Equal(500, server.GetOption(ServerOption.MaxConnections));
        Assert.Equal(2 << 20, server.GetOption(ServerOption.MaxPacketSize));
        Assert.Equal((long)Framing.Length16BigEndian, server.GetOption(ServerOption.Framing));
        Assert.Equal(1 << 20, server.GetOption(ServerOption.SendQueueLimit));
        Assert.Equal(30000, server.GetOption(ServerOption.IdleTimeoutMs));
        Assert.Equal(60000, server.GetOption(ServerOption.KeepAliveMs));
        Assert.Equal(0, server.GetOption(ServerOption.NoDelay));
        Assert.Equal(65536, server.GetOption(ServerOption.ReceiveBufferSize));
        Assert.Equal(32768, server.GetOption(ServerOption.SendBufferSize));
        Assert.Equal(4096, server.GetOption(ServerOption.ReadBufferSize));
        Assert.Equal(1, server.GetOption(ServerOption.PullMode));
        Assert.Equal(100, server.GetOption(ServerOption.PullQueueLimit));
        Assert.Equal(1500, server.GetOption(ServerOption.CloseTimeoutMs));
        Assert.Equal(1, server.GetOption(ServerOption.IPv6Only));
        Assert.Equal(2500, server.GetOption(ServerOption.ConnectTimeoutMs));
        Assert.Equal("::1", server.GetOptionString(ServerOption.ConnectSource));
        // Every library option has a property.
        Assert.Equal(31, Enum.GetValues<ServerOption>().Length);
    }

    [Fact]
    public void ProxyTrustedAndPerSourceLimitAreApplied()
    {
        using var server = new IocpServer(new IocpServerOptions
        {
            ProxyProtocol = ProxyMode.Required, ProxyTrusted = "10.1.2.3/8 ::1", MaxConnectionsPerSource = 4,
        });
        Assert.Equal("10.0.0.0/8, ::1/128", server.GetOptionString(ServerOption.ProxyTrusted));
        Assert.Equal(4, server.GetOption(ServerOption.MaxConnectionsPerSource));
        var e = Assert.Throws<ArgumentException>(() => server.SetOptionString(ServerOption.ProxyTrusted, "10.0.0.0/33"));
        Assert.Equal("value", e.ParamName);
        Assert.Equal(IocpsrvError.InvalidArgument, Assert.IsType<IocpsrvException>(e.InnerException).Error);
        Assert.Equal("10.0.0.0/8, ::1/128", server.GetOptionString(ServerOption.ProxyTrusted));
        server.SetOptionString(ServerOption.ProxyTrusted, null);
        Assert.Equal("", server.GetOptionString(ServerOption.ProxyTrusted));
    }

    [Fact]
    public void ProxyProtocolOptionIsApplied()
    {
        using var server = new IocpServer(new IocpServerOptions { ProxyProtocol = ProxyMode.Required });
        Assert.Equal((long)ProxyMode.Required, server.GetOption(ServerOption.ProxyProtocol));
    }

    [Fact]
    public void DynamicPoolOptions()
    {
        using (var probe = new IocpServer())
        {
            try
            {
                probe.GetOption(ServerOption.PoolMax);
            }
            catch (ArgumentException e) when (e.InnerException is IocpsrvException { Error: IocpsrvError.UnknownOption })
            {
                return; // a library built before the dynamic pool
            }
        }
        using var server = new IocpServer(new IocpServerOptions
        {
            WorkerThreads = 2,
            PoolMin = 1,
            PoolMax = 6,
            PoolBusyTime = TimeSpan.FromMilliseconds(50),
            PoolIdleTime = TimeSpan.FromSeconds(2),
            PoolCpuHigh = 95,
            PoolCpuLow = 80,
        });
        Assert.Equal(1, server.GetOption(ServerOption.PoolMin));
        Assert.Equal(6, server.GetOption(ServerOption.PoolMax));
        Assert.Equal(50, server.GetOption(ServerOption.PoolBusyMs));
        Assert.Equal(2000, server.GetOption(ServerOption.PoolIdleMs));
        Assert.Equal(95, server.GetOption(ServerOption.PoolCpuHigh));
        Assert.Equal(80, server.GetOption(ServerOption.PoolCpuLow));
        Assert.Equal(IocpsrvError.Range, Code(Assert.Throws<ArgumentException>(() => server.SetOption(ServerOption.PoolCpuHigh, 101))));
    }

    [Fact]
    public void DefaultsAreTheLibrarys()
    {
        using var server = new IocpServer();
        Assert.Equal(1 << 20, server.GetOption(ServerOption.MaxPacketSize));
        Assert.Equal(10000, server.GetOption(ServerOption.MaxConnections));
        Assert.Equal(1, server.GetOption(ServerOption.NoDelay));
        Assert.Equal(0, server.GetOption(ServerOption.PullMode));
    }

    [Fact]
    public void BadOptionsThrowArgumentExceptions()
    {
        var ex = Assert.Throws<ArgumentException>(() => new IocpServer(new IocpServerOptions { WorkerThreads = 5000 }));
        Assert.Equal("options", ex.ParamName);
        Assert.Equal(IocpsrvError.Range, Code(ex));
        Assert.Contains("WorkerThreads", ex.Message);
        using var server = new IocpServer();
        var unknown = Assert.Throws<ArgumentException>(() => server.SetOption((ServerOption)999, 1));
        Assert.Equal(IocpsrvError.UnknownOption, Code(unknown));
        Assert.Equal("option", unknown.ParamName);
        Assert.Equal(IocpsrvError.UnknownOption, Code(Assert.Throws<ArgumentException>(() => server.GetOption((ServerOption)999))));
        var range = Assert.Throws<ArgumentException>(() => server.SetOption(ServerOption.Framing, 99));
        Assert.Equal(IocpsrvError.Range, Code(range));
        Assert.Equal("value", range.ParamName);
        server.SetOption(ServerOption.MaxConnections, 7);
        Assert.Equal(7, server.GetOption(ServerOption.MaxConnections));
        server.Start();
        Assert.Equal(IocpsrvError.State, Code(Assert.Throws<InvalidOperationException>(() => server.SetOption(ServerOption.MaxConnections, 8))));
        server.Stop();
        server.SetOption(ServerOption.MaxConnections, 8);
    }

    /// <summary>The library's code carried by a mapped exception.</summary>
    private static IocpsrvError Code(Exception e) => Assert.IsType<IocpsrvException>(e.InnerException).Error;

    [Fact]
    public void LifecycleErrors()
    {
        using var server = T.EchoServer();
        Assert.Equal(IocpsrvError.Stopped, Code(Assert.Throws<InvalidOperationException>(() => server.Port)));
        Assert.Throws<ArgumentOutOfRangeException>(() => server.Start("127.0.0.1", -1));
        Assert.Throws<ArgumentOutOfRangeException>(() => server.Start("127.0.0.1", 65536));
        Assert.False(server.IsRunning);
        server.Start();
        var ex = Assert.Throws<InvalidOperationException>(() => server.Start());
        Assert.Equal(IocpsrvError.State, Code(ex));
        Assert.Equal("IOCPSRV_ESTATE", Assert.IsType<IocpsrvException>(ex.InnerException).ErrorName);
        using var second = T.EchoServer();
        var inUse = Assert.Throws<IocpsrvException>(() => second.Start("127.0.0.1", server.Port));
        Assert.Equal(IocpsrvError.AddressInUse, inUse.Error);
        Assert.Equal("IOCPSRV_EADDRINUSE", inUse.ErrorName);
        Assert.Equal(IocpsrvError.AddressNotAvailable,
            Assert.Throws<IocpsrvException>(() => second.Start("not an address", 0)).Error);
        Assert.Throws<ArgumentOutOfRangeException>(() => server.Stop(TimeSpan.FromSeconds(-2)));
        server.Stop();
        Assert.Throws<ArgumentOutOfRangeException>(() => new IocpServer(new IocpServerOptions { PullChannelCapacity = 0 }));
    }

    [Fact]
    public async Task BigEndian16BitFraming()
    {
        using var server = T.EchoServer(new IocpServerOptions { Framing = Framing.Length16BigEndian });
        server.Start();
        using var c = await Client.ConnectAsync(server.Port, headerSize: 2, bigEndian: true);
        var p = T.Pattern(60000, 3);
        await c.SendAsync(p);
        Assert.Equal(p, await c.ReadAsync());
    }

    [Fact]
    public async Task RawFraming()
    {
        using var server = T.EchoServer(new IocpServerOptions { Framing = Framing.Raw });
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        var bytes = Encoding.ASCII.GetBytes("no header at all");
        await c.SendRawAsync(bytes);
        Assert.Equal(bytes, await c.ReadRawAsync(bytes.Length));
    }

    [Fact]
    public async Task IdleTimeoutCloses()
    {
        using var server = new IocpServer(new IocpServerOptions { IdleTimeout = TimeSpan.FromMilliseconds(200) });
        var reason = new TaskCompletionSource<DisconnectReason>(TaskCreationOptions.RunContinuationsAsynchronously);
        server.Disconnected += (s, e) => reason.TrySetResult(e.Reason);
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        Assert.Equal(DisconnectReason.IdleTimeout, await reason.Task.Within());
        Assert.True(await c.ClosedByServerAsync());
        Assert.Equal(1UL, server.Stats.IdleTimeouts);
    }

    [Fact]
    public async Task MaxConnectionsRefusesTheNextClient()
    {
        using var server = T.EchoServer(new IocpServerOptions { MaxConnections = 1 });
        server.Start();
        using var first = await Client.ConnectAsync(server.Port);
        await first.SendAsync(new byte[] { 1 });
        await first.ReadAsync();
        using var second = await Client.ConnectAsync(server.Port);
        Assert.True(await second.ClosedByServerAsync());
        await T.Eventually(() => server.Stats.ConnectionsRefused == 1, "connections_refused");
        await first.SendAsync(new byte[] { 2 });
        Assert.Equal(new byte[] { 2 }, await first.ReadAsync());
    }

    [Fact]
    public async Task Ipv6Loopback()
    {
        if (!Socket.OSSupportsIPv6) return;
        using var server = T.EchoServer();
        try
        {
            server.Start("::1", 0);
        }
        catch (IocpsrvException e) when (e.Error == IocpsrvError.AddressNotAvailable)
        {
            return; // no IPv6 loopback in this sandbox
        }
        using var s = new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp);
        await s.ConnectAsync("::1", server.Port).Within();
        await s.SendAsync(new byte[] { 1, 0, 0, 0, 42 });
        var buf = new byte[5];
        int got = 0;
        while (got < 5) got += await s.ReceiveAsync(buf.AsMemory(got)).AsTask().Within();
        Assert.Equal(new byte[] { 1, 0, 0, 0, 42 }, buf);
    }
}
