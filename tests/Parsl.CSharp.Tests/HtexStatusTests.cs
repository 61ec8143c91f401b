using System.Diagnostics;
using Xunit.Abstractions;
using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

/// <summary>Runs the daemon harnesses under tests/harness (as the F# tests do): installs and starts a daemon when root
/// on Debian; elsewhere says what is missing.</summary>
internal static class Harness
{
    private static readonly Dictionary<string, Lazy<(int Code, string Output)>> Runs = new();

    private static string Dir()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "tests", "harness", "common.sh")))
                return Path.Combine(d.FullName, "tests", "harness");
        throw new InvalidOperationException("tests/harness not found above the test binary");
    }

    /// <summary>True when the daemon is ready; false (with the reason) when this machine cannot run it; throws when
    /// the harness broke.</summary>
    public static bool Require(string name, out string why)
    {
        Lazy<(int, string)> run;
        lock (Runs)
            if (!Runs.TryGetValue(name, out run!))
                Runs[name] = run = new(() =>
                {
                    var psi = new ProcessStartInfo("/bin/bash", [Path.Combine(Dir(), name + ".sh")])
                    { RedirectStandardOutput = true, RedirectStandardError = true };
                    using var p = Process.Start(psi)!;
                    var err = p.StandardError.ReadToEndAsync();
                    var output = p.StandardOutput.ReadToEnd();
                    p.WaitForExit();
                    return (p.ExitCode, output + err.GetAwaiter().GetResult());
                });
        var (code, text) = run.Value;
        why = text.Trim();
        if (code == 0) return true;
        if (code == 2) return false;
        throw new Xunit.Sdk.XunitException($"{name} harness failed ({code}): {why}");
    }
}

/// <summary>Status of HighThroughputExecutor blocks and managers from C#, on a LocalProvider and on a real Slurm.</summary>
public class HtexStatusTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Connected_managers_blocks_and_block_status_describe_the_running_pool()
    {
        await using var dfk = await LoadAsync(o => o.Executors.Add(new HighThroughputExecutorOptions
        {
            Label = "htex", MaxWorkersPerNode = 2, StrategyPeriod = TimeSpan.FromMilliseconds(200),
            Provider = new LocalProviderOptions { StatusPollingInterval = TimeSpan.FromMilliseconds(200), Launcher = new SingleNodeLauncherOptions() },
        }));
        // A result means a manager registered, so the status below is not a race with start-up.
        Assert.Equal(4, await dfk.App((int x) => x * x).Invoke(2).Within());

        var manager = Assert.Single(await dfk.ConnectedManagersAsync().WaitAsync(Limit));
        Assert.Equal("htex", manager.Executor);
        Assert.Equal(2, manager.WorkerCount);
        Assert.True(manager.Local);
        Assert.True(manager.Active);
        Assert.False(manager.Draining);
        Assert.Equal(Environment.MachineName, manager.Hostname, ignoreCase: true);
        Assert.Equal(manager.BlockId, Assert.Single(await dfk.ConnectedBlocksAsync("htex").WaitAsync(Limit)));
        var block = Assert.Single(await dfk.BlocksAsync().WaitAsync(Limit));
        Assert.Equal(manager.BlockId, block.BlockId);
        Assert.NotNull(block.JobId);
        Assert.False(block.ScaledIn);
        Assert.Contains(block.State, new[] { BlockState.Running, BlockState.Pending });

        var notHtex = await Assert.ThrowsAsync<ArgumentException>(() => dfk.BlocksAsync("nope"));
        Assert.Contains("nope", notHtex.Message);
    }

    [Fact]
    public async Task A_thread_pool_kernel_has_no_blocks()
    {
        await using var dfk = await LoadAsync();
        Assert.Empty(await dfk.BlocksAsync());
        Assert.Empty(await dfk.ConnectedManagersAsync());
        await Assert.ThrowsAsync<ArgumentException>(() => dfk.ConnectedBlocksAsync("threads"));
    }

    [Fact]
    public async Task On_a_real_Slurm_blocks_are_sbatch_jobs_configured_from_CSharp()
    {
        if (!Harness.Require("slurm", out var why))
        {
            output.WriteLine($"SKIPPED: the slurm harness cannot run here: {why}");
            return;
        }
        var label = $"cs-slurm-{Random.Shared.Next(100000, 999999)}";
        await using var dfk = await LoadAsync(o => o.Executors.Add(new HighThroughputExecutorOptions
        {
            Label = label, MaxWorkersPerNode = 2, HeartbeatPeriod = TimeSpan.FromMilliseconds(250), HeartbeatThreshold = TimeSpan.FromSeconds(5),
            StrategyPeriod = TimeSpan.FromMilliseconds(500),
            Provider = new SlurmProviderOptions
            {
                Exclusive = false, Walltime = "00:05:00", CmdTimeout = TimeSpan.FromSeconds(30),
                StatusPollingInterval = TimeSpan.FromSeconds(1), Launcher = new SingleNodeLauncherOptions(),
            },
        }));
        var job = dfk.App((int _) => Environment.GetEnvironmentVariable("SLURM_JOB_ID") ?? "");
        var jobId = await job.Invoke(0).Task.WaitAsync(TimeSpan.FromMinutes(3));
        Assert.NotEqual("", jobId);
        var block = Assert.Single(await dfk.BlocksAsync(label).WaitAsync(Limit));
        Assert.Equal(jobId, block.JobId);
        // The poller's view, at most StatusPollingInterval old: the job is running, or was queued a moment ago.
        Assert.Contains(block.State, new[] { BlockState.Running, BlockState.Pending });
        Assert.Equal(block.BlockId, Assert.Single(await dfk.ConnectedManagersAsync(label).WaitAsync(Limit)).BlockId);
    }
}
