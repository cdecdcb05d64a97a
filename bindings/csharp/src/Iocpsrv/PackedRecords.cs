using System.Buffers.Binary;

namespace Iocpsrv;

/// <summary>
/// The packed formats of iocpsrv_poll_packed and iocpsrv_send_packed (iocpsrv.h, "Packed
/// batches"): each record is a fixed header followed by its payload, zero-padded to a multiple
/// of 8, the next record right after the padding; integers little-endian.
/// <code>
/// event record (24 bytes + payload): uint32 len; uint16 type; uint16 reason; uint64 conn; uint64 conn_user
/// send record  (16 bytes + payload): uint64 conn; uint32 len; uint32 flags (= 0)
/// </code>
/// Pure code (no native call), so the parsing is tested on hand-made buffers as well.
/// </summary>
internal static class PackedRecords
{
    /// <summary>sizeof(iocpsrv_record_t).</summary>
    internal const int EventHeaderSize = 24;

    /// <summary>sizeof(iocpsrv_send_record_t).</summary>
    internal const int SendHeaderSize = 16;

    /// <summary>IOCPSRV_PACKED_ALIGN: the payload's size with its padding.</summary>
    internal static long Align8(long length) => (length + 7) & ~7L;

    /// <summary>IOCPSRV_RECORD_SIZE: the bytes one event record of this payload takes.</summary>
    internal static long EventRecordSize(long payloadLength) => EventHeaderSize + Align8(payloadLength);

    /// <summary>IOCPSRV_SEND_RECORD_SIZE: the bytes one send record of this payload takes.</summary>
    internal static long SendRecordSize(long payloadLength) => SendHeaderSize + Align8(payloadLength);

    /// <summary>Reads the event record at <paramref name="offset"/> of
    /// <c>buffer[0..length)</c> and moves <paramref name="offset"/> past it. Throws
    /// <see cref="InvalidDataException"/> for a record that does not fit or has an unknown type:
    /// the engine never writes one, so it means the library and the binding disagree on the
    /// format.</summary>
    internal static EventEntry ReadEvent(byte[] buffer, int length, ref int offset)
    {
        if (length - offset < EventHeaderSize)
            throw new InvalidDataException($"packed event record at {offset}: header runs past the {length} bytes written");
        var header = buffer.AsSpan(offset, EventHeaderSize);
        uint payloadLength = BinaryPrimitives.ReadUInt32LittleEndian(header);
        var type = (ServerEventType)BinaryPrimitives.ReadUInt16LittleEndian(header[4..]);
        var reason = (DisconnectReason)BinaryPrimitives.ReadUInt16LittleEndian(header[6..]);
        ulong conn = BinaryPrimitives.ReadUInt64LittleEndian(header[8..]);
        ulong connUser = BinaryPrimitives.ReadUInt64LittleEndian(header[16..]);
        int payload = offset + EventHeaderSize;
        if (Align8(payloadLength) > length - payload)
            throw new InvalidDataException($"packed event record at {offset}: {payloadLength} payload bytes run past the {length} bytes written");
        if (type < ServerEventType.Connected || type > ServerEventType.Drained)
            throw new InvalidDataException($"packed event record at {offset}: unknown event type {(int)type}");
        offset = payload + (int)Align8(payloadLength);
        return new EventEntry(type, reason, conn, buffer, payload, (int)payloadLength, connUser);
    }

    /// <summary>Writes one send record (header, payload, zero padding) at the start of
    /// <paramref name="destination"/>, which must hold <see cref="SendRecordSize"/> bytes;
    /// returns the bytes written. The padding must be zero: the engine refuses the whole buffer
    /// otherwise.</summary>
    internal static int WriteSend(Span<byte> destination, ulong conn, ReadOnlySpan<byte> payload)
    {
        int size = checked((int)SendRecordSize(payload.Length));
        BinaryPrimitives.WriteUInt64LittleEndian(destination, conn);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[8..], (uint)payload.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[12..], 0); // flags
        payload.CopyTo(destination[SendHeaderSize..]);
        destination[(SendHeaderSize + payload.Length)..size].Clear();
        return size;
    }

    /// <summary>The connection of the send record at <paramref name="offset"/>.</summary>
    internal static ulong SendConnectionAt(ReadOnlySpan<byte> records, int offset) =>
        BinaryPrimitives.ReadUInt64LittleEndian(records[offset..]);

    /// <summary>The size of the send record at <paramref name="offset"/>: how a refusal, which
    /// iocpsrv_send_packed reports by index, is walked to.</summary>
    internal static int SendRecordSizeAt(ReadOnlySpan<byte> records, int offset) =>
        checked((int)SendRecordSize(BinaryPrimitives.ReadUInt32LittleEndian(records[(offset + 8)..])));
}

/// <summary>One event of a packed batch, as parsed: its payload is
/// <c>Bytes[Offset..Offset+Length)</c> (the poll buffer, or an array of its own for an event
/// set aside while its connection was paused). <c>ConnUser</c> is the record's conn_user: the
/// binding's token of a <see cref="IocpServer.ConnectAsync"/> attempt, 0 for an accepted
/// connection.</summary>
internal readonly record struct EventEntry(
    ServerEventType Type, DisconnectReason Reason, ulong Conn, byte[] Bytes, int Offset, int Length, ulong ConnUser = 0)
{
    internal ReadOnlySpan<byte> Payload => new(Bytes, Offset, Length);

    /// <summary>The event as a <see cref="ServerEvent"/> that owns a copy of its payload.</summary>
    internal ServerEvent ToServerEvent()
    {
        var id = new ConnectionId(Conn);
        return Type switch
        {
            ServerEventType.Connected => new ServerEvent(Type, id, 0, PeerText(Payload), Array.Empty<byte>()),
            ServerEventType.Packet => new ServerEvent(Type, id, 0, null, Length == 0 ? Array.Empty<byte>() : Payload.ToArray()),
            ServerEventType.Disconnected => new ServerEvent(Type, id, Reason, null, Array.Empty<byte>()),
            _ => new ServerEvent(Type, id, 0, null, Array.Empty<byte>()),
        };
    }

    /// <summary>A set-aside event back as an entry (its payload array is its own).</summary>
    internal static EventEntry From(in ServerEvent ev) =>
        new(ev.Type, ev.Reason, ev.Connection.Value, ev.Payload, 0, ev.Payload.Length);

    /// <summary>The CONNECT payload: the peer's address text (the format says no NUL; one is
    /// cut off all the same, as iocpsrv_poll's copy of it ends with one).</summary>
    internal static string PeerText(ReadOnlySpan<byte> text)
    {
        int nul = text.IndexOf((byte)0);
        return System.Text.Encoding.UTF8.GetString(nul < 0 ? text : text[..nul]);
    }
}
