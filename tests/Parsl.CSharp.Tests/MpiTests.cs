using System.Diagnostics;
using Xunit.Abstractions;
using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

/// <summary>The MPIExecutor from C#: a real manager and workers on this machine, with real MPICH
/// (tests/harness/mpi.sh) and with a node file of fake node names (those tasks record what they were given).</summary>
public class MpiTests(ITestOutputHelper output)
{
    private const string Hello = """
        #include <mpi.h>
        #include <stdio.h>
        int main(int argc, char **argv) {
            int rank, size, sum;
            MPI_Init(&argc, &argv);
            MPI_Comm_rank(MPI_COMM_WORLD, &rank);
            MPI_Comm_size(MPI_COMM_WORLD, &size);
            MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
            printf("rank %d size %d sum %d\n", rank, size, sum);
            MPI_Finalize();
            return 0;
        }
        """;

    [Fact]
    public async Task Four_MPICH_ranks_sum_their_ranks_with_MPI_Allreduce()
    {
        if (!Harness.Require("mpi", out var why))
        {
            output.WriteLine($"SKIPPED: the mpi harness cannot run here: {why}");
            return;
        }
        var dir = TempRunDir();
        File.WriteAllText(Path.Combine(dir, "hello.c"), Hello);
        var exe = Path.Combine(dir, "hello");
        using (var cc = Process.Start(new ProcessStartInfo("mpicc.mpich", ["-o", exe, Path.Combine(dir, "hello.c")]) { RedirectStandardError = true })!)
        {
            var err = await cc.StandardError.ReadToEndAsync();
            await cc.WaitForExitAsync();
            Assert.True(cc.ExitCode == 0, err);
        }
        var mpi = new MpiExecutorOptions { Label = "mpi", MpiProgram = "mpiexec.mpich" };
        mpi.Htex.HeartbeatPeriod = TimeSpan.FromMilliseconds(200);
        mpi.Htex.StrategyPeriod = TimeSpan.FromMilliseconds(200);
        await using var dfk = await LoadAsync(o => o.Executors.Add(mpi));
        var options = new ShellAppOptions();
        new MpiResourceSpecification { NumNodes = 1, NumRanks = 4 }.CopyTo(options.Resources);
        var outFile = Path.Combine(dir, "ranks.out");
        var run = dfk.ShellApp((string o) => $"$PARSL_MPI_PREFIX {exe} > {o}", options);
        Assert.Equal(0, await run.Invoke(outFile).Within());
        var lines = File.ReadAllLines(outFile).Order().ToArray();
        Assert.Equal(["rank 0 size 4 sum 6", "rank 1 size 4 sum 6", "rank 2 size 4 sum 6", "rank 3 size 4 sum 6"], lines);
    }

    private static (MpiExecutorOptions Options, string Dir) Fake(int workers)
    {
        var dir = TempRunDir();
        var nodes = Path.Combine(dir, "fake-nodes");
        File.WriteAllText(nodes, "fake-node1\nfake-node2\nfake-node3\nfake-node4\n");
        var mpi = new MpiExecutorOptions
        {
            Label = "mpi",
            MaxWorkersPerBlock = workers,
            MpiLauncher = MpiLauncherKind.Mpiexec,
            MpiProgram = "mpiexec.mpich",
            NodeFile = nodes,
        };
        mpi.Htex.HeartbeatPeriod = TimeSpan.FromMilliseconds(200);
        mpi.Htex.HeartbeatThreshold = TimeSpan.FromSeconds(5);
        mpi.Htex.StrategyPeriod = TimeSpan.FromMilliseconds(200);
        return (mpi, dir);
    }

    /// <summary>What a function app read from <see cref="MpiEnvironment"/> on its worker.</summary>
    public sealed record MpiEnvironmentValues(string Prefix, string Nodes, int NumRanks, int RanksPerNode, int NumNodes);

    private static MpiEnvironmentValues Read(int _) =>
        new(MpiEnvironment.Prefix, string.Join(",", MpiEnvironment.Nodes), MpiEnvironment.NumRanks, MpiEnvironment.RanksPerNode, MpiEnvironment.NumNodes);

    [Fact]
    public async Task A_shell_app_gets_its_nodes_and_prefix_and_a_function_app_reads_the_same_values()
    {
        var (mpi, dir) = Fake(2);
        await using var dfk = await LoadAsync(o => o.Executors.Add(mpi));
        var options = new ShellAppOptions();
        new MpiResourceSpecification { NumNodes = 2, NumRanks = 4 }.CopyTo(options.Resources);
        var output = Path.Combine(dir, "shell.out");
        var shell = dfk.ShellApp((string path) => $"echo \"$PARSL_MPI_NODELIST|$PARSL_RANKS_PER_NODE|$PARSL_MPI_PREFIX\" > {path}", options);
        Assert.Equal(0, await shell.Invoke(output).Within());
        var parts = File.ReadAllText(output).Trim().Split('|');
        Assert.Equal(2, parts[0].Split(',').Length);
        Assert.All(parts[0].Split(','), n => Assert.StartsWith("fake-node", n));
        Assert.Equal("2", parts[1]);
        Assert.Equal($"mpiexec.mpich -n 4 -ppn 2 -hosts {parts[0]}", parts[2]);

        var fnOptions = new FunctionAppOptions();
        new MpiResourceSpecification { NumNodes = 1, RanksPerNode = 3, LauncherOptions = "--verbose" }.CopyTo(fnOptions.Resources);
        var read = dfk.App<int, MpiEnvironmentValues>(Read, fnOptions);
        var v = await read.Invoke(0).Within();
        Assert.Equal((3, 3, 1), (v.NumRanks, v.RanksPerNode, v.NumNodes));
        Assert.StartsWith("fake-node", v.Nodes);
        Assert.EndsWith("--verbose", v.Prefix);
    }

    [Fact]
    public async Task A_task_larger_than_its_block_an_empty_and_an_inconsistent_specification_fail_at_once()
    {
        var (mpi, _) = Fake(1);
        await using var dfk = await LoadAsync(o => o.Executors.Add(mpi));
        var huge = new ShellAppOptions();
        new MpiResourceSpecification { NumNodes = 5 }.CopyTo(huge.Resources);
        var e = Assert.IsType<InvalidResourceSpecification>(await FailureOf(dfk.ShellApp(() => "true", huge).Invoke()));
        Assert.Contains("4 node", e.Message);

        Assert.IsType<InvalidResourceSpecification>(await FailureOf(dfk.ShellApp(() => "true").Invoke()));

        var odd = new ShellAppOptions();
        new MpiResourceSpecification { NumNodes = 2, NumRanks = 5 }.CopyTo(odd.Resources);
        var bad = Assert.IsType<InvalidResourceSpecification>(await FailureOf(dfk.ShellApp(() => "true", odd).Invoke()));
        Assert.Contains("num_ranks", bad.InvalidKeys);
    }

    [Fact]
    public async Task Options_are_checked_at_load_naming_the_field()
    {
        var (mpi, _) = Fake(0);
        mpi.Htex.Provider = new LocalProviderOptions();
        var e = await Assert.ThrowsAsync<ConfigurationError>(() => LoadAsync(o => o.Executors.Add(mpi)));
        Assert.StartsWith("MpiExecutorOptions.", e.Field);
        Assert.Contains("SimpleLauncher", e.Message);
        Assert.Contains("MaxWorkersPerBlock", e.Message);
    }
}
