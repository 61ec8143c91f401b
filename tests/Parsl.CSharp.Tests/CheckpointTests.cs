using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

/// <summary>A type the memo encoder does not know: a hasher must say what identifies it.</summary>
public sealed class Grid(int size)
{
    /// <summary>The size, the only thing that identifies a grid.</summary>
    public int Size { get; } = size;
}

/// <summary>Checkpoints, the app cache and memo hashers from C#.</summary>
public class CheckpointTests
{
    private static int doubled;
    private static int cells;

    private static int Double(int n)
    {
        Interlocked.Increment(ref doubled);
        return n * 2;
    }

    private static int Cells(Grid g)
    {
        Interlocked.Increment(ref cells);
        return g.Size * g.Size;
    }

    private static readonly FunctionAppOptions Cached = new() { Cache = true, Name = "double" };

    [Fact]
    public async Task A_later_run_reuses_the_last_checkpoint_instead_of_running_the_call()
    {
        var runDir = TempRunDir();
        var before = Volatile.Read(ref doubled);
        await using (var first = await Dfk.LoadAsync(new DfkOptions { RunDir = runDir, CheckpointMode = CheckpointPolicy.TaskExit }))
        {
            var app = first.App<int, int>(Double, Cached);
            Assert.Equal(84, await app.Invoke(42).Within());
        }
        Assert.Equal(before + 1, Volatile.Read(ref doubled));
        var last = Checkpoints.Last(runDir);
        Assert.Equal(Path.Combine(runDir, "000", "checkpoint"), Assert.Single(last));
        Assert.Equal(last, Checkpoints.All(runDir));

        await using var second = await Dfk.LoadAsync(new DfkOptions { RunDir = runDir, CheckpointFiles = last.ToList() });
        var again = second.App<int, int>(Double, Cached);
        var f = again.Invoke(42);
        Assert.Equal(84, await f.Within());
        Assert.Equal(States.MemoDone, f.Status);
        Assert.Equal(before + 1, Volatile.Read(ref doubled));
    }

    [Fact]
    public async Task Manual_mode_writes_when_CheckpointAsync_is_called()
    {
        await using var dfk = await LoadAsync(o => o.CheckpointMode = CheckpointPolicy.Manual);
        var app = dfk.App((int n) => n + 1, new FunctionAppOptions { Cache = true });
        await app.Invoke(1).Within();
        await app.Invoke(2).Within();
        Assert.False(File.Exists(dfk.CheckpointFile));
        Assert.Equal(2, await dfk.CheckpointAsync().WaitAsync(Limit));
        Assert.True(File.Exists(dfk.CheckpointFile));
        Assert.Equal(0, await dfk.CheckpointAsync().WaitAsync(Limit));
    }

    [Fact]
    public async Task Periodic_mode_needs_a_period_and_the_error_says_so_in_CSharp()
    {
        var e = await Assert.ThrowsAsync<ConfigurationError>(() => LoadAsync(o => o.CheckpointMode = CheckpointPolicy.Periodic));
        Assert.Equal("DfkOptions.CheckpointPeriod", e.Field);
        Assert.Contains("TimeSpan.FromMinutes(30)", e.Message);
        var bad = await Assert.ThrowsAsync<ConfigurationError>(() => LoadAsync(o => o.CheckpointMode = (CheckpointPolicy)9));
        Assert.Equal("DfkOptions.CheckpointMode", bad.Field);
        await using var ok = await LoadAsync(o => { o.CheckpointMode = CheckpointPolicy.Periodic; o.CheckpointPeriod = TimeSpan.FromMinutes(5); });
    }

    [Fact]
    public async Task A_memo_hasher_lets_a_type_of_your_own_be_a_cache_key()
    {
        await using (var plain = await LoadAsync())
        {
            var app = plain.App<Grid, int>(Cells, new FunctionAppOptions { Cache = true });
            Assert.IsType<MemoizationError>(await FailureOf(app.Invoke(new Grid(3))));
        }
        await using var dfk = await LoadAsync(o => o.AddMemoHasher<Grid>(g => BitConverter.GetBytes(g.Size)));
        var cellsApp = dfk.App<Grid, int>(Cells, new FunctionAppOptions { Cache = true });
        var before = Volatile.Read(ref cells);
        Assert.Equal(9, await cellsApp.Invoke(new Grid(3)).Within());
        var again = cellsApp.Invoke(new Grid(3));
        Assert.Equal(9, await again.Within());
        Assert.Equal(States.MemoDone, again.Status);
        Assert.Equal(16, await cellsApp.Invoke(new Grid(4)).Within());
        Assert.Equal(before + 2, Volatile.Read(ref cells));
    }

    [Fact]
    public async Task AppCache_false_runs_cached_apps_every_time()
    {
        var runs = 0;
        await using var dfk = await LoadAsync(o => o.AppCache = false);
        var app = dfk.App((int n) => Interlocked.Increment(ref runs) + n * 0, new FunctionAppOptions { Cache = true });
        await app.Invoke(1).Within();
        var second = app.Invoke(1);
        await second.Within();
        Assert.Equal(2, runs);
        Assert.Equal(States.ExecDone, second.Status);
    }
}
