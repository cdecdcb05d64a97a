// Echo: an iocpsrv echo server on the .NET binding. Every packet (4-byte little-endian
// length + payload) comes back to its sender. Stops cleanly on Ctrl+C (SIGINT) or SIGTERM,
// printing a "stopped: ..." line with the server's totals.
//
//   dotnet run --project examples/Echo -- --port 5150 [--host 127.0.0.1] [--workers N] [--batch | --pull | --pull-events]
//
// Prints "listening on HOST:PORT" once clients can connect (port 0 picks a free one).
// --batch takes each receive's packets in one handler call (PacketsReceived) instead of one
// call per packet (PacketReceived): fewer transitions from native code.
// --pull reads the events in batches (ReadBatchesAsync) instead of handlers, and gathers the
// echoes with EventBatch.Send: one call into the library per batch each way.
// --pull-events reads them one at a time as owned ServerEvents (ReadEventsAsync) and echoes
// each with TrySend, as code written for the first pull API does.
using System.Runtime.InteropServices;
using Iocpsrv;

string host = "127.0.0.1";
int port = 5150;
int workers = 0;
bool pull = false, pullEvents = false, packetBatches = false, quiet = false;
for (int i = 0; i < args.Length; i++)
{
    string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
    switch (args[i])
    {
        case "--port": port = int.Parse(Next()); break;
        case "--host": host = Next(); break;
        case "--workers": workers = int.Parse(Next()); break;
        case "--pull": pull = true; break;
        case "--pull-events": pull = pullEvents = true; break;
        case "--batch": packetBatches = true; break;
        case "--quiet": quiet = true; break;
        case "--help":
        case "-h":
            Console.WriteLine("usage: Echo [--port N (default 5150, 0 = any)] [--host H (default 127.0.0.1)] [--workers N] [--batch | --pull | --pull-events] [--quiet]");
            return 0;
        default:
            Console.Error.WriteLine($"Echo: unknown argument {args[i]} (try --help)");
            return 2;
    }
}

await using var server = new IocpServer(new IocpServerOptions { WorkerThreads = workers, PullMode = pull });
server.UnhandledCallbackException += (s, e) => Console.Error.WriteLine($"handler failed on {e.Connection}: {e.Exception}");
if (!quiet)
{
    server.Connected += (s, e) => Console.WriteLine($"+ {e.Connection} {e.Peer}");
    server.Disconnected += (s, e) => Console.WriteLine($"- {e.Connection} {IocpServer.ReasonName(e.Reason)}");
}
// The hot path: one call into the library per packet, errors (a client that left) ignored.
if (packetBatches)
{
    server.PacketsReceived += static (s, id, packets) =>
    {
        foreach (ReadOnlySpan<byte> payload in packets) s.TrySend(id, payload);
    };
}
else
{
    server.PacketReceived += static (s, id, payload) => s.TrySend(id, payload);
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

try
{
    server.Start(host, port);
}
catch (Exception e) when (e is IocpsrvException or InvalidOperationException or NotSupportedException or ArgumentException)
{
    Console.Error.WriteLine($"Echo: cannot listen on {host}:{port}: {e.Message}");
    return 1;
}
Console.WriteLine($"listening on {host}:{server.Port} ({IocpServer.LibraryVersionString}{(pull ? ", pull mode" : packetBatches ? ", packet batches" : "")})");

Task pump = Task.CompletedTask;
if (pullEvents)
{
    pump = Task.Run(async () =>
    {
        await foreach (ServerEvent ev in server.ReadEventsAsync())
        {
            switch (ev.Type)
            {
                case ServerEventType.Packet: server.TrySend(ev.Connection, ev.Payload); break;
                case ServerEventType.Connected when !quiet: Console.WriteLine($"+ {ev.Connection} {ev.Peer}"); break;
                case ServerEventType.Disconnected when !quiet: Console.WriteLine($"- {ev.Connection} {IocpServer.ReasonName(ev.Reason)}"); break;
            }
        }
    });
}
else if (pull)
{
    // Batches read in place; the echoes are gathered and handed to the library in one call
    // when the next batch is asked for.
    pump = Task.Run(async () =>
    {
        await foreach (EventBatch batch in server.ReadBatchesAsync())
        {
            foreach (BatchEvent ev in batch)
            {
                switch (ev.Type)
                {
                    case ServerEventType.Packet: batch.Send(ev.Connection, ev.Payload.Span); break;
                    case ServerEventType.Connected when !quiet: Console.WriteLine($"+ {ev.Connection} {ev.Peer}"); break;
                    case ServerEventType.Disconnected when !quiet: Console.WriteLine($"- {ev.Connection} {IocpServer.ReasonName(ev.Reason)}"); break;
                }
            }
        }
    });
}

await stop.Task;
await server.StopAsync(TimeSpan.FromSeconds(2));
await pump;
var st = server.Stats;
Console.WriteLine($"stopped: {st.ConnectionsTotal} connections, {st.PacketsIn} packets in, {st.PacketsOut} out, {st.BytesIn} bytes in, {st.BytesOut} out");
return 0;
