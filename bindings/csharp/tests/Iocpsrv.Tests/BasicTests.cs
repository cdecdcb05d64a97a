using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;

namespace Iocpsrv.Tests;

public class LibraryTests
{
    [Fact]
    public void VersionMajorMatchesTheBinding()
    {
        Assert.Equal(IocpServer.AbiMajorVersion, IocpServer.LibraryVersion.Major);
        Assert.StartsWith($"{IocpServer.LibraryVersion.Major}.{IocpServer.LibraryVersion.Minor}.", IocpServer.LibraryVersionString);
    }

    [Fact]
    public void ErrorNamesAndTextComeFromTheLibrary()
    {
        Assert.Equal("IOCPSRV_ENOTCONN", IocpServer.ErrorName((int)IocpsrvError.NotConnected));
        Assert.Equal("IOCPSRV_EQUEUEFULL", IocpServer.ErrorName((int)IocpsrvError.QueueFull));
        Assert.Equal("IOCPSRV_EACCES", IocpServer.ErrorName((int)IocpsrvError.AccessDenied));
        Assert.Contains("stale", IocpServer.ErrorText((int)IocpsrvError.NotConnected));
        Assert.Equal("peer-closed", IocpServer.ReasonName(DisconnectReason.PeerClosed));
        var ex = new IocpsrvException(-3, "op");
        Assert.Equal(IocpsrvError.NotConnected, ex.Error);
        Assert.Equal(-3, ex.Code);
        Assert.Equal("IOCPSRV_ENOTCONN", ex.ErrorName);
        Assert.Equal("op: IOCPSRV_ENOTCONN: " + IocpServer.ErrorText(-3), ex.Message);
    }

    [Fact]
    public void EveryReasonHasAName()
    {
        // The library's names, the connect reasons (issue 20) included.
        foreach (DisconnectReason r in Enum.GetValues<DisconnectReason>())
            Assert.NotEqual("unknown", IocpServer.ReasonName(r));
        Assert.Equal("connect-timeout", IocpServer.ReasonName(DisconnectReason.ConnectTimeout));
        Assert.Equal("name-not-resolved", IocpServer.ReasonName(DisconnectReason.NameNotResolved));
        Assert.Equal(13, Enum.GetValues<DisconnectReason>().Length);
        Assert.Equal("IOCPSRV_ELIMIT", IocpServer.ErrorName((int)IocpsrvError.Limit));
    }

    [Fact]
    public void EveryErrorCodeHasAName()
    {
        foreach (IocpsrvError e in Enum.GetValues<IocpsrvError>())
        {
            if (e == IocpsrvError.Ok) continue;
            Assert.StartsWith("IOCPSRV_E", IocpServer.ErrorName((int)e));
        }
    }

    [Fact]
    public unsafe void StructsMatchTheCLayout()
    {
        // sizeof / offsetof of the C structs on 64-bit (checked against iocpsrv.h with gcc).
        Assert.Equal(192, sizeof(ConnectionInfo));
        Assert.Equal(160, sizeof(ServerStats));
        Assert.Equal(40, sizeof(NativeEvent));
        Assert.Equal(16, sizeof(NativeBuf));
        ConnectionInfo info = default;
        byte* b = (byte*)&info;
        Assert.Equal(8, (int)((byte*)&info.Id - b));
        Assert.Equal(56, (int)((byte*)&info.PendingSendBytes - b));
        ServerStats st = default;
        Assert.Equal(104, (int)((byte*)&st.PullQueueDepth - (byte*)&st));
        Assert.Equal(112, (int)((byte*)&st.WorkersPeak - (byte*)&st));
        Assert.Equal(128, (int)((byte*)&st.PoolShrinks - (byte*)&st));
        Assert.Equal(136, (int)((byte*)&st.AllocFailures - (byte*)&st));
        Assert.Equal(144, (int)((byte*)&st.SourceRefusals - (byte*)&st));
        Assert.Equal(152, (int)((byte*)&st.ProxyUntrusted - (byte*)&st));
    }
}

public class EchoTests
{
    [Fact]
    public async Task EchoesPacketsIncludingEmptyOnes()
    {
        using var server = T.EchoServer();
        server.Start();
        Assert.True(server.IsRunning);
        Assert.InRange(server.Port, 1, 65535);
        using var c = await Client.ConnectAsync(server.Port);
        var payloads = new[] { Encoding.ASCII.GetBytes("Test Item 1"), Array.Empty<byte>(), T.Pattern(100_000, 7) };
        foreach (var p in payloads) await c.SendAsync(p);
        foreach (var p in payloads) Assert.Equal(p, await c.ReadAsync());
        await T.Eventually(() => server.Stats.PacketsOut >= 3, "packets_out");
        var st = server.Stats;
        // The library fills min(our size, its size): 112 before the dynamic pool's fields.
        Assert.InRange(st.StructSize, 112u, (uint)sizeof_stats());
        Assert.Equal(3UL, st.PacketsIn);
        Assert.Equal(1UL, st.ConnectionsNow);
        Assert.Equal(2U, st.Workers);
    }

    private static unsafe int sizeof_stats() => sizeof(ServerStats);

    [Fact]
    public async Task SplitHeaderAndGluedPacketsAreReassembled()
    {
        using var server = T.EchoServer();
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        var a = c.Frame(Encoding.ASCII.GetBytes("alpha"));
        var b = c.Frame(Encoding.ASCII.GetBytes("beta"));
        var all = a.Concat(b).ToArray();
        await c.SendRawAsync(all[..2]);
        await c.SendRawAsync(all[2..]);
        Assert.Equal("alpha", Encoding.ASCII.GetString(await c.ReadAsync()));
        Assert.Equal("beta", Encoding.ASCII.GetString(await c.ReadAsync()));
    }

    [Fact]
    public async Task SendFromAnotherThreadAndGatheredSend()
    {
        using var server = new IocpServer();
        var connected = new TaskCompletionSource<ConnectionId>(TaskCreationOptions.RunContinuationsAsynchronously);
        server.Connected += (s, e) => connected.TrySetResult(e.Connection);
        server.Start();
        using var c = await Client.ConnectAsync(server.Port);
        var id = await connected.Task.Within();
        Assert.False(server.IsHandlerThread);
        server.Send(id, Encoding.ASCII.GetBytes("from the test thread"));
        server.Send(id, Encoding.ASCII.GetBytes("head:"), Encoding.ASCII.GetBytes("body"));
        Assert.True(server.TrySend(id, ReadOnlySpan<byte>.Empty));
        Assert.Equal("from the test thread", Encoding.ASCII.GetString(await c.ReadAsync()));
        Assert.Equal("head:body", Encoding.ASCII.GetString(await c.ReadAsync()));
        Assert.Empty(await c.ReadAsync());
    }

    [Fact]
    public async Task InfoConnectionsAndBroadcast()
    {
        using var server = new IocpServer();
        var ids = new System.Collections.Concurrent.ConcurrentDictionary<string, ConnectionId>();
        var three = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        server.Connected += (s, e) =>
        {
            ids[e.Peer] = e.Connection;
            if (ids.Count == 3) three.TrySetResult();
        };
        server.Start();
        var clients = new List<Client>();
        try
        {
            for (int i = 0; i < 3; i++) clients.Add(await Client.ConnectAsync(server.Port));
            await three.Task.Within();
            Assert.Equal(3, server.ConnectionCount);
            var listed = server.Connections;
            Assert.Equal(3, listed.Count);
            foreach (var c in clients)
            {
                var id = ids[c.LocalEndPoint];
                Assert.Contains(id, listed);
                var info = server.GetInfo(id);
                Assert.Equal(id, info.Connection);
                Assert.Equal(c.LocalEndPoint, info.Peer);
                Assert.Equal($"127.0.0.1:{server.Port}", info.Local);
                Assert.Equal(ConnectionFlags.None, info.Flags);
                Assert.InRange(info.ConnectTime, DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddMinutes(1));
                Assert.True(server.TryGetInfo(id, out var again));
                Assert.Equal(info.Id, again.Id);
                Assert.Equal(0, server.PendingBytes(id));
            }
            Assert.Equal(3, server.Broadcast(Encoding.ASCII.GetBytes("to all")));
            foreach (var c in clients) Assert.Equal("to all", Encoding.ASCII.GetString(await c.ReadAsync()));
            var some = ids[clients[0].LocalEndPoint];
            await T.Eventually(() => server.GetInfo(some).PacketsOut == 1 && server.GetInfo(some).BytesOut == 10, "packets_out");
        }
        finally
        {
            foreach (var c in clients) c.Dispose();
        }
    }

    [Fact]
    public async Task RestartAfterStop()
    {
        using var server = T.EchoServer();
        for (int round = 0; round < 3; round++)
        {
            server.Start();
            using (var c = await Client.ConnectAsync(server.Port))
            {
                await c.SendAsync(new byte[] { (byte)round });
                Assert.Equal(new byte[] { (byte)round }, await c.ReadAsync());
            }
            server.Stop(TimeSpan.FromSeconds(5));
            Assert.False(server.IsRunning);
            Assert.True(server.WhenStopped.IsCompleted);
        }
        Assert.Equal(3UL, server.Stats.ConnectionsTotal);
    }

    [Fact]
    public void DisposeWithoutStartAndTwice()
    {
        var server = new IocpServer();
        server.Dispose();
        server.Dispose();
        Assert.True(server.IsDisposed);
        Assert.Throws<ObjectDisposedException>(() => server.Start());
        Assert.Throws<ObjectDisposedException>(() => server.Stats);
        Assert.False(server.TrySend(new ConnectionId(1), new byte[1], out var error));
        Assert.Equal(IocpsrvError.Stopped, error);
        server.Stop(); // no-op
    }

    [Fact]
    public void UnreferencedServersAreFinalized()
    {
        // A server never started and never disposed is freed by the SafeHandle's finalizer
        // (the user GCHandle is weak while the server is stopped).
        var weak = CreateAndDrop();
        for (int i = 0; i < 10 && weak.IsAlive; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
        Assert.False(weak.IsAlive);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference CreateAndDrop() => new(new IocpServer());
}

// Every platform: these tests must not return early on Windows or anywhere else (the name
// clash they guard against only ever showed on Windows).
public class ResolverTests
{
    /// <summary>The native library the project reference copied next to the binding, for
    /// this process's OS and architecture.</summary>
    private static string CopiedNative()
    {
        string dir = Path.GetDirectoryName(typeof(IocpServer).Assembly.Location)!;
        string file = Path.Combine(dir, "runtimes", Native.RuntimeId, "native", Native.NativeFileName);
        Assert.True(File.Exists(file), $"{file} is missing: build the native library for {Native.RuntimeId} first");
        return file;
    }

    [Fact]
    public void AssemblyAndNativeLibraryNeverShareAName()
    {
        // Windows (and macOS) file names ignore case: a managed Iocpsrv.dll next to the native
        // iocpsrv.dll is one file name, and P/Invoke "iocpsrv" would load the managed one.
        string managed = Path.GetFileNameWithoutExtension(typeof(IocpServer).Assembly.Location);
        Assert.Equal("Iocpsrv.Net", managed);
        Assert.Equal("Iocpsrv.Net", typeof(IocpServer).Assembly.GetName().Name);
        foreach (string native in new[] { "iocpsrv.dll", "libiocpsrv.so", "libiocpsrv.dylib", Native.NativeFileName })
        {
            Assert.NotEqual(Path.GetFileNameWithoutExtension(native), managed, StringComparer.OrdinalIgnoreCase);
            Assert.NotEqual(native, managed + ".dll", StringComparer.OrdinalIgnoreCase);
        }
        Assert.NotEqual(Native.Lib, managed, StringComparer.OrdinalIgnoreCase);
        Assert.NotEqual(Native.Lib + ".dll", managed + ".dll", StringComparer.OrdinalIgnoreCase);
    }

    [Fact]
    public void NativeFileAndRuntimeIdForThisPlatform()
    {
        string expectedFile = OperatingSystem.IsWindows() ? "iocpsrv.dll"
            : OperatingSystem.IsMacOS() ? "libiocpsrv.dylib" : "libiocpsrv.so";
        Assert.Equal(expectedFile, Native.NativeFileName);
        Assert.Matches("^(win|linux|osx)-(x64|x86|arm64|arm)$", Native.RuntimeId);
        if (OperatingSystem.IsWindows()) Assert.StartsWith("win-", Native.RuntimeId);
        if (OperatingSystem.IsLinux()) Assert.StartsWith("linux-", Native.RuntimeId);
    }

    [Fact]
    public void DefaultResolutionLoadsTheNativeLibrary()
    {
        var asm = typeof(IocpServer).Assembly;
        string? saved = Environment.GetEnvironmentVariable(Native.LibraryEnvVar);
        try
        {
            Environment.SetEnvironmentVariable(Native.LibraryEnvVar, null);
            CopiedNative();
            nint h = Native.Resolve("iocpsrv", asm, null);
            Assert.NotEqual(0, h);
            Assert.True(NativeLibrary.TryGetExport(h, "iocpsrv_version", out _));
            Assert.Equal(0, Native.Resolve("something-else", asm, null));
            // And the P/Invoke itself reaches the native library.
            Assert.Equal(IocpServer.AbiMajorVersion, IocpServer.LibraryVersion.Major);
        }
        finally
        {
            Environment.SetEnvironmentVariable(Native.LibraryEnvVar, saved);
        }
    }

    [Fact]
    public void EnvironmentVariableOverridesAndMustLoad()
    {
        var asm = typeof(IocpServer).Assembly;
        string? saved = Environment.GetEnvironmentVariable(Native.LibraryEnvVar);
        try
        {
            string file = CopiedNative();
            Environment.SetEnvironmentVariable(Native.LibraryEnvVar, file);
            Assert.NotEqual(0, Native.Resolve("iocpsrv", asm, null));
            Environment.SetEnvironmentVariable(Native.LibraryEnvVar, Path.Combine(Path.GetTempPath(), "nonexistent", Native.NativeFileName));
            Assert.Throws<DllNotFoundException>(() => Native.Resolve("iocpsrv", asm, null));
        }
        finally
        {
            Environment.SetEnvironmentVariable(Native.LibraryEnvVar, saved);
        }
    }

    [Fact]
    public void ALibraryWithoutTheExportsIsRefused()
    {
        // What Windows loaded before the rename: a file of the right name that is not iocpsrv
        // (the managed assembly). Any loadable library without iocpsrv_version stands in.
        var asm = typeof(IocpServer).Assembly;
        string other = OperatingSystem.IsWindows() ? Path.Combine(Environment.SystemDirectory, "kernel32.dll")
            : OperatingSystem.IsMacOS() ? "/usr/lib/libSystem.B.dylib"
            : new[] { "/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6", "/lib64/libm.so.6", "/usr/lib/aarch64-linux-gnu/libm.so.6" }
                .FirstOrDefault(File.Exists) ?? "libm.so.6";
        string? saved = Environment.GetEnvironmentVariable(Native.LibraryEnvVar);
        try
        {
            Environment.SetEnvironmentVariable(Native.LibraryEnvVar, other);
            var ex = Assert.Throws<DllNotFoundException>(() => Native.Resolve("iocpsrv", asm, null));
            Assert.Contains("iocpsrv_version", ex.Message);
        }
        finally
        {
            Environment.SetEnvironmentVariable(Native.LibraryEnvVar, saved);
        }
    }
}
