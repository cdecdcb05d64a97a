// PackageConsumer: a small application on the Iocpsrv package (see PackageConsumer.csproj).
//
//   PackageConsumer --self-test       serve one echo to a client of its own, then stop
//   PackageConsumer [--port N]        echo server until Ctrl+C / SIGINT / SIGTERM, then a
//                                     graceful StopAsync and a "stopped: ..." line
//
// Both first check the client role on two engines of their own (so that the served server's
// totals stay the flood's): one started without a listener connects (ConnectAsync) to a
// listening echo engine, gets one echo back, and has an attempt on a closed port refused; a
// "consumer: client role ok" line says it worked (any failure makes the exit status 1).
//
// Both first check that the native library was found without IOCPSRV_LIBRARY, by the
// runtime's own probing of what the package put in the application (deps.json or the
// application folder), and that it is the native library, not the managed assembly.
using System.Net.Sockets;
using System.Reflection;
using System.Runtime.InteropServices;
using Iocpsrv;

bool selfTest = args.Contains("--self-test");
int port = 0;
int portArg = Array.IndexOf(args, "--port");
if (portArg >= 0 && portArg + 1 < args.Length) port = int.Parse(args[portArg + 1]);

if (!string.IsNullOrEmpty(Environment.GetEnvironmentVariable("IOCPSRV_LIBRARY")))
{
    Console.Error.WriteLine("consumer: IOCPSRV_LIBRARY is set; this check is about running without it");
    return 2;
}

Assembly binding = typeof(IocpServer).Assembly;
string managedFile = Path.GetFileName(binding.Location);
// This assembly has no resolver of its own: a hit here is the runtime's default probing.
if (!NativeLibrary.TryLoad("iocpsrv", typeof(Program).Assembly, null, out nint native) ||
    !NativeLibrary.TryGetExport(native, "iocpsrv_version", out _))
{
    Console.Error.WriteLine("consumer: the runtime's default probing did not find the native iocpsrv library");
    return 1;
}
string bindingTfm = binding.GetCustomAttribute<System.Runtime.Versioning.TargetFrameworkAttribute>()?.FrameworkName ?? "?";
Console.WriteLine($"consumer: {RuntimeInformation.FrameworkDescription} {RuntimeInformation.RuntimeIdentifier}, " +
                  $"binding {managedFile} {binding.GetName().Version} ({bindingTfm}), native {IocpServer.LibraryVersionString}");
if (string.Equals(Path.GetFileNameWithoutExtension(managedFile), "iocpsrv", StringComparison.OrdinalIgnoreCase))
{
    Console.Error.WriteLine($"consumer: the managed assembly {managedFile} has the native library's name");
    return 1;
}

bool clientRoleOk = await ClientRoleCheck();

await using var server = new IocpServer(new IocpServerOptions { WorkerThreads = 2 });
server.UnhandledCallbackException += (s, e) => Console.Error.WriteLine($"consumer: handler failed: {e.Exception}");
long refused = 0;
server.PacketReceived += (s, id, payload) =>
{
    if (!s.TrySend(id, payload, out IocpsrvError error) && error != IocpsrvError.NotConnected)
        Interlocked.Increment(ref refused);
};
server.Start("127.0.0.1", port);
Console.WriteLine($"listening on 127.0.0.1:{server.Port}");

if (selfTest)
{
    using var c = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
    c.ReceiveTimeout = 10000;
    c.Connect("127.0.0.1", server.Port);
    byte[] packet = { 3, 0, 0, 0, 1, 2, 3 };
    c.Send(packet);
    var buf = new byte[packet.Length];
    int got = 0;
    while (got < buf.Length)
    {
        int n = c.Receive(buf, got, buf.Length - got, SocketFlags.None);
        if (n == 0) break;
        got += n;
    }
    bool ok = buf.AsSpan().SequenceEqual(packet);
    Console.WriteLine($"consumer: echo {(ok ? "ok" : "WRONG")}");
    c.Shutdown(SocketShutdown.Send);
    using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(10));
    await server.StopAsync(limit.Token);
    return ok && clientRoleOk ? 0 : 1;
}

var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
Console.CancelKeyPress += (_, e) =>
{
    e.Cancel = true;
    stop.TrySetResult();
};
using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, ctx =>
{
    ctx.Cancel = true;
    stop.TrySetResult();
});
await stop.Task;
using (var limit = new CancellationTokenSource(TimeSpan.FromSeconds(10)))
    await server.StopAsync(TimeSpan.FromSeconds(5), limit.Token);
var st = server.Stats;
Console.WriteLine($"stopped: {st.ConnectionsTotal} connections, {st.PacketsIn} packets in, {st.PacketsOut} out, " +
                  $"{st.BytesIn} bytes in, {st.BytesOut} out, {Interlocked.Read(ref refused)} sends refused");
return Interlocked.Read(ref refused) == 0 && clientRoleOk ? 0 : 1;

// The client role: StartWithoutListener, ConnectAsync to a listening engine, one echo, and an
// attempt refused with its reason.
static async Task<bool> ClientRoleCheck()
{
    try
    {
        await using var echo = new IocpServer(new IocpServerOptions { WorkerThreads = 1 });
        echo.PacketReceived += (s, id, payload) => s.Send(id, payload);
        echo.Start("127.0.0.1", 0);
        int closedPort;
        using (var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            probe.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
            closedPort = ((System.Net.IPEndPoint)probe.LocalEndPoint!).Port;
        }

        await using var client = new IocpServer(new IocpServerOptions { WorkerThreads = 1, ConnectTimeout = TimeSpan.FromSeconds(10) });
        var reply = new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously);
        client.PacketReceived += (s, id, payload) => reply.TrySetResult(payload.ToArray());
        client.StartWithoutListener();
        using var limit = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        ConnectionId conn = await client.ConnectAsync("127.0.0.1", echo.Port, limit.Token);
        client.Send(conn, "client role"u8);
        byte[] echoed = await reply.Task.WaitAsync(limit.Token);
        if (System.Text.Encoding.UTF8.GetString(echoed) != "client role") throw new InvalidOperationException("wrong echo");
        DisconnectReason refusedWith = 0;
        try
        {
            await client.ConnectAsync("127.0.0.1", closedPort, limit.Token);
        }
        catch (IocpsrvConnectException e)
        {
            refusedWith = e.Reason;
        }
        if (refusedWith != DisconnectReason.ConnectRefused) throw new InvalidOperationException($"closed port: {refusedWith}, not ConnectRefused");
        Console.WriteLine($"consumer: client role ok (echo through ConnectAsync to 127.0.0.1:{echo.Port}, closed port {refusedWith})");
        return true;
    }
    catch (Exception e)
    {
        Console.Error.WriteLine($"consumer: client role FAILED: {e}");
        return false;
    }
}
