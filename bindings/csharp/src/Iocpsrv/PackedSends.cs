using System.Buffers;

namespace Iocpsrv;

/// <summary>A send that <see cref="EventBatch.Send"/> gathered and the engine did not queue
/// when it was handed over: which connection, and why (what
/// <see cref="IocpServer.TrySend(ConnectionId, ReadOnlySpan{byte}, out IocpsrvError)"/> would
/// have said: NotConnected, QueueFull, TooBig, OutOfMemory, Stopped).</summary>
public readonly record struct RefusedSend(ConnectionId Connection, IocpsrvError Error);

/// <summary>
/// Sends gathered as iocpsrv_send_packed records and handed to the engine in one call: the
/// pull consumer's replies cost one P/Invoke per batch, and, handed over by the thread that
/// polls (with IOCPSRV_OPT_PULL_BATCH_SENDS), one write per connection per batch.
/// </summary>
/// <remarks>Appending is thread-safe. Hand-overs are serialized: two buffers in flight at once
/// could reach the engine out of order, and a connection's packets must keep theirs. Two
/// buffers alternate, so appending goes on while one is being handed over.</remarks>
internal sealed unsafe class PackedSends
{
    private const int BaseSize = 16 << 10;

    private readonly object _lock = new();       // the gathering buffer
    private readonly object _handOver = new();   // one hand-over at a time
    private byte[] _gathering = ArrayPool<byte>.Shared.Rent(BaseSize);
    private byte[] _spare = ArrayPool<byte>.Shared.Rent(BaseSize);
    private int _used, _count;

    /// <summary>Sends gathered and not handed over yet.</summary>
    internal int Count
    {
        get
        {
            lock (_lock) return _count;
        }
    }

    /// <summary>Appends one send record (the payload is copied).</summary>
    internal void Append(ulong conn, ReadOnlySpan<byte> payload)
    {
        long size = PackedRecords.SendRecordSize(payload.Length);
        lock (_lock)
        {
            if (_gathering.Length - _used < size) Grow(size);
            _used += PackedRecords.WriteSend(_gathering.AsSpan(_used), conn, payload);
            _count++;
        }
    }

    // Under _lock.
    private void Grow(long size)
    {
        long need = _used + size;
        if (need > System.Array.MaxLength) throw new ArgumentException("The gathered sends exceed the largest array: ask for the next batch to hand them over.", "payload");
        var bigger = ArrayPool<byte>.Shared.Rent((int)Math.Max(need, Math.Min(2L * _gathering.Length, System.Array.MaxLength)));
        _gathering.AsSpan(0, _used).CopyTo(bigger);
        ArrayPool<byte>.Shared.Return(_gathering);
        _gathering = bigger;
    }

    /// <summary>Hands every gathered send to the engine in one iocpsrv_send_packed call and
    /// returns the refused ones (empty when all were queued). A server that has stopped refuses
    /// them all (Stopped).</summary>
    internal RefusedSend[] HandOver(nint server)
    {
        lock (_handOver)
        {
            byte[] records;
            int used, count;
            lock (_lock)
            {
                if (_count == 0) return Array.Empty<RefusedSend>();
                records = _gathering;
                _gathering = _spare;
                (used, count) = (_used, _count);
                _used = _count = 0;
            }
            try
            {
                return Send(server, records, used, count);
            }
            finally
            {
                lock (_lock) _spare = TrimmedSpare(records);
            }
        }
    }

    private static RefusedSend[] Send(nint server, byte[] records, int used, int count)
    {
        var results = ArrayPool<NativeSendResult>.Shared.Rent(count);
        try
        {
            int refused;
            fixed (byte* p = records)
            fixed (NativeSendResult* r = results)
                refused = Native.iocpsrv_send_packed(server, p, (nuint)used, r, count);
            if (refused == (int)IocpsrvError.Stopped)
            {
                for (int i = 0; i < count; i++) results[i] = new NativeSendResult { Index = (uint)i, Error = refused };
                refused = count;
            }
            else if (refused < 0)
            {
                throw new IocpsrvException(refused, "iocpsrv_send_packed"); // a malformed buffer: a binding bug
            }
            return Describe(records.AsSpan(0, used), results.AsSpan(0, refused));
        }
        finally
        {
            ArrayPool<NativeSendResult>.Shared.Return(results);
        }
    }

    // The refusals with their connections: one walk over the records, since the engine
    // reports refusals in record order.
    private static RefusedSend[] Describe(ReadOnlySpan<byte> records, ReadOnlySpan<NativeSendResult> refused)
    {
        var list = new RefusedSend[refused.Length];
        int offset = 0, index = 0;
        for (int i = 0; i < refused.Length; i++)
        {
            for (; index < refused[i].Index; index++) offset += PackedRecords.SendRecordSizeAt(records, offset);
            list[i] = new RefusedSend(new ConnectionId(PackedRecords.SendConnectionAt(records, offset)), (IocpsrvError)refused[i].Error);
        }
        return list;
    }

    // A buffer that grew for a burst of large sends goes back to the pool once handed over.
    private static byte[] TrimmedSpare(byte[] used)
    {
        if (used.Length <= 4 * BaseSize) return used;
        ArrayPool<byte>.Shared.Return(used);
        return ArrayPool<byte>.Shared.Rent(BaseSize);
    }
}
