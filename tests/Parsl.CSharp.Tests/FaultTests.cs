using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

/// <summary>Walltimes of function apps, <see cref="KernelExitMode.Skip"/> and signal handling, from C#.</summary>
public class FaultTests
{
    [Fact]
    public async Task A_function_app_past_its_walltime_fails_with_AppTimeout_and_its_token_is_cancelled()
    {
        await using var dfk = await LoadAsync();
        var cancelled = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);
        var waits = dfk.App(async (int x, CancellationToken ct) =>
        {
            using var _ = ct.Register(() => cancelled.TrySetResult(true));
            await Task.Delay(Timeout.Infinite, ct);
            return x;
        }, new FunctionAppOptions { Walltime = TimeSpan.FromMilliseconds(300) });
        Assert.IsType<AppTimeout>(await FailureOf(waits.Invoke(1)));
        Assert.True(await cancelled.Task.WaitAsync(Limit), "the body's token was cancelled");

        var quick = dfk.App((int x) => x + 1, new FunctionAppOptions { Walltime = TimeSpan.FromSeconds(30) });
        Assert.Equal(2, await quick.Invoke(1).Within());
    }

    [Fact]
    public async Task A_walltime_that_is_not_positive_is_refused_naming_the_field()
    {
        await using var dfk = await LoadAsync();
        var e = Assert.Throws<ConfigurationError>(() => dfk.App((int x) => x, new FunctionAppOptions { Walltime = TimeSpan.Zero }));
        Assert.Equal("AppOptions.Walltime", e.Field);
    }

    [Fact]
    public async Task Skip_returns_at_once_and_fails_a_running_try_with_KernelShutdownError()
    {
        using var gate = new ManualResetEventSlim(false);
        using var started = new ManualResetEventSlim(false);
        var dfk = await LoadAsync(o => o.ExitMode = KernelExitMode.Skip);
        var stuck = dfk.App((int x) => { started.Set(); gate.Wait(); return x; });
        var future = stuck.Invoke(1);
        Assert.True(started.Wait(Limit), "the try runs");
        // The try never ends by itself: a dispose that waited for it would not return.
        await dfk.DisposeAsync().AsTask().WaitAsync(Limit);
        Assert.IsType<KernelShutdownError>(await FailureOf(future));
        gate.Set();
    }

    [Fact]
    public async Task Signal_handling_is_on_by_default_and_can_be_turned_off()
    {
        Assert.True(new DfkOptions().HandleSignals);
        await using var dfk = await LoadAsync(o => o.HandleSignals = false);
        Assert.Equal(3, await dfk.App((int x) => x + 2).Invoke(1).Within());
    }
}
