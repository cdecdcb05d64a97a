namespace Iocpsrv;

/// <summary>
/// Turns a library error code into the exception a .NET caller expects:
/// <list type="bullet">
/// <item>InvalidArgument, Range, UnknownOption, TooBig, NoSpace: <see cref="ArgumentException"/>
/// (the caller passed something the library refuses; NoSpace: a buffer too small);</item>
/// <item>State, InCallback, Busy, Stopped: <see cref="InvalidOperationException"/> (the call is
/// not allowed in the server's current state);</item>
/// <item>NotSupported: <see cref="NotSupportedException"/>;</item>
/// <item>the rest (NotConnected, QueueFull, OutOfMemory, AddressInUse, AddressNotAvailable,
/// AccessDenied, System): <see cref="IocpsrvException"/>, which a correct program still meets
/// (a client left, a queue is full, the port is taken).</item>
/// </list>
/// A mapped exception has the same message and carries the <see cref="IocpsrvException"/> (its
/// code and name) as <see cref="Exception.InnerException"/>.
/// </summary>
internal static class Errors
{
    internal static Exception For(int code, string operation, string? paramName = null)
    {
        var error = new IocpsrvException(code, operation);
        return (IocpsrvError)code switch
        {
            IocpsrvError.InvalidArgument or IocpsrvError.Range or IocpsrvError.UnknownOption or IocpsrvError.TooBig
                or IocpsrvError.NoSpace
                => new ArgumentException(error.Message, paramName, error),
            IocpsrvError.State or IocpsrvError.InCallback or IocpsrvError.Busy or IocpsrvError.Stopped
                => new InvalidOperationException(error.Message, error),
            IocpsrvError.NotSupported => new NotSupportedException(error.Message, error),
            _ => error,
        };
    }
}
