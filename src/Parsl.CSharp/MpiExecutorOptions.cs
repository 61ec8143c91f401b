using Microsoft.FSharp.Core;
using Parsl.Executors;
using Parsl.Executors.HighThroughput;
using CoreLauncher = Parsl.Executors.Mpi.MpiLauncher;

namespace Parsl;

/// <summary>How an MPI task's ranks are started, and so the syntax of <c>PARSL_MPI_PREFIX</c> (Parsl's
/// <c>mpi_launcher</c>).</summary>
public enum MpiLauncherKind
{
    /// <summary><c>mpiexec -n R -ppn P -hosts h1,h2</c> (MPICH's Hydra, Intel MPI, Cray PALS), Parsl's default; when the
    /// node's <c>mpiexec</c> turns out to be Open MPI's, Open MPI's syntax is used instead.</summary>
    Mpiexec = 0,
    /// <summary>Open MPI's <c>mpiexec -n R --host h1:P,h2:P --map-by ppr:P:node</c>.</summary>
    OpenMpi = 1,
    /// <summary>Slurm's <c>srun --ntasks R --ntasks-per-node P --nodelist h1,h2 --nodes N</c>.</summary>
    Srun = 2,
    /// <summary>Cray's <c>aprun -n R -N P -node-list h1,h2</c>.</summary>
    Aprun = 3,
}

/// <summary>Runs MPI applications (Parsl's <c>MPIExecutor</c>): a HighThroughputExecutor in MPI mode. Each task gives
/// <c>num_nodes</c> and <c>num_ranks</c> (or <c>ranks_per_node</c>) in its <see cref="FunctionAppOptions.Resources"/>
/// (see <see cref="MpiResourceSpecification"/>); the manager on the block's lead node hands it that many free nodes,
/// and a shell app runs <c>$PARSL_MPI_PREFIX ./app</c>. A task that asks for more nodes than its block has fails at
/// once with <see cref="InvalidResourceSpecification"/>; an empty or unknown-key specification fails the call.</summary>
public sealed class MpiExecutorOptions : ExecutorOptions
{
    /// <summary>Options with Parsl's defaults: label <c>MPIExecutor</c>, one task at a time per block, <c>mpiexec</c>,
    /// one block from a <see cref="LocalProviderOptions"/> with a <see cref="SimpleLauncherOptions"/>.</summary>
    public MpiExecutorOptions() : base("MPIExecutor") { }

    /// <summary>Tasks that run at once in a block (Parsl's <c>max_workers_per_block</c>). Default 1; at least 1.</summary>
    public int MaxWorkersPerBlock { get; set; } = 1;

    /// <summary>How ranks are launched. Default <see cref="MpiLauncherKind.Mpiexec"/>.</summary>
    public MpiLauncherKind MpiLauncher { get; set; } = MpiLauncherKind.Mpiexec;

    /// <summary>The launcher's program, a name on the PATH or a path (as <c>mpiexec.mpich</c>). Default null:
    /// <c>mpiexec</c>, <c>srun</c> or <c>aprun</c>.</summary>
    public string? MpiProgram { get; set; }

    /// <summary>A file listing the block's nodes, one per line. Default null: Slurm's job nodes
    /// (<c>SLURM_NODELIST</c>), else PBS's <c>PBS_NODEFILE</c>, else the manager's own host.</summary>
    public string? NodeFile { get; set; }

    /// <summary>Everything else, as for a HighThroughputExecutor (provider, address, heartbeats, encryption). Its
    /// label, <c>MaxWorkersPerNode</c> and <c>CoresPerWorker</c> are set from this class. The provider's launcher must
    /// be a <see cref="SimpleLauncherOptions"/>. Default: a <see cref="LocalProviderOptions"/> with a
    /// <see cref="SimpleLauncherOptions"/>.</summary>
    public HighThroughputExecutorOptions Htex { get; set; } = new()
    {
        Provider = new LocalProviderOptions { Launcher = new SimpleLauncherOptions() },
    };

    internal override IEnumerable<ConfigurationError> Check()
    {
        if (!Enum.IsDefined(MpiLauncher))
            yield return new ConfigurationError(nameof(MpiExecutorOptions) + "." + nameof(MpiLauncher),
                $"{(int)MpiLauncher} is not an MpiLauncherKind; use Mpiexec, OpenMpi, Srun or Aprun");
        if (Htex is null)
            yield return new ConfigurationError(nameof(MpiExecutorOptions) + "." + nameof(Htex),
                "is null; leave the default or give a HighThroughputExecutorOptions");
    }

    internal override IExecutor Build()
    {
        var htex = ((HighThroughputExecutor)(Htex ?? new HighThroughputExecutorOptions()).Build()).Options;
        var launcher = MpiLauncher switch
        {
            MpiLauncherKind.OpenMpi => CoreLauncher.OpenMpi,
            MpiLauncherKind.Srun => CoreLauncher.Srun,
            MpiLauncherKind.Aprun => CoreLauncher.Aprun,
            _ => CoreLauncher.Mpiexec,
        };
        return new MPIExecutor(new Parsl.Executors.MpiExecutorOptions(
            Label, MaxWorkersPerBlock, launcher,
            MpiProgram is null ? FSharpOption<string>.None : FSharpOption<string>.Some(MpiProgram),
            NodeFile is null ? FSharpOption<string>.None : FSharpOption<string>.Some(NodeFile),
            htex));
    }
}

/// <summary>An MPI task's shape, written into an app's <see cref="FunctionAppOptions.Resources"/> with
/// <see cref="CopyTo"/> (the same keys as Parsl's: <c>num_nodes</c>, <c>num_ranks</c>, <c>ranks_per_node</c>,
/// <c>launcher_options</c>). Leave a value null to have it derived.</summary>
public sealed class MpiResourceSpecification
{
    /// <summary>Nodes the task spans. Default null: 1.</summary>
    public int? NumNodes { get; set; }

    /// <summary>Ranks in all. Default null: <see cref="NumNodes"/> × <see cref="RanksPerNode"/>.</summary>
    public int? NumRanks { get; set; }

    /// <summary>Ranks on each node. Default null: <see cref="NumRanks"/> / <see cref="NumNodes"/>, which must divide evenly.</summary>
    public int? RanksPerNode { get; set; }

    /// <summary>Extra launcher arguments, appended to the prefix. Default null: none.</summary>
    public string? LauncherOptions { get; set; }

    /// <summary>Writes the values that are set into <paramref name="resources"/> (an app's <c>Resources</c>).</summary>
    public void CopyTo(IDictionary<string, object> resources)
    {
        ArgumentNullException.ThrowIfNull(resources);
        if (NumNodes is { } n) resources["num_nodes"] = n;
        if (NumRanks is { } r) resources["num_ranks"] = r;
        if (RanksPerNode is { } p) resources["ranks_per_node"] = p;
        if (LauncherOptions is { } o) resources["launcher_options"] = o;
    }
}

/// <summary>What the running MPI task was given, read from its environment (the <c>PARSL_*</c> variables): for a
/// function app that starts its ranks itself. Outside an MPI task the numbers are 0 and the texts empty.</summary>
public static class MpiEnvironment
{
    /// <summary><c>PARSL_NUM_NODES</c>.</summary>
    public static int NumNodes => Parsl.Executors.MpiEnvironment.numNodes();

    /// <summary><c>PARSL_NUM_RANKS</c>.</summary>
    public static int NumRanks => Parsl.Executors.MpiEnvironment.numRanks();

    /// <summary><c>PARSL_RANKS_PER_NODE</c>.</summary>
    public static int RanksPerNode => Parsl.Executors.MpiEnvironment.ranksPerNode();

    /// <summary><c>PARSL_MPI_NODELIST</c>, one host per item.</summary>
    public static IReadOnlyList<string> Nodes => [.. Parsl.Executors.MpiEnvironment.nodes()];

    /// <summary><c>PARSL_LAUNCHER_OPTIONS</c>.</summary>
    public static string LauncherOptions => Parsl.Executors.MpiEnvironment.launcherOptions();

    /// <summary><c>PARSL_MPI_PREFIX</c>: the chosen launcher's prefix, to put before the program.</summary>
    public static string Prefix => Parsl.Executors.MpiEnvironment.prefix();

    /// <summary><c>PARSL_MPIEXEC_PREFIX</c>.</summary>
    public static string MpiexecPrefix => Parsl.Executors.MpiEnvironment.mpiexecPrefix();

    /// <summary><c>PARSL_SRUN_PREFIX</c>.</summary>
    public static string SrunPrefix => Parsl.Executors.MpiEnvironment.srunPrefix();

    /// <summary><c>PARSL_APRUN_PREFIX</c>.</summary>
    public static string AprunPrefix => Parsl.Executors.MpiEnvironment.aprunPrefix();
}
