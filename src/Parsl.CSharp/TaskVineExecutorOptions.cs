using Microsoft.FSharp.Collections;
using Microsoft.FSharp.Core;
using Parsl.Executors;
using Parsl.Executors.TaskVine;
using Parsl.Providers;

namespace Parsl;

/// <summary>How function apps run on TaskVine workers (Parsl's <c>function_exec_mode</c>).</summary>
public enum TaskVineFunctionMode
{
    /// <summary>Each call starts the .NET task runner (<c>dotnet Parsl.Workers.dll</c>) in its task's sandbox.</summary>
    Regular = 0,

    /// <summary>Each worker keeps one long-lived .NET library process (a TaskVine library task) that serves the
    /// calls: no <c>dotnet</c> start per call.</summary>
    Serverless = 1,
}

/// <summary>Runs tasks on CCTools TaskVine workers (Parsl's <c>TaskVineExecutor</c>): a manager in this process
/// listens on <see cref="Address"/>:<see cref="Port"/>, and <c>vine_worker</c> processes (protocol 13) connect to it,
/// started in blocks by <see cref="Provider"/> or by hand (<c>vine_worker --password FILE HOST PORT</c>). The .NET
/// runner, the application's assemblies and <see cref="Parsl.Data.File"/> inputs are cached on each worker: sent
/// once per worker, not with every task. Completion is pushed by the worker (no polling). Resource keys:
/// <c>cores</c>, <c>memory</c> (MB), <c>disk</c> (MB) (those three together or none), <c>gpus</c>,
/// <c>priority</c>, <c>running_time_min</c>. A task that ends without a result fails with a
/// <see cref="TaskVineTaskFailure"/> subtype naming what happened; an app's own exception comes back as itself.</summary>
public sealed class TaskVineExecutorOptions : ExecutorOptions
{
    /// <summary>Options with the defaults: label <c>TaskVineExecutor</c>, loopback, any free port, no blocks.</summary>
    public TaskVineExecutorOptions() : base("TaskVineExecutor") { }

    /// <summary>The address the manager listens on. Default <c>127.0.0.1</c>.</summary>
    public string Address { get; set; } = "127.0.0.1";

    /// <summary>The port workers connect to. Default 0: any free port (blocks are told which). Set it when you start
    /// workers by hand.</summary>
    public int Port { get; set; }

    /// <summary>A file holding the password workers must prove they know (<c>vine_worker --password FILE</c>).
    /// Default null: a password is made for each run and given to the executor's blocks; set this to start workers
    /// by hand.</summary>
    public string? PasswordFile { get; set; }

    /// <summary>Where blocks of workers come from; each runs <c>vine_worker ADDRESS PORT</c>. Default null: no
    /// blocks; workers connect by themselves.</summary>
    public ProviderOptions? Provider { get; set; }

    /// <summary>How blocks are scaled. Default <see cref="ScalingStrategy.Simple"/>.</summary>
    public ScalingStrategy Strategy { get; set; } = ScalingStrategy.Simple;

    /// <summary>How often the strategy runs. Default 5 s.</summary>
    public TimeSpan StrategyPeriod { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Blocks idle this long may be scaled in (Parsl's <c>max_idletime</c>). Default 120 s.</summary>
    public TimeSpan MaxIdleTime { get; set; } = TimeSpan.FromSeconds(120);

    /// <summary>The worker program blocks run. Default <c>vine_worker</c>.</summary>
    public string WorkerExecutable { get; set; } = "vine_worker";

    /// <summary>Extra arguments for each worker a block starts. Default empty.</summary>
    public IList<string> WorkerOptions { get; } = new List<string>();

    /// <summary><see cref="TaskVineFunctionMode.Regular"/> (a runner start per call) or
    /// <see cref="TaskVineFunctionMode.Serverless"/> (a long-lived library per worker). Default Regular.</summary>
    public TaskVineFunctionMode FunctionExecMode { get; set; } = TaskVineFunctionMode.Regular;

    /// <summary>A shell command run before every task's command (Parsl's <c>init_command</c>). Default empty.</summary>
    public string InitCommand { get; set; } = "";

    /// <summary>Environment variables set for every task (Parsl's <c>env_vars</c>). Default empty.</summary>
    public IDictionary<string, string> Env { get; } = new Dictionary<string, string>();

    /// <summary>Workers see this machine's files at the same paths, so <see cref="Parsl.Data.File"/>s are used in
    /// place instead of staged. Default false.</summary>
    public bool SharedFs { get; set; }

    /// <summary>A cached file that another worker already holds is fetched from that worker's transfer server
    /// instead of being sent from here (Parsl's <c>enable_peer_transfers</c>). The worker's transfer server listens on
    /// all interfaces without a password, so this is off by default. Default false.</summary>
    public bool PeerTransfers { get; set; }

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

    /// <summary>The program that runs the task runner on workers. Default null: the <c>dotnet</c> running this
    /// process, else <c>dotnet</c> from the worker's PATH.</summary>
    public string? DotnetCommand { get; set; }

    /// <summary>The folder holding <c>Parsl.Workers.dll</c> and its dependencies. Default null: the application's
    /// directory (reference the <c>Parsl.Workers</c> project or package).</summary>
    public string? RunnerDirectory { get; set; }

    internal override IEnumerable<ConfigurationError> Check()
    {
        foreach (var e in WorkerLinkOptions.CheckStrategy(nameof(TaskVineExecutorOptions), Strategy))
            yield return e;
        if (!Enum.IsDefined(FunctionExecMode))
            yield return new ConfigurationError(nameof(TaskVineExecutorOptions) + "." + nameof(FunctionExecMode),
                $"{(int)FunctionExecMode} is not a TaskVineFunctionMode; use Regular or Serverless");
    }

    internal override IExecutor Build()
    {
        var d = TaskVineOptionsModule.defaults();
        return new TaskVineExecutor(new TaskVineOptions(
            Label, Address, Port,
            WorkerLinkOptions.Optional(PasswordFile),
            WorkerLinkOptions.Provider(Provider),
            WorkerLinkOptions.Strategy(Strategy),
            StrategyPeriod, MaxIdleTime,
            WorkerExecutable, ListModule.OfSeq(WorkerOptions),
            FunctionExecMode == TaskVineFunctionMode.Serverless ? Parsl.Executors.TaskVine.FunctionExecMode.Serverless : Parsl.Executors.TaskVine.FunctionExecMode.Regular,
            InitCommand,
            WorkerLinkOptions.Env(Env),
            SharedFs, PeerTransfers, Autocategory, MaxRetries, KeepalivePeriod, KeepaliveTimeout,
            DotnetCommand ?? d.DotnetCommand, RunnerDirectory ?? d.RunnerDirectory));
    }
}
