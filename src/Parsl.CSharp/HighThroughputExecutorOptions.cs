using Microsoft.FSharp.Collections;
using Microsoft.FSharp.Core;
using Parsl.Executors;
using Parsl.Executors.HighThroughput;
using Parsl.Jobs;
using Parsl.Providers;

namespace Parsl;

/// <summary>How an executor scales its blocks (Parsl's <c>Config.strategy</c>).</summary>
public enum ScalingStrategy
{
    /// <summary>Start <see cref="LocalProviderOptions.InitBlocks"/> blocks, then never scale (Parsl's <c>none</c>).</summary>
    None = 0,
    /// <summary>Scale out under load; scale in only when no task is outstanding (Parsl's <c>simple</c>, the default).</summary>
    Simple = 1,
    /// <summary>As <see cref="Simple"/>, and also scale idle blocks in while tasks remain (Parsl's <c>htex_auto_scale</c>).</summary>
    HtexAutoScale = 2,
}

/// <summary>The order in which the interchange offers tasks to connected managers.</summary>
public enum ManagerSelection
{
    /// <summary>A random order (Parsl's <c>RandomManagerSelector</c>, the default).</summary>
    Random = 0,
    /// <summary>The newest block first (Parsl's <c>BlockIdManagerSelector</c>).</summary>
    BlockId = 1,
}

/// <summary>Where an executor's blocks come from. Each kind of provider has its own options class
/// (<see cref="LocalProviderOptions"/>, ...).</summary>
public abstract class ProviderOptions
{
    private protected ProviderOptions() { }

    /// <summary>A new core provider for these options: a provider keeps the blocks it started, so each load makes its own.</summary>
    internal abstract IExecutionProvider Build();
}

/// <summary>Runs blocks on this machine (Parsl's <c>LocalProvider</c>): each block is a <c>bash</c> process group
/// running the worker pool, with its script, stdout, stderr and exit code under <c>runinfo/NNN/submit_scripts/</c>.
/// Its launcher is Parsl's <c>SingleNodeLauncher</c>.</summary>
public sealed class LocalProviderOptions : ProviderOptions
{
    /// <summary>Blocks started with the executor (Parsl's <c>init_blocks</c>). Default 1; 0 or more.</summary>
    public int InitBlocks { get; set; } = 1;

    /// <summary>The strategy never scales below this many blocks (Parsl's <c>min_blocks</c>). Default 0; 0 or more.</summary>
    public int MinBlocks { get; set; }

    /// <summary>The strategy never scales above this many blocks (Parsl's <c>max_blocks</c>). Default 1; at least <see cref="MinBlocks"/>.</summary>
    public int MaxBlocks { get; set; } = 1;

    /// <summary>Nodes per block; every node is this machine, so each block starts this many worker pools (Parsl's
    /// <c>nodes_per_block</c>). Default 1; at least 1.</summary>
    public int NodesPerBlock { get; set; } = 1;

    /// <summary>The ratio of blocks to outstanding work the strategy aims for, from 0 (as few blocks as possible) to 1
    /// (a block as soon as there is work for one) (Parsl's <c>parallelism</c>). Default 1.</summary>
    public double Parallelism { get; set; } = 1.0;

    /// <summary>Shell commands run in each block before the worker pool starts, such as <c>module load</c> or
    /// <c>export</c> (Parsl's <c>worker_init</c>). Default empty; null means empty.</summary>
    public string? WorkerInit { get; set; } = "";

    /// <summary>How often the executor asks for the blocks' status. Default 5 s; must be positive.</summary>
    public TimeSpan StatusPollingInterval { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>How the worker pool is started in each block. Default null: <see cref="SingleNodeLauncherOptions"/>.</summary>
    public LauncherOptions? Launcher { get; set; }

    internal override IExecutionProvider Build() =>
        new LocalProvider(new Parsl.Providers.LocalProviderOptions(
            NodesPerBlock, Launcher?.Build() ?? BasicLaunchers.singleNode, InitBlocks, MinBlocks, MaxBlocks, WorkerInit ?? "", Parallelism,
            StatusPollingInterval));
}

/// <summary>Runs tasks on worker processes started in blocks by a provider (Parsl's <c>HighThroughputExecutor</c>):
/// an interchange in this process hands tasks to a manager per node, which runs them on its worker processes.
/// Function apps must be compiled into an assembly (a project), which the workers load; their arguments and
/// results travel as MessagePack. Shell apps ship only their command line. Accepts the resource key <c>priority</c>.</summary>
/// <remarks>The workers are the <c>Parsl.Workers</c> executable. Reference the <c>Parsl.Workers</c> project (or package)
/// from the application so that <c>Parsl.Workers.dll</c> is copied next to it, where the default
/// <see cref="WorkerCommand"/> looks; or set <see cref="WorkerCommand"/>.</remarks>
public sealed class HighThroughputExecutorOptions : ExecutorOptions
{
    /// <summary>Options with Parsl's defaults: label <c>HighThroughputExecutor</c>, one block from a
    /// <see cref="LocalProviderOptions"/>, as many workers as cores.</summary>
    public HighThroughputExecutorOptions() : base("HighThroughputExecutor") { }

    /// <summary>Where blocks come from. Default: a <see cref="LocalProviderOptions"/> with its defaults.</summary>
    public ProviderOptions Provider { get; set; } = new LocalProviderOptions();

    /// <summary>The address managers connect to; the interchange binds it. Default <c>127.0.0.1</c>.</summary>
    public string Address { get; set; } = "127.0.0.1";

    /// <summary>A fixed port for managers. Default null: one is picked from
    /// <see cref="WorkerPortRangeStart"/>..<see cref="WorkerPortRangeEnd"/>.</summary>
    public int? WorkerPort { get; set; }

    /// <summary>The lowest port to pick from. Default 54000.</summary>
    public int WorkerPortRangeStart { get; set; } = 54000;

    /// <summary>One past the highest port to pick from. Default 55000; above <see cref="WorkerPortRangeStart"/>.</summary>
    public int WorkerPortRangeEnd { get; set; } = 55000;

    /// <summary>How many sockets (one port each) the interchange spreads managers over TCP across; each manager
    /// connects to one, picked from its id. With one socket, every message from a manager that had gone quiet costs a
    /// scan of every connected manager, which slows dispatch at thousands of managers; k sockets divide it by k. The
    /// first socket listens on <see cref="WorkerPort"/> (or a port of the range), the others on ports from
    /// <see cref="WorkerPortRangeStart"/>..<see cref="WorkerPortRangeEnd"/>. Default null: one socket per 1,000
    /// managers the provider may start (its maximum blocks times nodes per block, rounded up), from 1 to 32; otherwise
    /// 1 to 64.</summary>
    public int? InterchangeSockets { get; set; }

    /// <summary>Worker processes per node at most (Parsl's <c>max_workers_per_node</c>). Default null: as many as
    /// cores allow (see <see cref="CoresPerWorker"/>).</summary>
    public int? MaxWorkersPerNode { get; set; }

    /// <summary>Cores each worker needs; below 1 oversubscribes. Default 1.0; must be positive.</summary>
    public double CoresPerWorker { get; set; } = 1.0;

    /// <summary>Memory each worker needs, in GB. Default null: no bound.</summary>
    public double? MemPerWorker { get; set; }

    /// <summary>Tasks queued per manager beyond its free workers. Default 0.</summary>
    public int PrefetchCapacity { get; set; }

    /// <summary>How often managers and the interchange heartbeat. Default 30 s.</summary>
    public TimeSpan HeartbeatPeriod { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>A manager silent this long is lost (its tasks fail with <see cref="ManagerLost"/>); a manager that
    /// hears nothing from the interchange this long exits. Default 120 s; longer than <see cref="HeartbeatPeriod"/>.</summary>
    public TimeSpan HeartbeatThreshold { get; set; } = TimeSpan.FromSeconds(120);

    /// <summary>Managers drain (take no new tasks, exit when idle) this long after they start. Default null: never.</summary>
    public TimeSpan? DrainPeriod { get; set; }

    /// <summary>How long the interchange waits for socket activity before housekeeping. Default 10 ms.</summary>
    public TimeSpan PollPeriod { get; set; } = TimeSpan.FromMilliseconds(10);

    /// <summary>CurveZMQ encryption of every manager connection over TCP. Default true.</summary>
    public bool Encrypted { get; set; } = true;

    /// <summary>Managers on the client's own host connect over a local (Unix) socket instead of TCP, which makes a
    /// task's round trip about a third as long. Only processes of the same user that present the client's key are
    /// accepted. Default true; false sends every manager over TCP.</summary>
    public bool SameHostSocket { get; set; } = true;

    /// <summary>DANGEROUS: lets any peer that reaches the interchange's port register as a manager, receive tasks
    /// (their code and arguments) and send results, without proving that it holds the run's secret. Only for networks
    /// where nobody else can reach the port. Default false: every manager proves the secret by challenge and
    /// response, whether <see cref="Encrypted"/> or not.</summary>
    public bool AllowUnauthenticatedManagers { get; set; }

    /// <summary>The largest message (bytes) a manager may send the interchange; a longer frame is refused before
    /// anything is allocated for it. A single result longer than this fails its task with a serialization error
    /// naming this option. Default 134217728 (128 MiB); at least 65536.</summary>
    public int MaxMessageSize { get; set; } = 128 * 1024 * 1024;

    /// <summary>The order in which managers are offered tasks. Default <see cref="ManagerSelection.Random"/>.</summary>
    public ManagerSelection ManagerSelector { get; set; } = ManagerSelection.Random;

    /// <summary>Accelerator names, one per worker (<c>CUDA_VISIBLE_DEVICES</c> and friends). Default empty.</summary>
    public IList<string> AvailableAccelerators { get; } = new List<string>();

    /// <summary><c>none</c>, <c>block</c>, <c>block-reverse</c>, <c>alternating</c> or <c>list:0-1,4:2-3</c>. Default <c>none</c>.</summary>
    public string CpuAffinity { get; set; } = "none";

    /// <summary>Fail every task with <see cref="BadStateException"/> when all blocks failed (Parsl's
    /// <c>simple_error_handler</c>); false never gives up. Default true.</summary>
    public bool BlockErrorHandler { get; set; } = true;

    /// <summary>Give up instead when the newest this-many blocks all failed (Parsl's <c>windowed_error_handler</c>,
    /// whose usual window is 3). Used only when <see cref="BlockErrorHandler"/> is true. Default null: the simple rule.</summary>
    public int? BlockErrorWindow { get; set; }

    /// <summary>How blocks are scaled. Default <see cref="ScalingStrategy.Simple"/>.</summary>
    public ScalingStrategy Strategy { get; set; } = ScalingStrategy.Simple;

    /// <summary>How often the strategy runs. Default 5 s.</summary>
    public TimeSpan StrategyPeriod { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Blocks idle this long may be scaled in (Parsl's <c>max_idletime</c>). Default 120 s.</summary>
    public TimeSpan MaxIdleTime { get; set; } = TimeSpan.FromSeconds(120);

    /// <summary>The command that starts a worker pool, program first. Default null: <c>dotnet
    /// &lt;application directory&gt;/Parsl.Workers.dll</c>, which exists when the application references the
    /// <c>Parsl.Workers</c> project or package.</summary>
    public IList<string>? WorkerCommand { get; set; }

    internal override IEnumerable<ConfigurationError> Check()
    {
        if (!Enum.IsDefined(Strategy))
            yield return new ConfigurationError(nameof(HighThroughputExecutorOptions) + "." + nameof(Strategy),
                $"{(int)Strategy} is not a ScalingStrategy; use None, Simple or HtexAutoScale");
        if (!Enum.IsDefined(ManagerSelector))
            yield return new ConfigurationError(nameof(HighThroughputExecutorOptions) + "." + nameof(ManagerSelector),
                $"{(int)ManagerSelector} is not a ManagerSelection; use Random or BlockId");
    }

    internal override IExecutor Build()
    {
        static FSharpOption<T> Opt<T>(T? value) where T : struct =>
            value is { } v ? FSharpOption<T>.Some(v) : FSharpOption<T>.None;
        return new HighThroughputExecutor(new HtexOptions(
            Label, Provider?.Build()!, Address, Opt(WorkerPort), Tuple.Create(WorkerPortRangeStart, WorkerPortRangeEnd), Opt(InterchangeSockets),
            Opt(MaxWorkersPerNode), CoresPerWorker, Opt(MemPerWorker), PrefetchCapacity, HeartbeatPeriod,
            HeartbeatThreshold, Opt(DrainPeriod), PollPeriod, Encrypted, SameHostSocket,
            ManagerSelector == ManagerSelection.BlockId ? Parsl.Node.HighThroughput.ManagerSelector.BlockIdSelector
                : Parsl.Node.HighThroughput.ManagerSelector.RandomSelector,
            ListModule.OfSeq(AvailableAccelerators), CpuAffinity,
            !BlockErrorHandler ? Parsl.Jobs.BlockErrorHandler.Off
                : BlockErrorWindow is { } window ? Parsl.Jobs.BlockErrorHandler.NewWindowed(window)
                : Parsl.Jobs.BlockErrorHandler.Simple,
            Strategy switch
            {
                ScalingStrategy.None => StrategyKind.NoScaling,
                ScalingStrategy.HtexAutoScale => StrategyKind.HtexAutoScale,
                _ => StrategyKind.Simple,
            },
            StrategyPeriod, MaxIdleTime,
            WorkerCommand is null ? FSharpOption<FSharpList<string>>.None : FSharpOption<FSharpList<string>>.Some(ListModule.OfSeq(WorkerCommand)),
            AllowUnauthenticatedManagers, MaxMessageSize));
    }

    /// <summary>The core's names for this class's fields, where they differ from the C# ones, and its messages in
    /// C# words.</summary>
    internal static (string Field, string Reason) ToCSharp(string property, string reason)
    {
        if (property == nameof(InterchangeSockets))
            reason = reason.Replace("WorkerPortRange (", "WorkerPortRangeStart..WorkerPortRangeEnd (", StringComparison.Ordinal);
        if (property == "WorkerPortRange")
            reason = $"{reason.Replace("give (low, high) with", "set WorkerPortRangeStart and WorkerPortRangeEnd with", StringComparison.Ordinal)}";
        return (property == "WorkerPortRange" ? nameof(WorkerPortRangeStart) : property, CSharpWords(reason));
    }

    internal static string CSharpWords(string reason) =>
        reason.Replace("Some(TimeSpan.FromMinutes 30.0)", "TimeSpan.FromMinutes(30)", StringComparison.Ordinal)
            .Replace("use a launcher such as SrunLauncher()", "use a launcher such as new SrunLauncherOptions()", StringComparison.Ordinal)
            .Replace("None", "null", StringComparison.Ordinal)
            .Replace("LocalProvider()", "new LocalProviderOptions()", StringComparison.Ordinal);
}
