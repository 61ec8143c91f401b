using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

/// <summary>The WorkQueueExecutor from C#: a real <c>work_queue_worker</c> (Debian's, protocol 9, and the one built from
/// the CCTools source, protocol 11) connects to the manager on loopback. tests/harness/workqueue.sh installs and
/// builds them (as root); elsewhere the test fails saying what is missing.</summary>
public class WorkQueueTests
{
    private static readonly Lazy<(string Wq9, string Wq11)> Workers = new(() =>
    {
        var line = CctoolsWorkers.Ready("workqueue.sh", "Work Queue");
        return (CctoolsWorkers.Field(line, "wq9"), CctoolsWorkers.Field(line, "wq11"));
    });

    [Theory]
    [InlineData(9)]
    [InlineData(11)]
    public async Task Function_and_shell_apps_run_on_a_real_worker(int protocol)
    {
        var exe = protocol == 9 ? Workers.Value.Wq9 : Workers.Value.Wq11;
        var port = CctoolsWorkers.FreePort();
        // Workers started by hand are given the password file (without one, each run makes its own for its blocks).
        var password = Path.Combine(TempRunDir(), "wq.pw");
        File.WriteAllText(password, "open sesame");
        var wq = new WorkQueueExecutorOptions { Label = "wq", Port = port, PasswordFile = password, KeepalivePeriod = TimeSpan.FromSeconds(2) };
        wq.Env["GREETING"] = "hi";
        await using var dfk = await LoadAsync(o => o.Executors.Add(wq));
        using var worker = CctoolsWorkers.Start(exe, port, TempRunDir(), password);
        try
        {
            await CctoolsWorkers.AppsRunAsync(dfk);
        }
        finally
        {
            if (!worker.HasExited) worker.Kill(true);
        }
    }

    [Fact]
    public async Task Blocks_with_the_long_lived_runner_run_function_apps_in_one_process()
    {
        var work = TempRunDir();
        var wq = new WorkQueueExecutorOptions
        {
            Label = "wq-runner",
            LongLivedRunner = true,
            WorkerExecutable = Workers.Value.Wq11,
            Provider = new LocalProviderOptions { StatusPollingInterval = TimeSpan.FromMilliseconds(200) },
            StrategyPeriod = TimeSpan.FromMilliseconds(200),
        };
        foreach (var a in new[] { "-s", work, "--cores", "1", "-t", "60" }) wq.WorkerOptions.Add(a);
        await using var dfk = await LoadAsync(o => o.Executors.Add(wq));
        var pid = dfk.App((int _) => Environment.ProcessId);
        var first = await pid.Invoke(1).Within();
        var second = await pid.Invoke(2).Within();
        Assert.NotEqual(Environment.ProcessId, first);
        Assert.Equal(first, second);
    }

    [Fact]
    public async Task Bad_options_are_refused_at_load_naming_the_field()
    {
        var wq = new WorkQueueExecutorOptions { Port = 70000, KeepalivePeriod = TimeSpan.FromSeconds(10), KeepaliveTimeout = TimeSpan.FromSeconds(5) };
        var e = await Assert.ThrowsAsync<ConfigurationError>(() => LoadAsync(o => o.Executors.Add(wq)));
        Assert.Equal("WorkQueueExecutorOptions.Port", e.Field);
        Assert.Contains("KeepaliveTimeout", e.Message);
    }
}
