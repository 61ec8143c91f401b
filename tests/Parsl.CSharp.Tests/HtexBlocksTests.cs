using System.Diagnostics;
using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

/// <summary>Block error handlers, DrainPeriod and scaling strategies from C# options, seen through the Dfk's status
/// methods, on real worker processes.</summary>
public class HtexBlocksTests
{
    /// <summary>Polls a block status (which raises no event) until it holds, within the test limit.</summary>
    private static async Task WaitUntil(string what, Func<Task<bool>> probe)
    {
        var clock = Stopwatch.StartNew();
        while (!await probe())
        {
            if (clock.Elapsed > Limit) throw new Xunit.Sdk.XunitException($"gave up after {Limit} waiting for {what}");
            await Task.Delay(100);
        }
    }

    private static HighThroughputExecutorOptions Fast(Action<HighThroughputExecutorOptions> configure)
    {
        var htex = new HighThroughputExecutorOptions
        {
            Label = "htex", MaxWorkersPerNode = 1, HeartbeatPeriod = TimeSpan.FromMilliseconds(200), HeartbeatThreshold = TimeSpan.FromSeconds(3),
            StrategyPeriod = TimeSpan.FromMilliseconds(200),
            Provider = new LocalProviderOptions { StatusPollingInterval = TimeSpan.FromMilliseconds(200) },
        };
        configure(htex);
        return htex;
    }

    [Fact]
    public async Task A_windowed_block_error_handler_tries_another_block_then_fails_tasks_with_BadStateException()
    {
        await using var dfk = await LoadAsync(o => o.Executors.Add(Fast(h =>
        {
            h.BlockErrorWindow = 2;
            h.WorkerCommand = ["/bin/sh", "-c", "echo broken-runtime >&2; exit 5", "sh"];
        })));
        var app = dfk.App((int x) => x);
        var e = Assert.IsType<BadStateException>(await FailureOf(app.Invoke(1)));
        Assert.Contains("2 of 2 blocks failed", e.Message);
        Assert.Contains("broken-runtime", e.Message);
        // The task fails as soon as its manager gives up on its workers; the executor's error handler judges the
        // blocks at its next poll, and a strategy round in between may launch one more block, which fails the same
        // way. Once judged, no block is alive and no more are launched.
        await WaitUntil("every block to have ended", async () =>
            (await dfk.BlocksAsync()).All(b => b.State != BlockState.Running && b.State != BlockState.Pending));
        var blocks = await dfk.BlocksAsync();
        var ids = blocks.Select(b => b.BlockId).ToList();
        Assert.Contains("0", ids);
        Assert.Contains("1", ids);
        Assert.InRange(ids.Count, 2, 3);
        Assert.All(blocks, b => Assert.DoesNotContain(b.State, new[] { BlockState.Running, BlockState.Pending }));
        Assert.Contains("exit code 5", e.Message);
    }

    [Fact]
    public async Task After_DrainPeriod_the_manager_ends_and_a_new_block_takes_later_tasks()
    {
        await using var dfk = await LoadAsync(o => o.Executors.Add(Fast(h => h.DrainPeriod = TimeSpan.FromSeconds(1.5))));
        var pid = dfk.App((int _) => Environment.ProcessId);
        var first = await pid.Invoke(0).Within();
        await WaitUntil("the first block to drain and end", async () =>
            (await dfk.BlocksAsync()).Any(b => b.BlockId == "0" && b.State == BlockState.Completed));
        var later = await pid.Invoke(1).Within();
        Assert.NotEqual(first, later);
        Assert.True((await dfk.BlocksAsync()).Count > 1);
    }

    [Fact]
    public async Task HtexAutoScale_scales_an_idle_block_in_after_MaxIdleTime()
    {
        await using var dfk = await LoadAsync(o => o.Executors.Add(Fast(h =>
        {
            h.Strategy = ScalingStrategy.HtexAutoScale;
            h.MaxIdleTime = TimeSpan.FromSeconds(1);
            h.Provider = new LocalProviderOptions { InitBlocks = 1, MinBlocks = 0, MaxBlocks = 2, StatusPollingInterval = TimeSpan.FromMilliseconds(200) };
        })));
        Assert.Equal(1, await dfk.App((int x) => x).Invoke(1).Within());
        await WaitUntil("the idle block to be scaled in", async () => (await dfk.BlocksAsync()).Any(b => b.ScaledIn));
        await WaitUntil("its manager to leave", async () => (await dfk.ConnectedManagersAsync()).Count == 0);
        // A new task brings a new block.
        Assert.Equal(2, await dfk.App((int x) => x).Invoke(2).Within());
    }
}
