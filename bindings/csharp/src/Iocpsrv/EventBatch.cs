using System.Buffers;

namespace Iocpsrv;

/// <summary>
/// The events of one pull-mode poll (<see cref="IocpServer.ReadBatchAsync"/>), read in place:
/// their payloads are views into the binding's pooled poll buffer, valid until the next
/// <see cref="IocpServer.ReadBatchAsync"/> call. Nothing is allocated per event.
/// </summary>
/// <remarks>
/// <para>Read the events with <c>foreach</c>. Each event is read once: enumerating again goes
/// on where the last enumeration stopped, and asking for the next batch before the end returns
/// this batch again with the rest. Disconnect, Refuse and Pause apply to the events not read
/// yet when they return, as for <see cref="IocpServer.Events"/>.</para>
/// <para><see cref="Send"/> gathers replies; they are handed to the engine in one call when
/// the next batch is asked for (one write per connection), and the ones it refused are listed
/// in the next batch's <see cref="RefusedSends"/>.</para>
/// <para>One consumer reads the batches; <see cref="Send"/> may be called from any thread.</para>
/// </remarks>
public sealed class EventBatch
{
    private readonly BatchReader _reader;
    private readonly EventEntry[] _entries;
    private readonly int _count;
    private readonly long _poll;         // the poll that took them; 0: events that were set aside
    private int _next;                   // the read cursor
    private volatile bool _replaced;

    internal EventBatch(BatchReader reader, EventEntry[] entries, int count, long poll, RefusedSend[] refused)
    {
        _reader = reader;
        _entries = entries;
        _count = count;
        _poll = poll;
        RefusedSends = refused;
    }

    /// <summary>The sends gathered with <see cref="Send"/> before this batch was asked for that
    /// the engine did not queue (empty when all were). Handed over in order: once a send to a
    /// connection is refused, its later sends of the same hand-over are refused too.</summary>
    public IReadOnlyList<RefusedSend> RefusedSends { get; }

    /// <summary>True while the batch is the current one: until the next
    /// <see cref="IocpServer.ReadBatchAsync"/> asks for another (or the stream ends).</summary>
    public bool IsCurrent => !_replaced;

    /// <summary>Queues one packet for <paramref name="connection"/> (the payload is copied).
    /// Gathered sends are handed to the engine in one call when the next batch is asked for
    /// (or at <see cref="IocpServer.Stop()"/>), in the order they were made; refusals show in the
    /// next batch's <see cref="RefusedSends"/>. For a send that reports at once, or waits for
    /// room, use <see cref="IocpServer.TrySend(ConnectionId, ReadOnlySpan{byte})"/> or
    /// <see cref="IocpServer.SendAsync"/>. Never throws for a connection's or the server's state
    /// (a send after the server stopped is refused with Stopped). Thread-safe.</summary>
    public void Send(ConnectionId connection, ReadOnlySpan<byte> payload) => _reader.Gather(connection.Value, payload);

    /// <summary>Hands the sends gathered so far to the engine now, from this thread, instead of
    /// at the next <see cref="IocpServer.ReadBatchAsync"/> (each is then written at once, as a
    /// <see cref="IocpServer.Send(ConnectionId, ReadOnlySpan{byte})"/> would be), and returns the
    /// ones it refused. For replies that must not wait for the next batch, e.g. before leaving
    /// the reading loop (leaving an <c>await foreach</c> over
    /// <see cref="IocpServer.ReadBatchesAsync"/> does it by itself).</summary>
    /// <exception cref="ObjectDisposedException">The server was disposed.</exception>
    public IReadOnlyList<RefusedSend> FlushSends() => _reader.Flush();

    /// <summary>The events not read yet, each once.</summary>
    public Enumerator GetEnumerator() => new(this);

    internal bool HasUnread => Volatile.Read(ref _next) < _count;

    internal void Replace() => _replaced = true;

    internal void ThrowIfReplaced()
    {
        if (_replaced)
            throw new InvalidOperationException("This batch's events were replaced by the next ReadBatchAsync: copy what you keep (ToArray, RentPayload) before asking for the next batch.");
    }

    // The next event to read, with the gate's verdict applied (a close or pause made after the
    // poll skips or sets aside what is not read yet).
    private bool TryReadNext(out BatchEvent ev)
    {
        ThrowIfReplaced();
        var gate = _reader.Gate;
        while (_next < _count)
        {
            ref readonly EventEntry e = ref _entries[_next++];
            if (!gate.Active)
            {
                ev = new BatchEvent(this, e);
                return true;
            }
            lock (gate.Lock)
            {
                switch (gate.Admit(e.Type, e.Conn, _poll))
                {
                    case Admission.Read:
                        ev = new BatchEvent(this, e);
                        return true;
                    case Admission.SetAside:
                        gate.SetAside(e.Conn, e.ToServerEvent()); // copied: the buffer is reused
                        break;
                }
            }
        }
        ev = default;
        return false;
    }

    /// <summary>Reads a batch's events once, in order.</summary>
    public struct Enumerator
    {
        private readonly EventBatch _batch;
        private BatchEvent _current;

        internal Enumerator(EventBatch batch)
        {
            _batch = batch;
            _current = default;
        }

        /// <summary>The event read last.</summary>
        public readonly BatchEvent Current => _current;

        /// <summary>Reads the next event; false at the end of the batch.</summary>
        public bool MoveNext() => _batch.TryReadNext(out _current);
    }
}

/// <summary>
/// One event of an <see cref="EventBatch"/>. Its <see cref="Payload"/> is a view into the
/// batch's buffer, valid until the next <see cref="IocpServer.ReadBatchAsync"/>: copy what you
/// keep (<see cref="RentPayload"/>, <c>Payload.ToArray()</c>, <see cref="ToServerEvent"/>).
/// </summary>
public readonly struct BatchEvent
{
    private readonly EventBatch? _batch;
    private readonly EventEntry _entry;

    internal BatchEvent(EventBatch batch, in EventEntry entry)
    {
        _batch = batch;
        _entry = entry;
    }

    /// <summary>What happened.</summary>
    public ServerEventType Type => _entry.Type;

    /// <summary>The connection it happened to.</summary>
    public ConnectionId Connection => new(_entry.Conn);

    /// <summary>Disconnected only: why (0 otherwise).</summary>
    public DisconnectReason Reason => _entry.Reason;

    /// <summary>Packet only: the payload, in place (empty otherwise, and for an empty packet).
    /// Valid until the next <see cref="IocpServer.ReadBatchAsync"/>.</summary>
    /// <exception cref="InvalidOperationException">The batch was replaced already.</exception>
    public ReadOnlyMemory<byte> Payload
    {
        get
        {
            if (_entry.Type != ServerEventType.Packet || _entry.Length == 0) return ReadOnlyMemory<byte>.Empty;
            _batch!.ThrowIfReplaced();
            return new ReadOnlyMemory<byte>(_entry.Bytes, _entry.Offset, _entry.Length);
        }
    }

    /// <summary>Connected only: the client's address, "127.0.0.1:5000" or "[::1]:5000".</summary>
    public string? Peer
    {
        get
        {
            if (_entry.Type != ServerEventType.Connected) return null;
            _batch!.ThrowIfReplaced();
            return EventEntry.PeerText(_entry.Payload);
        }
    }

    /// <summary>A copy of <see cref="Payload"/> in memory rented from the shared array pool, for
    /// a payload kept past this batch without a new array each time: dispose the owner to give
    /// it back. Its <c>Memory</c> is exactly the payload's length.</summary>
    public IMemoryOwner<byte> RentPayload() => PooledPayload.CopyOf(Payload.Span);

    /// <summary>The event as a <see cref="ServerEvent"/> owning a copy of its payload.</summary>
    public ServerEvent ToServerEvent()
    {
        _batch?.ThrowIfReplaced();
        return _entry.ToServerEvent();
    }

    /// <inheritdoc />
    public override string ToString() => Type switch
    {
        ServerEventType.Packet => $"Packet {Connection} ({_entry.Length} bytes)",
        ServerEventType.Disconnected => $"Disconnected {Connection} ({Reason})",
        _ => $"{Type} {Connection}",
    };
}

/// <summary>A payload copy in an array rented from <see cref="ArrayPool{T}.Shared"/>, returned
/// on <see cref="Dispose"/>.</summary>
internal sealed class PooledPayload : IMemoryOwner<byte>
{
    private byte[]? _array;
    private readonly int _length;

    private PooledPayload(byte[] array, int length)
    {
        _array = array;
        _length = length;
    }

    internal static PooledPayload CopyOf(ReadOnlySpan<byte> payload)
    {
        var array = ArrayPool<byte>.Shared.Rent(payload.Length);
        payload.CopyTo(array);
        return new PooledPayload(array, payload.Length);
    }

    public Memory<byte> Memory => _array is { } a ? a.AsMemory(0, _length) : throw new ObjectDisposedException(nameof(IMemoryOwner<byte>));

    public void Dispose()
    {
        var a = Interlocked.Exchange(ref _array, null);
        if (a is not null) ArrayPool<byte>.Shared.Return(a);
    }
}
