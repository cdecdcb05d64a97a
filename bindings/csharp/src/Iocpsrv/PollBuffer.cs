using System.Buffers;

namespace Iocpsrv;

/// <summary>
/// The buffer iocpsrv_poll_packed copies events into: rented from <see cref="ArrayPool{T}"/>
/// and reused poll after poll, so a batch costs no allocation. It is pinned only during the
/// call: the engine writes nothing into it afterwards, and the payload views handed out are
/// plain managed memory. When the first waiting event does not fit (IOCPSRV_ENOSPACE; it stays
/// queued) the buffer doubles and the poll is repeated; after a poll that would have fitted the
/// base size it goes back to that size, so one large packet does not keep a large buffer.
/// An array goes back to the pool only at the start of a poll, when the views into it are
/// dead by contract; the last one is left to the garbage collector, since a reader may still
/// hold the final batch. One thread at a time (the pump's).
/// </summary>
internal sealed unsafe class PollBuffer
{
    private readonly int _baseSize;
    private byte[] _array;
    private long _lastUsed;

    internal PollBuffer(int baseSize)
    {
        _baseSize = baseSize;
        _array = ArrayPool<byte>.Shared.Rent(baseSize);
    }

    /// <summary>The array the last poll wrote into (valid until the next poll).</summary>
    internal byte[] Array => _array;

    /// <summary>Polls into the buffer: the bytes written (&gt; 0), 0 on timeout, or a negative
    /// library code other than NoSpace.</summary>
    internal long Poll(nint server, int timeoutMs)
    {
        ShrinkIfOversized();
        while (true)
        {
            long n;
            fixed (byte* p = _array) n = Native.iocpsrv_poll_packed(server, p, (nuint)_array.Length, timeoutMs);
            if (n != (int)IocpsrvError.NoSpace)
            {
                if (n > 0) _lastUsed = n;
                return n;
            }
            Grow(); // nothing was taken: the same event comes again
        }
    }

    private void Grow()
    {
        if (_array.Length >= System.Array.MaxLength)
            throw new InvalidOperationException("iocpsrv_poll_packed: an event larger than the largest array");
        int size = (int)Math.Min((long)_array.Length * 2, System.Array.MaxLength);
        ArrayPool<byte>.Shared.Return(_array);
        _array = ArrayPool<byte>.Shared.Rent(size);
    }

    // Before a poll (the previous batch's views are dead by then): back to the base size when
    // the last batch fitted in it.
    private void ShrinkIfOversized()
    {
        if (_array.Length <= 2 * _baseSize || _lastUsed > _baseSize) return;
        ArrayPool<byte>.Shared.Return(_array);
        _array = ArrayPool<byte>.Shared.Rent(_baseSize);
    }
}
