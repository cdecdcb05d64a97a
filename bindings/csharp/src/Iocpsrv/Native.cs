using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Iocpsrv;

/// <summary>
/// The C ABI of iocpsrv (dll/include/iocpsrv.h), one method per export, with blittable
/// signatures only: int for the header's int booleans, long for int64_t, ulong for
/// connection ids, nint for the opaque server pointer, nuint for size_t, raw pointers for
/// strings and buffers, and unmanaged function pointers for the callbacks.
/// </summary>
internal static unsafe partial class Native
{
    internal const string Lib = "iocpsrv";

    /// <summary>Environment variable naming the native library file to load instead of the
    /// default probing (e.g. /path/to/build/linux/dll/libiocpsrv.so).</summary>
    internal const string LibraryEnvVar = "IOCPSRV_LIBRARY";

    static Native()
    {
        NativeLibrary.SetDllImportResolver(typeof(Native).Assembly, Resolve);
    }

    /// <summary>The native library's file name on this OS: iocpsrv.dll, libiocpsrv.so or
    /// libiocpsrv.dylib. Never the managed assembly's (Iocpsrv.Net.dll), in any case.</summary>
    internal static string NativeFileName =>
        OperatingSystem.IsWindows() ? "iocpsrv.dll" : OperatingSystem.IsMacOS() ? "libiocpsrv.dylib" : "libiocpsrv.so";

    /// <summary>This process's runtime identifier as NuGet spells it: win-x64, linux-x64, ...</summary>
    internal static string RuntimeId =>
        (OperatingSystem.IsWindows() ? "win" : OperatingSystem.IsMacOS() ? "osx" : "linux") + "-" +
        RuntimeInformation.ProcessArchitecture.ToString().ToLowerInvariant();

    /// <summary>Resolves "iocpsrv": the IOCPSRV_LIBRARY path if set, else the runtime's
    /// default probing (application folder, a package's runtimes/RID/native folder through
    /// deps.json, the system's search path), else runtimes/RID/native next to this
    /// assembly or the application (a project reference copies the native file there), else
    /// the native file next to them. A file that does not export iocpsrv_version (another
    /// library of that name, e.g. a managed assembly on a case-insensitive file system) is
    /// passed over.</summary>
    internal static nint Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (libraryName != Lib) return 0;
        string? env = Environment.GetEnvironmentVariable(LibraryEnvVar);
        if (!string.IsNullOrEmpty(env))
        {
            // An explicit path must work: fail loudly rather than load another copy.
            nint explicitHandle = NativeLibrary.Load(env);
            if (IsIocpsrv(explicitHandle)) return explicitHandle;
            NativeLibrary.Free(explicitHandle);
            throw new DllNotFoundException($"{LibraryEnvVar}={env} is not the iocpsrv native library (it exports no iocpsrv_version).");
        }
        if (NativeLibrary.TryLoad(libraryName, assembly, searchPath, out nint handle))
        {
            if (IsIocpsrv(handle)) return handle;
            NativeLibrary.Free(handle);
        }

        var dirs = new List<string>();
        if (!string.IsNullOrEmpty(assembly.Location)) dirs.Add(Path.GetDirectoryName(assembly.Location)!);
        dirs.Add(AppContext.BaseDirectory);
        foreach (string candidate in dirs.Select(d => Path.Combine(d, "runtimes", RuntimeId, "native", NativeFileName))
                     .Concat(dirs.Select(d => Path.Combine(d, NativeFileName))))
        {
            if (!File.Exists(candidate) || !NativeLibrary.TryLoad(candidate, out handle)) continue;
            if (IsIocpsrv(handle)) return handle;
            NativeLibrary.Free(handle);
        }
        return 0; // the runtime reports DllNotFoundException
    }

    private static bool IsIocpsrv(nint handle) => NativeLibrary.TryGetExport(handle, "iocpsrv_version", out _);

    // ---- Version and errors ----
    [LibraryImport(Lib)] internal static partial uint iocpsrv_version();
    [LibraryImport(Lib)] internal static partial byte* iocpsrv_version_string();
    [LibraryImport(Lib)] internal static partial byte* iocpsrv_strerror(int err);
    [LibraryImport(Lib)] internal static partial byte* iocpsrv_err_name(int err);
    [LibraryImport(Lib)] internal static partial byte* iocpsrv_reason_name(int reason);

    // ---- Lifecycle ----
    [LibraryImport(Lib)] internal static partial int iocpsrv_create(nint* server, nint user);

    /// <summary>Reads one field: safe to call without a GC transition (hot path of every
    /// callback).</summary>
    [LibraryImport(Lib)]
    [SuppressGCTransition]
    internal static partial nint iocpsrv_user_data(nint server);

    [LibraryImport(Lib)] internal static partial int iocpsrv_set_option(nint server, int option, long value);
    [LibraryImport(Lib)] internal static partial int iocpsrv_get_option(nint server, int option, long* value);
    [LibraryImport(Lib)] internal static partial int iocpsrv_set_option_str(nint server, int option, byte* value);
    [LibraryImport(Lib)] internal static partial long iocpsrv_get_option_str(nint server, int option, byte* buf, nuint size);

    [LibraryImport(Lib)]
    internal static partial int iocpsrv_set_connect_cb(nint server,
        delegate* unmanaged[Cdecl]<nint, ulong, byte*, nint*, int> cb);
    [LibraryImport(Lib)]
    internal static partial int iocpsrv_set_packet_cb(nint server,
        delegate* unmanaged[Cdecl]<nint, ulong, nint, byte*, nuint, int> cb);
    [LibraryImport(Lib)]
    internal static partial int iocpsrv_set_packet_batch_cb(nint server,
        delegate* unmanaged[Cdecl]<nint, ulong, nint, NativeBuf*, int, int> cb);
    [LibraryImport(Lib)]
    internal static partial int iocpsrv_set_disconnect_cb(nint server,
        delegate* unmanaged[Cdecl]<nint, ulong, nint, int, void> cb);
    [LibraryImport(Lib)]
    internal static partial int iocpsrv_set_drain_cb(nint server,
        delegate* unmanaged[Cdecl]<nint, ulong, nint, void> cb);
    [LibraryImport(Lib)]
    internal static partial int iocpsrv_set_worker_hooks(nint server,
        delegate* unmanaged[Cdecl]<nint, int, void> onStart,
        delegate* unmanaged[Cdecl]<nint, int, void> onStop);
    [LibraryImport(Lib)]
    internal static partial int iocpsrv_set_log_cb(nint server,
        delegate* unmanaged[Cdecl]<nint, int, byte*, void> cb);

    [LibraryImport(Lib)] internal static partial int iocpsrv_listen(nint server, byte* host, int port);
    [LibraryImport(Lib)] internal static partial int iocpsrv_start(nint server);
    [LibraryImport(Lib)] internal static partial int iocpsrv_port(nint server);

    // ---- The client role ----
    [LibraryImport(Lib)]
    internal static partial int iocpsrv_connect(nint server, byte* host, int port, nint connUser, ulong* conn);
    [LibraryImport(Lib)] internal static partial int iocpsrv_stop(nint server, int timeoutMs);
    [LibraryImport(Lib)] internal static partial int iocpsrv_destroy(nint server);

    // ---- Sending and connection control ----
    // iocpsrv_disconnect modes (iocpsrv_close_mode_t).
    internal const int CloseGraceful = 0, CloseAbort = 1, CloseRefuse = 2;
    [LibraryImport(Lib)] internal static partial int iocpsrv_send(nint server, ulong conn, byte* data, nuint len);
    [LibraryImport(Lib)] internal static partial int iocpsrv_sendv(nint server, ulong conn, NativeBuf* bufs, int count);
    [LibraryImport(Lib)] internal static partial int iocpsrv_broadcast(nint server, byte* data, nuint len);
    [LibraryImport(Lib)] internal static partial int iocpsrv_disconnect(nint server, ulong conn, int mode);
    [LibraryImport(Lib)] internal static partial int iocpsrv_pause_receive(nint server, ulong conn);
    [LibraryImport(Lib)] internal static partial int iocpsrv_resume_receive(nint server, ulong conn);
    [LibraryImport(Lib)] internal static partial long iocpsrv_pending_bytes(nint server, ulong conn);
    [LibraryImport(Lib)] internal static partial int iocpsrv_set_conn_user(nint server, ulong conn, nint connUser);

    // ---- Introspection ----
    [LibraryImport(Lib)] internal static partial int iocpsrv_conn_info(nint server, ulong conn, ConnectionInfo* info);
    [LibraryImport(Lib)] internal static partial int iocpsrv_connections(nint server, ulong* ids, int max);
    [LibraryImport(Lib)] internal static partial int iocpsrv_stats(nint server, ServerStats* stats);

    // ---- Pull mode ----
    [LibraryImport(Lib)] internal static partial int iocpsrv_poll(nint server, NativeEvent* events, int max, int timeoutMs);
    [LibraryImport(Lib)] internal static partial long iocpsrv_wait_handle(nint server);

    // ---- Packed batches (formats in PackedRecords) ----
    [LibraryImport(Lib)] internal static partial long iocpsrv_poll_packed(nint server, byte* buf, nuint cap, int timeoutMs);
    [LibraryImport(Lib)]
    internal static partial int iocpsrv_send_packed(nint server, byte* buf, nuint size, NativeSendResult* refused, int maxRefused);

    /// <summary>A static NUL-terminated UTF-8 string from the library, as a string.</summary>
    internal static string Str(byte* p) => p == null ? string.Empty : Marshal.PtrToStringUTF8((nint)p) ?? string.Empty;
}

/// <summary>iocpsrv_buf_t.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct NativeBuf
{
    public void* Base;
    public nuint Len;
}

/// <summary>iocpsrv_send_result_t: one record iocpsrv_send_packed refused.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct NativeSendResult
{
    public uint Index;
    public int Error;
}

/// <summary>iocpsrv_event_t (40 bytes on 64-bit).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct NativeEvent
{
    public int Type;
    public int Reason;
    public ulong Conn;
    public nint ConnUser;
    public byte* Data;
    public nuint Len;
}

/// <summary>A fixed 64-byte char array inside the ABI structs.</summary>
[InlineArray(64)]
internal struct Bytes64
{
    private byte _first;
}
