using Microsoft.FSharp.Collections;
using Microsoft.FSharp.Core;
using Parsl.Executors;
using Parsl.Executors.WorkQueue;
using Parsl.Providers;

namespace Parsl;

/// <summary>Runs tasks on CCTools Work Queue workers (Parsl's <c>WorkQueueExecutor</c>): a manager in this process
/// listens on <see cref="Address"/>:<see cref="Port"/>, and <c>work_queue_worker</c> processes (protocol 9 or 11)
/// connect to it, started in blocks by <see cref="Provider"/> or by hand (<c>work_queue_worker HOST PORT</c>).
/// Function apps run in a .NET task runner (<c>Parsl.Workers.dll</c>) sent once to each worker and cached there with
/// the application's assemblies; shell apps are the worker's own commands. Resource keys: <c>cores</c>,
/// <c>memory</c> (MB), <c>disk</c> (MB) (those three together or none), <c>gpus</c>, <c>priority</c>,
/// <c>running_time_min</c>. A task that ends without a result fails with a <see cref="WorkQueueTaskFailure"/>
/// subtype naming what happened; an app's own exception comes back as itself.</summary>
public sealed class WorkQueueExecutorOptions : ExecutorOptions
{
    /// <summary>Options with the defaults: label <c>WorkQueueExecutor</c>, loopback, any free port, no blocks.</summary>
    public WorkQueueExecutorOptions() : base("WorkQueueExecutor") { }

    /// <summary>The address the manager listens on. Default <c>127.0.0.1</c>.</summary>
    public string Address { get; set; } = "127.0.0.1";

    /// <summary>The port workers connect to. Default 0: any free port (blocks are told which). Set it when you start
    /// workers by hand.</summary>
    public int Port { get; set; }

    /// <summary>A file holding the password workers must prove they know (<c>work_queue_worker --password FILE</c>),
    /// its exact bytes. Default null: a password is made for each run and given to the executor's blocks; set this
    /// to start workers by hand.</summary>
    public string? PasswordFile { get; set; }

    /// <summary>Where blocks of workers come from; each runs <c>work_queue_worker ADDRESS PORT</c>. Default null: no
    /// blocks; workers connect by themselves.</summary>
    public ProviderOptions? Provider { get; set; }

    /// <summary>How blocks are scaled. Default <see cref="ScalingStrategy.Simple"/>.</summary>
    public ScalingStrategy Strategy { get; set; } = ScalingStrategy.Simple;

    /// <summary>How often the strategy runs. Default 5 s.</summary>
    public TimeSpan StrategyPeriod { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Blocks idle this long may be scaled in (Parsl's <c>max_idletime</c>). Default 120 s.</summary>
    public TimeSpan MaxIdleTime { get; set; } = TimeSpan.FromSeconds(120);

    /// <summary>The worker program blocks run. Default <c>work_queue_worker</c>.</summary>
    public string WorkerExecutable { get; set; } = "work_queue_worker";

    /// <summary>Blocks start their workers with the long-lived .NET runner (<c>--coprocess</c>; protocol 10 and
    /// later): function apps then skip a <c>dotnet</c> start per task. Default false.</summary>
    public bool LongLivedRunner { get; set; }

    /// <summary>Extra arguments for each worker a block starts (Parsl's <c>worker_options</c>). Default empty.</summary>
    public IList<string> WorkerOptions { get; } = new List<string>();

    /// <summary>A shell command run before every task's command (Parsl's <c>init_command</c>). Default empty.</summary>
    public string InitCommand { get; set; } = "";

    /// <summary>Environment variables set for every task (Parsl's <c>env</c>). Default empty.</summary>
    public IDictionary<string, string> Env { get; } = new Dictionary<string, string>();

    /// <summary>Workers see this machine's files at the same paths, so <see cref="Parsl.Data.File"/>s are used in
    /// place instead of staged. Default false.</summary>
    public bool SharedFs { get; set; }

    /// <summary>Each task's category is its app's name; false puts every task in <c>parsl-default</c>. Default true.</summary>
    public bool Autocategory { get; set; } = true;

    /// <summary>Dispatches of a task before its worker's loss fails it with <see cref="WorkerLost"/>. Default 1: the
    /// kernel retries (<see cref="DfkOptions.Retries"/>), as in Parsl.</summary>
    public int MaxRetries { get; set; } = 1;

    /// <summary>How often an idle worker is asked whether it is alive. Default 30 s.</summary>
    public TimeSpan KeepalivePeriod { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>A worker silent this long is lost and its tasks re-run elsewhere. Default 120 s; longer than
    /// <see cref="KeepalivePeriod"/>.</summary>
    public TimeSpan KeepaliveTimeout { get; set; } = TimeSpan.FromSeconds(120);

    /// <summary>CCTools' <c>resource_monitor</c> on the workers: a task that declares <c>memory</c> runs under it and
    /// fails with <see cref="WorkQueueResourceExhaustion"/> when it goes over. Default null: memory only places tasks.</summary>
    public string? ResourceMonitor { get; set; }

    /// <summary>The program that runs the task runner on workers. Default null: the <c>dotnet</c> running this
    /// process, else <c>dotnet</c> from the worker's PATH.</summary>
    public string? DotnetCommand { get; set; }

    /// <summary>The folder holding <c>Parsl.Workers.dll</c> and its dependencies. Default null: the application's
    /// directory (reference the <c>Parsl.Workers</c> project or package).</summary>
    public string? RunnerDirectory { get; set; }

    internal override IEnumerable<ConfigurationError> Check()
    {
        foreach (var e in WorkerLinkOptions.CheckStrategy(nameof(WorkQueueExecutorOptions), Strategy))
            yield return e;
    }

    internal override IExecutor Build()
    {
        var d = WorkQueueOptionsModule.defaults();
        return new WorkQueueExecutor(new WorkQueueOptions(
            Label, Address, Port,
            WorkerLinkOptions.Optional(PasswordFile),
            WorkerLinkOptions.Provider(Provider),
            WorkerLinkOptions.Strategy(Strategy),
            StrategyPeriod, MaxIdleTime,
            WorkerExecutable, LongLivedRunner, ListModule.OfSeq(WorkerOptions), InitCommand,
            WorkerLinkOptions.Env(Env),
            SharedFs, Autocategory, MaxRetries, KeepalivePeriod, KeepaliveTimeout,
            WorkerLinkOptions.Optional(ResourceMonitor),
            DotnetCommand ?? d.DotnetCommand, RunnerDirectory ?? d.RunnerDirectory));
    }
}
