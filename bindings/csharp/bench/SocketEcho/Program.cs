// SocketEcho: the baseline a .NET developer would write without iocpsrv. One async loop per
// connection on System.Net.Sockets: read what arrived, cut it into 4-byte little-endian
// length-prefixed packets, append each packet's framed echo to an output buffer, and write
// that buffer with one send per read (the same batching iocpsrv does). Prints
// "listening on HOST:PORT".
//
//   dotnet run -c Release --project bench/SocketEcho -- --port 0 [--max-packet BYTES]
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;

int port = 5151;
int maxPacket = 1 << 20;
string host = "127.0.0.1";
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--port": port = int.Parse(args[++i]); break;
        case "--host": host = args[++i]; break;
        case "--max-packet": maxPacket = int.Parse(args[++i]); break;
        default: Console.Error.WriteLine($"SocketEcho: unknown argument {args[i]}"); return 2;
    }
}

using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
listener.Bind(new IPEndPoint(IPAddress.Parse(host), port));
listener.Listen(512);
Console.WriteLine($"listening on {host}:{((IPEndPoint)listener.LocalEndPoint!).Port}");

using var cts = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) => { e.Cancel = true; cts.Cancel(); };
using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, ctx => { ctx.Cancel = true; cts.Cancel(); });

long packets = 0;
try
{
    while (true)
    {
        Socket s = await listener.AcceptAsync(cts.Token);
        s.NoDelay = true;
        _ = Task.Run(() => Serve(s));
    }
}
catch (OperationCanceledException)
{
}
Console.WriteLine($"stopped: {Interlocked.Read(ref packets)} packets echoed");
return 0;

async Task Serve(Socket s)
{
    byte[] inBuf = new byte[65536];
    byte[] outBuf = new byte[65536];
    int have = 0;
    try
    {
        while (true)
        {
            if (have == inBuf.Length) Array.Resize(ref inBuf, inBuf.Length * 2);
            int n = await s.ReceiveAsync(inBuf.AsMemory(have), SocketFlags.None);
            if (n == 0) break;
            have += n;
            int pos = 0, outLen = 0, count = 0;
            while (have - pos >= 4)
            {
                int len = (int)BinaryPrimitives.ReadUInt32LittleEndian(inBuf.AsSpan(pos));
                if ((uint)len > (uint)maxPacket) return; // protocol error: drop the client
                if (have - pos - 4 < len)
                {
                    if (inBuf.Length < len + 4) { var bigger = new byte[len + 4]; Buffer.BlockCopy(inBuf, pos, bigger, 0, have - pos); have -= pos; pos = 0; inBuf = bigger; }
                    break;
                }
                // One packet: frame its echo into the output buffer.
                if (outBuf.Length - outLen < len + 4) Array.Resize(ref outBuf, Math.Max(outBuf.Length * 2, outLen + len + 4));
                BinaryPrimitives.WriteUInt32LittleEndian(outBuf.AsSpan(outLen), (uint)len);
                inBuf.AsSpan(pos + 4, len).CopyTo(outBuf.AsSpan(outLen + 4));
                outLen += len + 4;
                pos += len + 4;
                count++;
            }
            if (pos > 0)
            {
                Buffer.BlockCopy(inBuf, pos, inBuf, 0, have - pos);
                have -= pos;
            }
            if (outLen > 0)
            {
                int sent = 0;
                while (sent < outLen) sent += await s.SendAsync(outBuf.AsMemory(sent, outLen - sent), SocketFlags.None);
                Interlocked.Add(ref packets, count);
            }
        }
    }
    catch (SocketException)
    {
    }
    catch (ObjectDisposedException)
    {
    }
    finally
    {
        s.Dispose();
    }
}
