// KestrelEcho: the echo an ASP.NET Core developer would write for a raw TCP protocol: a
// Kestrel ConnectionHandler (socket transport, System.IO.Pipelines) with the framing of
// every bench server (4-byte little-endian length, then the payload). Per read: take the
// whole buffered sequence, copy every complete frame into the output pipe, advance past
// them (the incomplete tail stays buffered), and flush once: one write per read, the
// batching SocketEcho and iocpsrv do. Kestrel sets TCP_NODELAY itself (NoDelay defaults to
// true). Prints "listening on HOST:PORT"; SIGINT/SIGTERM stop it (exit status 0).
//
//   dotnet run -c Release --project bench/KestrelEcho -- --port 0 [--max-packet BYTES]
using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

int port = 5151;
string host = "127.0.0.1";
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--port": port = int.Parse(args[++i]); break;
        case "--host": host = args[++i]; break;
        case "--max-packet": EchoHandler.MaxPacket = int.Parse(args[++i]); break;
        default: Console.Error.WriteLine($"KestrelEcho: unknown argument {args[i]}"); return 2;
    }
}

var builder = WebApplication.CreateSlimBuilder();
builder.Logging.ClearProviders(); // no per-connection log lines on the measured path
builder.WebHost.ConfigureKestrel(k =>
{
    k.Listen(IPAddress.Parse(host), port, lo => lo.UseConnectionHandler<EchoHandler>());
    k.Limits.MaxConcurrentConnections = null;
    k.Limits.MaxConcurrentUpgradedConnections = null;
});
builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(5));
var app = builder.Build();
await app.StartAsync();
var addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses;
var bound = new Uri(addresses.First());
Console.WriteLine($"listening on {host}:{bound.Port}");
await app.WaitForShutdownAsync(); // SIGINT/SIGTERM: the host's console lifetime
Console.WriteLine($"stopped: {Interlocked.Read(ref EchoHandler.Packets)} packets echoed");
return 0;

sealed class EchoHandler : ConnectionHandler
{
    public static int MaxPacket = 1 << 20;
    public static long Packets;

    public override async Task OnConnectedAsync(ConnectionContext connection)
    {
        PipeReader input = connection.Transport.Input;
        PipeWriter output = connection.Transport.Output;
        try
        {
            while (true)
            {
                ReadResult result = await input.ReadAsync();
                ReadOnlySequence<byte> buffer = result.Buffer;
                int count = 0;
                bool bad = false;
                while (buffer.Length >= 4)
                {
                    uint len = ReadLength(buffer);
                    if (len > (uint)MaxPacket) { bad = true; break; } // protocol error
                    if (buffer.Length - 4 < len) break;
                    ReadOnlySequence<byte> frame = buffer.Slice(0, 4 + len);
                    foreach (ReadOnlyMemory<byte> segment in frame) output.Write(segment.Span);
                    buffer = buffer.Slice(frame.End);
                    count++;
                }
                // Consumed up to the first incomplete frame; everything was examined.
                input.AdvanceTo(buffer.Start, buffer.End);
                if (bad) break;
                if (count > 0)
                {
                    Interlocked.Add(ref Packets, count);
                    FlushResult flushed = await output.FlushAsync();
                    if (flushed.IsCompleted || flushed.IsCanceled) break;
                }
                if (result.IsCompleted || result.IsCanceled) break;
            }
        }
        catch (ConnectionResetException)
        {
        }
        catch (ConnectionAbortedException)
        {
        }
        catch (IOException)
        {
        }
        finally
        {
            await input.CompleteAsync();
            await output.CompleteAsync();
        }
    }

    static uint ReadLength(in ReadOnlySequence<byte> buffer)
    {
        ReadOnlySpan<byte> first = buffer.FirstSpan;
        if (first.Length >= 4) return BinaryPrimitives.ReadUInt32LittleEndian(first);
        Span<byte> hdr = stackalloc byte[4];
        buffer.Slice(0, 4).CopyTo(hdr);
        return BinaryPrimitives.ReadUInt32LittleEndian(hdr);
    }
}
