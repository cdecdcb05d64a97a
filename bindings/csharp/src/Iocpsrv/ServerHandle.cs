using System.Runtime.InteropServices;

namespace Iocpsrv;

/// <summary>
/// Owns one native iocpsrv_t*. ReleaseHandle calls iocpsrv_destroy (which stops the server
/// abortively if it still runs) and then frees the GCHandle whose address is the server's
/// `user` pointer, so that pointer stays valid as long as any callback can run.
/// Never destroys on a worker thread of its own server (the library forbids it): the destroy
/// is then handed to the thread pool.
/// </summary>
internal sealed class ServerHandle : SafeHandle
{
    /// <summary>The GCHandle given to iocpsrv_create as `user` (weak: the server object is kept
    /// alive by a strong handle only while it runs). Freed after destroy.</summary>
    internal GCHandle UserHandle;

    public ServerHandle() : base(0, ownsHandle: true) { }

    public override bool IsInvalid => handle == 0;

    internal void Attach(nint server) => SetHandle(server);

    protected override bool ReleaseHandle()
    {
        nint server = handle;
        GCHandle user = UserHandle;
        UserHandle = default;
        if (IocpServer.IsOwnCallbackThread(server))
        {
            ThreadPool.UnsafeQueueUserWorkItem(static s =>
            {
                var (srv, u) = ((nint, GCHandle))s!;
                Destroy(srv, u);
            }, (server, user));
            return true;
        }
        return Destroy(server, user);
    }

    private static bool Destroy(nint server, GCHandle user)
    {
        int rc = Native.iocpsrv_destroy(server);
        if (user.IsAllocated) user.Free();
        return rc == 0;
    }
}
