using System.Buffers.Binary;
using System.Text;

namespace Iocpsrv.Tests;

/// <summary>The packed record formats, on hand-made buffers (no native call): what
/// iocpsrv_poll_packed writes is parsed right, and what iocpsrv_send_packed is given is laid
/// out right, padding included.</summary>
public class PackedRecordsTests
{
    // An event record as iocpsrv.h lays it out: uint32 len, uint16 type, uint16 reason, uint64
    // conn, uint64 conn_user, payload, zero padding to 8.
    private static void AppendEvent(List<byte> buffer, ServerEventType type, ulong conn, byte[] payload, ushort reason = 0)
    {
        var header = new byte[24];
        BinaryPrimitives.WriteUInt32LittleEndian(header, (uint)payload.Length);
        BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(4), (ushort)type);
        BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(6), reason);
        BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(8), conn);
        BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(16), 0xdead_beef_0000_0001); // conn_user: ignored
        buffer.AddRange(header);
        buffer.AddRange(payload);
        while (buffer.Count % 8 != 0) buffer.Add(0);
    }

    [Fact]
    public void EveryEventTypeIsParsedAndEachRecordStartsAfterItsPadding()
    {
        var b = new List<byte>();
        AppendEvent(b, ServerEventType.Connected, 7, Encoding.ASCII.GetBytes("127.0.0.1:5000")); // 14 bytes: 2 of padding
        AppendEvent(b, ServerEventType.Packet, 7, new byte[] { 1, 2, 3 });                       // 5 of padding
        AppendEvent(b, ServerEventType.Packet, 9, Array.Empty<byte>());                          // none
        AppendEvent(b, ServerEventType.Packet, 9, T.Pattern(16, 1));                            // none
        AppendEvent(b, ServerEventType.Drained, 7, Array.Empty<byte>());
        AppendEvent(b, ServerEventType.Disconnected, 9, Array.Empty<byte>(), (ushort)DisconnectReason.PeerReset);
        byte[] buffer = b.ToArray();

        var entries = new List<EventEntry>();
        for (int offset = 0; offset < buffer.Length;)
        {
            int before = offset;
            var e = PackedRecords.ReadEvent(buffer, buffer.Length, ref offset);
            Assert.Equal(24 + (e.Length + 7) / 8 * 8, offset - before);
            Assert.Equal(before + 24, e.Offset);
            entries.Add(e);
        }
        Assert.Equal(new[] { ServerEventType.Connected, ServerEventType.Packet, ServerEventType.Packet, ServerEventType.Packet, ServerEventType.Drained, ServerEventType.Disconnected },
            entries.Select(e => e.Type));
        Assert.Equal(new ulong[] { 7, 7, 9, 9, 7, 9 }, entries.Select(e => e.Conn));
        Assert.Equal("127.0.0.1:5000", entries[0].ToServerEvent().Peer);
        Assert.Equal(new byte[] { 1, 2, 3 }, entries[1].ToServerEvent().Payload);
        Assert.Empty(entries[2].ToServerEvent().Payload);
        Assert.Equal(T.Pattern(16, 1), entries[3].Payload.ToArray());
        Assert.Equal(DisconnectReason.PeerReset, entries[5].Reason);
        Assert.Equal(DisconnectReason.PeerReset, entries[5].ToServerEvent().Reason);
        Assert.Equal((DisconnectReason)0, entries[1].Reason);
    }

    [Fact]
    public void ATrailingNulInThePeerTextIsCutOff()
    {
        Assert.Equal("[::1]:80", EventEntry.PeerText(Encoding.ASCII.GetBytes("[::1]:80\0")));
        Assert.Equal("[::1]:80", EventEntry.PeerText(Encoding.ASCII.GetBytes("[::1]:80")));
    }

    [Fact]
    public void AMalformedEventBufferIsRefused()
    {
        var b = new List<byte>();
        AppendEvent(b, ServerEventType.Packet, 1, new byte[9]);
        byte[] whole = b.ToArray();
        int offset = 0;
        // The payload (and its padding) runs past the bytes written.
        Assert.Throws<InvalidDataException>(() => PackedRecords.ReadEvent(whole, whole.Length - 8, ref offset));
        // Not even a whole header.
        offset = 0;
        Assert.Throws<InvalidDataException>(() => PackedRecords.ReadEvent(whole, 16, ref offset));
        // An event type the binding does not know.
        BinaryPrimitives.WriteUInt16LittleEndian(whole.AsSpan(4), 99);
        offset = 0;
        Assert.Throws<InvalidDataException>(() => PackedRecords.ReadEvent(whole, whole.Length, ref offset));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(7)]
    [InlineData(8)]
    [InlineData(9)]
    [InlineData(15)]
    [InlineData(1000)]
    public void ASendRecordIsHeaderPayloadAndZeroPadding(int length)
    {
        var payload = T.Pattern(length, length);
        var dest = new byte[16 + length + 16];
        Array.Fill(dest, (byte)0xff); // the padding must be written, not assumed
        int written = PackedRecords.WriteSend(dest, 0x0102030405060708, payload);

        Assert.Equal(16 + (length + 7) / 8 * 8, written);
        Assert.Equal(PackedRecords.SendRecordSize(length), written);
        Assert.Equal(0x0102030405060708UL, BinaryPrimitives.ReadUInt64LittleEndian(dest));
        Assert.Equal((uint)length, BinaryPrimitives.ReadUInt32LittleEndian(dest.AsSpan(8)));
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(dest.AsSpan(12))); // flags
        Assert.Equal(payload, dest.AsSpan(16, length).ToArray());
        Assert.All(dest.AsSpan(16 + length, written - 16 - length).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(0xff, dest[written]); // nothing past the record
        Assert.Equal(written, PackedRecords.SendRecordSizeAt(dest, 0));
        Assert.Equal(0x0102030405060708UL, PackedRecords.SendConnectionAt(dest, 0));
    }
}
