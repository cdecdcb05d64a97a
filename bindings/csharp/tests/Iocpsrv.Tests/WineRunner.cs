#if IOCPSRV_WINE_RUNNER
using Xunit.Runners;

namespace Iocpsrv.Tests;

/// <summary>
/// The entry point of this test assembly when it is built with -p:IocpsrvWineRunner=true (see
/// Iocpsrv.Tests.csproj): runs its own tests in-process through xunit's AssemblyRunner, so that
/// a win-x64 self-contained publish is one .exe that Wine can run with no dotnet host and no
/// test platform. run_windows_tests.sh runs it for information only (never a gate): Wine 8's
/// sockets give .NET clients false end-of-stream reads.
/// Usage: Iocpsrv.Tests.exe [Fully.Qualified.ClassName]
/// </summary>
internal static class WineRunner
{
    private static int Main(string[] args)
    {
        int passed = 0, failed = 0, skipped = 0;
        var gate = new object();
        using var done = new ManualResetEventSlim();
        using var runner = AssemblyRunner.WithoutAppDomain(typeof(WineRunner).Assembly.Location);
        runner.OnTestPassed = i => { lock (gate) passed++; };
        runner.OnTestSkipped = i => { lock (gate) skipped++; };
        runner.OnTestFailed = i =>
        {
            lock (gate)
            {
                failed++;
                Console.WriteLine($"[FAIL] {i.TestDisplayName}: {i.ExceptionType}: {i.ExceptionMessage}");
            }
        };
        runner.OnExecutionComplete = i => done.Set();
        runner.Start(typeName: args.Length > 0 ? args[0] : null, parallel: false);
        done.Wait();
        while (runner.Status != AssemblyRunnerStatus.Idle) Thread.Sleep(50);
        Console.WriteLine($"wine-xunit: {passed} of {passed + failed + skipped} tests passed; failed {failed}, skipped {skipped} ({Iocpsrv.IocpServer.LibraryVersionString})");
        return failed == 0 && passed > 0 ? 0 : 1;
    }
}
#endif
