using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net.Sockets;

// Load-heavy tests (200 clients, 8 MiB packets) share a 2-core machine with other suites:
// run the classes one after another so no test's timing depends on another's load.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace Iocpsrv.Tests;

/// <summary>Shared limits and helpers.</summary>
internal static class T
{
    /// <summary>Upper bound for any single wait: generous, since a loaded 2-core machine can
    /// be slow; a healthy run finishes each wait in milliseconds.</summary>
    public static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);

    public static Task<TResult> Within<TResult>(this Task<TResult> task) => task.WaitAsync(Wait);
    public static Task Within(this Task task) => task.WaitAsync(Wait);

    /// <summary>An echo server on 127.0.0.1 and a free port.</summary>
    public static IocpServer EchoServer(IocpServerOptions? options = null)
    {
        var server = new IocpServer(options ?? new IocpServerOptions { WorkerThreads = 2 });
        server.PacketReceived += (s, id, data) => s.Send(id, data);
        return server;
    }

    public static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        uint x = (uint)seed * 2654435761u + 1;
        for (int i = 0; i < length; i++)
        {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            b[i] = (byte)x;
        }
        return b;
    }

    /// <summary>Polls a condition that has no event to await (an engine counter that moves
    /// just after a callback), with a bound.</summary>
    public static async Task Eventually(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + Wait;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException("timed out waiting for " + what);
            await Task.Delay(5);
        }
    }
}

/// <summary>A framed TCP client (4-byte little-endian length + payload).</summary>
internal sealed class Client : IDisposable
{
    public Socket Socket { get; }
    private readonly NetworkStream _stream;
    private readonly int _headerSize;
    private readonly bool _bigEndian;

    private Client(Socket socket, int headerSize, bool bigEndian)
    {
        Socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: false);
        _headerSize = headerSize;
        _bigEndian = bigEndian;
    }

    /// <summary>Connects to 127.0.0.1:<paramref name="port"/>. A <paramref name="receiveBufferSize"/>
    /// above 0 sets SO_RCVBUF before the connect (a small one makes a client that stops reading
    /// push back on the server soon).</summary>
    public static async Task<Client> ConnectAsync(int port, int headerSize = 4, bool bigEndian = false, int receiveBufferSize = 0)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        if (receiveBufferSize > 0) s.ReceiveBufferSize = receiveBufferSize;
        try
        {
            await s.ConnectAsync("127.0.0.1", port).Within();
        }
        catch
        {
            s.Dispose();
            throw;
        }
        return new Client(s, headerSize, bigEndian);
    }

    public string LocalEndPoint => Socket.LocalEndPoint!.ToString()!;

    public byte[] Frame(ReadOnlySpan<byte> payload)
    {
        var buf = new byte[_headerSize + payload.Length];
        if (_headerSize == 4)
        {
            if (_bigEndian) BinaryPrimitives.WriteUInt32BigEndian(buf, (uint)payload.Length);
            else BinaryPrimitives.WriteUInt32LittleEndian(buf, (uint)payload.Length);
        }
        else
        {
            if (_bigEndian) BinaryPrimitives.WriteUInt16BigEndian(buf, (ushort)payload.Length);
            else BinaryPrimitives.WriteUInt16LittleEndian(buf, (ushort)payload.Length);
        }
        payload.CopyTo(buf.AsSpan(_headerSize));
        return buf;
    }

    public Task SendAsync(byte[] payload) => _stream.WriteAsync(Frame(payload)).AsTask().Within();

    public Task SendRawAsync(byte[] bytes) => _stream.WriteAsync(bytes).AsTask().Within();

    public async Task<byte[]> ReadAsync()
    {
        var header = new byte[_headerSize];
        await _stream.ReadExactlyAsync(header).AsTask().Within();
        int len = _headerSize == 4
            ? (int)(_bigEndian ? BinaryPrimitives.ReadUInt32BigEndian(header) : BinaryPrimitives.ReadUInt32LittleEndian(header))
            : _bigEndian ? BinaryPrimitives.ReadUInt16BigEndian(header) : BinaryPrimitives.ReadUInt16LittleEndian(header);
        var payload = new byte[len];
        await _stream.ReadExactlyAsync(payload).AsTask().Within();
        return payload;
    }

    public async Task<byte[]> ReadRawAsync(int count)
    {
        var b = new byte[count];
        await _stream.ReadExactlyAsync(b).AsTask().Within();
        return b;
    }

    /// <summary>True once the server has closed the connection (EOF or reset); then closes
    /// this side too, as a well-behaved client does (a graceful close on the server waits for
    /// the client's FIN).</summary>
    public async Task<bool> ClosedByServerAsync()
    {
        var b = new byte[65536];
        try
        {
            while (true)
            {
                int n = await _stream.ReadAsync(b).AsTask().Within();
                if (n == 0) break;
            }
        }
        catch (IOException)
        {
        }
        catch (SocketException)
        {
        }
        try
        {
            Socket.Shutdown(SocketShutdown.Send);
        }
        catch (SocketException)
        {
        }
        catch (ObjectDisposedException)
        {
        }
        return true;
    }

    public void ShutdownSend() => Socket.Shutdown(SocketShutdown.Send);

    public void Dispose()
    {
        _stream.Dispose();
        Socket.Dispose();
    }
}

/// <summary>Records every handler call per connection and checks the threading contract's
/// order: Connected, packets, exactly one Disconnected, last; never two handlers at once for
/// one connection.</summary>
internal sealed class ContractRecorder
{
    public sealed class Conn
    {
        public readonly List<string> Events = new();
        public int InHandler;
        public int Packets;
        public DisconnectReason? Reason;
    }

    public readonly ConcurrentDictionary<ulong, Conn> Conns = new();
    public readonly ConcurrentQueue<string> Violations = new();
    private int _disconnects;
    private int _expected = int.MaxValue;
    private readonly TaskCompletionSource _allGone = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public Task AllDisconnected(int expected)
    {
        Volatile.Write(ref _expected, expected);
        if (Volatile.Read(ref _disconnects) >= expected) _allGone.TrySetResult();
        return _allGone.Task;
    }

    public void Attach(IocpServer server, bool echo = true)
    {
        server.Connected += (s, e) =>
        {
            var c = new Conn();
            if (!Conns.TryAdd(e.Connection.Value, c)) Violations.Enqueue($"{e.Connection}: id reused");
            Enter(c, e.Connection);
            c.Events.Add("connect");
            Leave(c);
        };
        server.PacketReceived += (s, id, data) =>
        {
            if (!Conns.TryGetValue(id.Value, out var c))
            {
                Violations.Enqueue($"{id}: packet before connect");
                return;
            }
            Enter(c, id);
            if (c.Reason is not null) Violations.Enqueue($"{id}: packet after disconnect");
            c.Events.Add("packet");
            c.Packets++;
            if (echo) s.Send(id, data);
            Leave(c);
        };
        server.Disconnected += (s, e) =>
        {
            if (!Conns.TryGetValue(e.Connection.Value, out var c))
            {
                Violations.Enqueue($"{e.Connection}: disconnect before connect");
                return;
            }
            Enter(c, e.Connection);
            if (c.Reason is not null) Violations.Enqueue($"{e.Connection}: second disconnect");
            c.Reason = e.Reason;
            c.Events.Add("disconnect");
            Leave(c);
            if (Interlocked.Increment(ref _disconnects) >= Volatile.Read(ref _expected)) _allGone.TrySetResult();
        };
    }

    private void Enter(Conn c, ConnectionId id)
    {
        if (Interlocked.Increment(ref c.InHandler) != 1) Violations.Enqueue($"{id}: concurrent handlers");
    }

    private static void Leave(Conn c) => Interlocked.Decrement(ref c.InHandler);

    /// <summary>Checks every connection's full history.</summary>
    public void AssertContract()
    {
        Assert.Empty(Violations);
        foreach (var (id, c) in Conns)
        {
            Assert.True(c.Events.Count >= 2, $"{id}: {string.Join(",", c.Events)}");
            Assert.Equal("connect", c.Events[0]);
            Assert.Equal("disconnect", c.Events[^1]);
            Assert.Equal(1, c.Events.Count(e => e == "disconnect"));
            Assert.Equal(1, c.Events.Count(e => e == "connect"));
        }
    }
}
