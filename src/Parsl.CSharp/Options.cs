using Parsl.Executors;

namespace Parsl;

/// <summary>What <see cref="Dfk.DisposeAsync"/> (and <see cref="Dfk.CleanupAsync(CancellationToken)"/>) does
/// with tasks that are not finished (Parsl's <c>exit_mode</c>).</summary>
public enum KernelExitMode
{
    /// <summary>Stop accepting tasks, let running tries finish, fail what is left with <see cref="KernelShutdownError"/> (the default).</summary>
    Cleanup = 0,
    /// <summary>Wait for every task to finish, then clean up.</summary>
    Wait = 1,
    /// <summary>Stop at once: running tries are told to stop, and unfinished futures fail with <see cref="KernelShutdownError"/>.</summary>
    Skip = 2,
}

/// <summary>Where futures are looked for in an app's arguments (Parsl's <c>dependency_resolver</c>).</summary>
public enum DependencyResolution
{
    /// <summary>Only futures passed directly as arguments (the default, as in Parsl).</summary>
    Shallow = 0,
    /// <summary>Also futures inside arrays, lists, sets, dictionaries and tuples, at any depth.</summary>
    Deep = 1,
}

/// <summary>The kernel's options (Parsl's <c>Config</c>), read once by <see cref="Dfk.LoadAsync(DfkOptions, CancellationToken)"/>, which validates
/// them and raises <see cref="ConfigurationError"/> naming the property at fault. Changing them afterwards has no effect.</summary>
public sealed partial class DfkOptions
{
    /// <summary>The executors. Default: empty, which means one <see cref="ThreadPoolExecutorOptions"/> labelled
    /// <c>threads</c> with 2 threads. Labels must be unique.</summary>
    public IList<ExecutorOptions> Executors { get; } = new List<ExecutorOptions>();

    /// <summary>The retry budget: a task is tried again while its accumulated failure cost is at most this. Default 0.</summary>
    public int Retries { get; set; }

    /// <summary>Returns the cost of a failure; default null, a cost of 1 per failure. If it throws, the task fails
    /// with the handler's exception.</summary>
    public Func<Exception, TaskInfo, double>? RetryHandler { get; set; }

    /// <summary>The base run directory; each kernel gets a numbered one inside it (<c>runinfo/000</c>, ...). Default <c>runinfo</c>.</summary>
    public string RunDir { get; set; } = "runinfo";

    /// <summary>What disposal does with unfinished tasks. Default <see cref="KernelExitMode.Cleanup"/>.</summary>
    public KernelExitMode ExitMode { get; set; } = KernelExitMode.Cleanup;

    /// <summary>Where futures are looked for in arguments. Default <see cref="DependencyResolution.Shallow"/>.</summary>
    public DependencyResolution DependencyResolver { get; set; } = DependencyResolution.Shallow;

    /// <summary>Write <c>parsl.log</c> in the run directory. Default true.</summary>
    public bool InitializeLogging { get; set; } = true;

    /// <summary>The minimum level of what is logged, to <c>parsl.log</c> and to <see cref="LoggerFactory"/>. Default
    /// <see cref="Microsoft.Extensions.Logging.LogLevel.Information"/> (<c>Debug</c> logs every task transition;
    /// <c>None</c> logs nothing).</summary>
    public Microsoft.Extensions.Logging.LogLevel LogLevel { get; set; } = Microsoft.Extensions.Logging.LogLevel.Information;

    /// <summary>Where the kernel's log events also go, as <c>Microsoft.Extensions.Logging</c> loggers of category
    /// <c>Parsl</c>, with their structured properties. Default null: only <c>parsl.log</c> in the run directory
    /// (<see cref="InitializeLogging"/>). The factory stays the caller's: disposal of the kernel does not dispose it.</summary>
    public Microsoft.Extensions.Logging.ILoggerFactory? LoggerFactory { get; set; }

    /// <summary>Memoize the calls of apps made with <see cref="FunctionAppOptions.Cache"/> (Parsl's <c>app_cache</c>).
    /// Default true.</summary>
    public bool AppCache { get; set; } = true;

    /// <summary>When results of cached apps are written to <c>runinfo/NNN/checkpoint/tasks.ckpt</c> (Parsl's
    /// <c>checkpoint_mode</c>). Default <see cref="CheckpointPolicy.None"/>: no checkpoints.</summary>
    public CheckpointPolicy CheckpointMode { get; set; } = CheckpointPolicy.None;

    /// <summary>How often <see cref="CheckpointPolicy.Periodic"/> checkpoints are written (Parsl's
    /// <c>checkpoint_period</c>); required by it. Default null.</summary>
    public TimeSpan? CheckpointPeriod { get; set; }

    /// <summary>Checkpoints to load (checkpoint directories <c>runinfo/NNN/checkpoint</c> or files): their results are
    /// reused and those calls do not run. Default null: with a <see cref="CheckpointMode"/>, every checkpoint under
    /// <see cref="RunDir"/> (as current Parsl); otherwise none. <see cref="Checkpoints.Last(string)"/> gives the newest run's.</summary>
    public IList<string>? CheckpointFiles { get; set; }

    /// <summary>Memo encodings for argument types of your own (Parsl's <c>id_for_memo.register</c>): the bytes a value
    /// contributes to its call's memo key. Without one, an argument of a type the encoder does not know fails its task
    /// with <c>MemoizationError</c>. Default empty. See <see cref="AddMemoHasher{T}(Func{T, byte[]})"/>.</summary>
    public IDictionary<Type, Func<object, byte[]>> MemoHashers { get; } = new Dictionary<Type, Func<object, byte[]>>();

    /// <summary>Registers a memo encoding for <typeparamref name="T"/>: equal values must give equal bytes.</summary>
    /// <typeparam name="T">The argument type.</typeparam>
    /// <param name="hasher">The value's bytes for the memo key.</param>
    /// <returns>These options.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="hasher"/> is null.</exception>
    public DfkOptions AddMemoHasher<T>(Func<T, byte[]> hasher)
    {
        ArgumentNullException.ThrowIfNull(hasher);
        MemoHashers[typeof(T)] = v => hasher((T)v);
        return this;
    }

    /// <summary>Staging providers, tried in order for each file (Parsl's <c>storage_access</c>). Default empty: Parsl's
    /// list (local files as they are; FTP, HTTP and zip as separate tasks).</summary>
    public IList<StagingProviderOptions> Staging { get; } = new List<StagingProviderOptions>();

    /// <summary>Where staged-in files are written (Parsl's executor <c>working_dir</c>). Default null: <c>data/</c> in the
    /// run directory.</summary>
    public string? StagingDir { get; set; }

    /// <summary>Threads that run join app bodies. Default 10. Async join bodies and workflows hold none while they wait.</summary>
    public int InternalTasksMaxThreads { get; set; } = 10;

    /// <summary>Back-pressure: an app call blocks while this many tasks are unfinished, so submitting millions of
    /// tasks holds memory for at most this many. Calls made from inside a running task never block. Default 0: unbounded.</summary>
    public int MaxTasksInFlight { get; set; }

    /// <summary>SIGTERM and SIGINT (Ctrl-C) of this process stop the kernel first, as a dispose with
    /// <see cref="KernelExitMode.Skip"/> would (managers, workers and running shell apps are stopped, unfinished
    /// futures fail with <see cref="KernelShutdownError"/>), and then the process ends as the signal intends.
    /// Default true. False leaves the signals alone: the process then ends at once, and managers on other hosts run on
    /// until their heartbeat threshold.</summary>
    public bool HandleSignals { get; set; } = true;

    internal const string FieldPrefix = "DfkOptions.";

    /// <summary>The core's configuration, or every problem found, each naming its C# property.</summary>
    internal Config ToConfig()
    {
        var errors = new List<ConfigurationError>();
        var executors = new List<IExecutor>();
        var owners = new Dictionary<IExecutor, ExecutorOptions>();
        foreach (var e in Executors)
        {
            if (e is null)
            {
                errors.Add(new ConfigurationError(FieldPrefix + "Executors", "contains a null executor; remove it"));
                continue;
            }
            foreach (var problem in e.Check()) errors.Add(problem);
            var built = e.Build();
            executors.Add(built);
            owners[built] = e;
        }
        if (!Enum.IsDefined(ExitMode))
            errors.Add(new ConfigurationError(FieldPrefix + "ExitMode", $"{(int)ExitMode} is not a KernelExitMode; use Cleanup, Wait or Skip"));
        if (!Enum.IsDefined(CheckpointMode))
            errors.Add(new ConfigurationError(FieldPrefix + "CheckpointMode", $"{(int)CheckpointMode} is not a CheckpointPolicy; use None, TaskExit, Periodic, DfkExit or Manual"));
        if (!Enum.IsDefined(LogLevel))
            errors.Add(new ConfigurationError(FieldPrefix + "LogLevel", $"{(int)LogLevel} is not a LogLevel; use Trace, Debug, Information, Warning, Error, Critical or None"));
        var staging = new List<Parsl.Data.StagingProvider>();
        foreach (var st in Staging)
        {
            if (st is null) errors.Add(new ConfigurationError(FieldPrefix + "Staging", "contains a null provider; remove it"));
            else if (st.Check() is { } problem) errors.Add(problem);
            else staging.Add(st.Build());
        }
        foreach (var kv in MemoHashers)
            if (kv.Value is null)
                errors.Add(new ConfigurationError(FieldPrefix + "MemoHashers", $"the hasher for {kv.Key} is null; give a function from the value to its bytes"));
        if (!Enum.IsDefined(DependencyResolver))
            errors.Add(new ConfigurationError(FieldPrefix + "DependencyResolver", $"{(int)DependencyResolver} is not a DependencyResolution; use Shallow or Deep"));
        var config = ConfigParts.Create(
            executors.ToArray(), Retries, RetryHandler is null ? null : new Func<Exception, TaskInfo, double>(RetryHandler),
            RunDir, (int)ExitMode, DependencyResolver == DependencyResolution.Deep,
            InitializeLogging && LogLevel != Microsoft.Extensions.Logging.LogLevel.None, Logging.ToSerilog(LogLevel),
            InternalTasksMaxThreads, MaxTasksInFlight);
        config = ConfigParts.Extend(config, AppCache, (int)CheckpointMode, CheckpointPeriod, CheckpointFiles?.ToArray(),
            MemoHashers.ToArray(), staging.ToArray(), StagingDir,
            LoggerFactory is null || LogLevel == Microsoft.Extensions.Logging.LogLevel.None ? [] : [new Logging.LoggerFactorySink(LoggerFactory)]);
        config = ConfigParts.WithHandleSignals(config, HandleSignals);
        foreach (var e in ConfigModule.validate(config))
            errors.Add(Rename(e));
        if (errors.Count == 1) throw errors[0];
        if (errors.Count > 1)
            throw new ConfigurationError(errors[0].Field,
                $"{Reason(errors[0])} (and: {string.Join("; ", errors.Skip(1).Select(e => e.Message))})");
        return config;
    }

    private static string Reason(ConfigurationError e) => e.Message.Substring(e.Field.Length + 2);

    /// <summary>The core names fields after its own types (<c>Config.Retries</c>,
    /// <c>ThreadPoolExecutor.MaxThreads</c>); a C# user knows <c>DfkOptions.Retries</c> and
    /// <c>ThreadPoolExecutorOptions.MaxThreads</c>.</summary>
    private static ConfigurationError Rename(ConfigurationError e)
    {
        var field = e.Field;
        var dot = field.IndexOf('.');
        if (dot < 0) return e;
        var type = field[..dot];
        var property = field[(dot + 1)..];
        var reason = Reason(e);
        if (type == "HighThroughputExecutor")
            (property, reason) = HighThroughputExecutorOptions.ToCSharp(property, reason);
        else if (type.EndsWith("Provider", StringComparison.Ordinal) || type == "Config")
            reason = HighThroughputExecutorOptions.CSharpWords(reason);
        string renamed = type == "Config" ? FieldPrefix + property : type + "Options." + property;
        return renamed == field && reason == Reason(e) ? e : new ConfigurationError(renamed, reason);
    }
}

/// <summary>The options of one executor. Each kind of executor has its own options class
/// (<see cref="ThreadPoolExecutorOptions"/>, ...); add them to <see cref="DfkOptions.Executors"/>.</summary>
public abstract class ExecutorOptions
{
    private protected ExecutorOptions(string label) => Label = label;

    /// <summary>The executor's label, unique within the kernel; apps may name it in
    /// <see cref="FunctionAppOptions.Executors"/>.</summary>
    public string Label { get; set; }

    /// <summary>The core's executor for these options. Its validation errors name the core type
    /// (<c>ThreadPoolExecutor.MaxThreads</c>), which <see cref="DfkOptions"/> renames to the options class.</summary>
    internal abstract IExecutor Build();

    /// <summary>Problems the core cannot see, such as an undefined enum value; none by default.</summary>
    internal virtual IEnumerable<ConfigurationError> Check() => [];
}

/// <summary>Runs tasks on threads of this process (Parsl's <c>ThreadPoolExecutor</c>). A task may call apps and
/// wait on their futures without deadlock. Accepts no resource specification.</summary>
public sealed class ThreadPoolExecutorOptions : ExecutorOptions
{
    /// <summary>Options with the defaults: label <c>threads</c>, 2 threads.</summary>
    public ThreadPoolExecutorOptions() : base("threads") { }

    /// <summary>The most tasks running at once (Parsl's <c>max_threads</c>). Default 2; must be at least 1.</summary>
    public int MaxThreads { get; set; } = 2;

    internal override IExecutor Build() => new ThreadPoolExecutor(Label, MaxThreads);
}

/// <summary>Options of a function or join app (Parsl's decorator parameters). All optional.</summary>
public class FunctionAppOptions
{
    /// <summary>The app's name in task records and logs. Default: the method's name, or <c>app</c> for a lambda.</summary>
    public string? Name { get; set; }

    /// <summary>After this long the try fails with <see cref="AppTimeout"/> (Parsl's <c>walltime</c>). Function apps:
    /// the body's <see cref="System.Threading.CancellationToken"/> is cancelled; on the HighThroughputExecutor the
    /// worker running it is killed and restarted, so the work really stops; on the ThreadPoolExecutor a thread cannot
    /// be stopped, so a body that ignores its token runs on in the background and its result is dropped. Shell apps:
    /// the command's whole process group is killed. Ignored by join apps. Default null: no limit.</summary>
    public TimeSpan? Walltime { get; set; }

    /// <summary>Labels of the executors the app may run on; empty (the default) means any. Ignored by join apps,
    /// whose bodies run on the kernel's internal threads.</summary>
    public IList<string> Executors { get; } = new List<string>();

    /// <summary>Parsl's <c>parsl_resource_specification</c>, checked by the executor
    /// (<see cref="InvalidResourceSpecification"/> for keys it does not know). Default empty.</summary>
    public IDictionary<string, object> Resources { get; } = new Dictionary<string, object>();

    /// <summary>Memoize calls (Parsl's <c>cache</c>): a call with the same arguments as one that completed returns
    /// that result without running (state <c>memo_done</c>), and with a checkpoint mode it is reused by later runs.
    /// Default false.</summary>
    public bool Cache { get; set; }

    /// <summary>Parameters left out of the memo key, by name or 0-based position (Parsl's <c>ignore_for_cache</c>).
    /// Default empty.</summary>
    public IList<string> IgnoreForCache { get; } = new List<string>();
}

/// <summary>Options of a shell app (Parsl's <c>bash_app</c> parameters). All optional.</summary>
public sealed class ShellAppOptions : FunctionAppOptions
{
    /// <summary>Where stdout goes. Default null: inherited from this process. A string converts to
    /// <see cref="StreamTarget.Append(string)"/>.</summary>
    public StreamTarget? Stdout { get; set; }

    /// <summary>Where stderr goes. Default null: inherited from this process.</summary>
    public StreamTarget? Stderr { get; set; }

    /// <summary>Files the command must create; if one is missing afterwards the task fails with
    /// <see cref="MissingOutputs"/>. Default empty.</summary>
    public IList<string> Outputs { get; } = new List<string>();
}

/// <summary>Where a shell app's stdout or stderr goes.</summary>
public sealed class StreamTarget
{
    private readonly StdSpec spec;

    private StreamTarget(StdSpec spec, string description)
    {
        this.spec = spec;
        Description = description;
    }

    /// <summary>Append to this file (Parsl's plain path).</summary>
    /// <param name="path">The file.</param>
    /// <returns>The target.</returns>
    /// <exception cref="ArgumentException"><paramref name="path"/> is null or blank.</exception>
    public static StreamTarget Append(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        return new(StdSpec.NewPath(path), $"append to {path}");
    }

    /// <summary>Truncate this file first (Parsl's <c>(path, 'w')</c>).</summary>
    /// <param name="path">The file.</param>
    /// <returns>The target.</returns>
    /// <exception cref="ArgumentException"><paramref name="path"/> is null or blank.</exception>
    public static StreamTarget Truncate(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        return new(StdSpec.NewPathMode(path, "w"), $"truncate {path}");
    }

    /// <summary>A file named after the task in the run directory (Parsl's <c>AUTO_LOGNAME</c>):
    /// <c>task_logs/NNNN/task_NNNN_&lt;app&gt;.stdout</c> or <c>.stderr</c>.</summary>
    public static StreamTarget Auto { get; } = new(StdSpec.Auto, "automatic file name");

    /// <summary>A <c>Parsl.Data.File</c>, truncated first and staged out like an output (a <c>zip:</c> member, ...):
    /// the call's future gets its <see cref="DataFuture"/> in <c>Stdout</c> or <c>Stderr</c>, to pass on with
    /// <see cref="Arg.Data(DataFuture)"/>. For a local file, the app writes straight to it.</summary>
    /// <param name="file">The file.</param>
    /// <returns>The target.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="file"/> is null.</exception>
    public static StreamTarget File(Parsl.Data.File file)
    {
        ArgumentNullException.ThrowIfNull(file);
        return new(StdSpec.NewStaged(file), $"staged file {file.Url}");
    }

    /// <summary>Appends to the file at <paramref name="path"/>.</summary>
    /// <param name="path">The file.</param>
    public static implicit operator StreamTarget(string path) => Append(path);

    /// <summary>What the target does, in words.</summary>
    public string Description { get; }

    internal StdSpec Spec => spec;

    /// <inheritdoc/>
    public override string ToString() => Description;
}
