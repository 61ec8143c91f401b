using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

/// <summary>The TaskVineExecutor from C#: a real <c>vine_worker</c> (protocol 13, built from the CCTools source beside
/// the repository by tests/harness/taskvine.sh) connects to the manager on loopback, by hand or in a Local block.</summary>
public class TaskVineTests
{
    private static readonly Lazy<string> VineWorker =
        new(() => CctoolsWorkers.Field(CctoolsWorkers.Ready("taskvine.sh", "TaskVine"), "vine"));

    [Fact]
    public async Task Function_and_shell_apps_run_on_a_worker_started_by_hand()
    {
        var port = CctoolsWorkers.FreePort();
        var password = Path.Combine(TempRunDir(), "vine.pw");
        File.WriteAllText(password, "open sesame");
        var tv = new TaskVineExecutorOptions { Label = "tv", Port = port, PasswordFile = password, KeepalivePeriod = TimeSpan.FromSeconds(2) };
        tv.Env["GREETING"] = "hi";
        await using var dfk = await LoadAsync(o => o.Executors.Add(tv));
        using var worker = CctoolsWorkers.Start(VineWorker.Value, port, TempRunDir(), password);
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
    public async Task Serverless_calls_in_a_Local_block_run_in_one_library_process()
    {
        var tv = new TaskVineExecutorOptions
        {
            Label = "tv-serverless",
            FunctionExecMode = TaskVineFunctionMode.Serverless,
            WorkerExecutable = VineWorker.Value,
            Provider = new LocalProviderOptions { StatusPollingInterval = TimeSpan.FromMilliseconds(200) },
            StrategyPeriod = TimeSpan.FromMilliseconds(200),
        };
        foreach (var a in new[] { "-s", TempRunDir(), "--cores", "1", "-t", "60" }) tv.WorkerOptions.Add(a);
        await using var dfk = await LoadAsync(o => o.Executors.Add(tv));
        var pid = dfk.App((int _) => Environment.ProcessId);
        var first = await pid.Invoke(1).Within();
        var second = await pid.Invoke(2).Within();
        Assert.NotEqual(Environment.ProcessId, first);
        Assert.Equal(first, second);
    }

    [Fact]
    public async Task Bad_options_are_refused_at_load_naming_the_field()
    {
        var tv = new TaskVineExecutorOptions { Port = 70000, FunctionExecMode = (TaskVineFunctionMode)7 };
        var e = await Assert.ThrowsAsync<ConfigurationError>(() => LoadAsync(o => o.Executors.Add(tv)));
        Assert.Contains(e.Field, new[] { "TaskVineExecutorOptions.Port", "TaskVineExecutorOptions.FunctionExecMode" });
    }
}
