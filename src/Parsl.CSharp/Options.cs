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
public sealed class DfkOptions
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

    /// <summary>The log file's minimum level. Default <see cref="Serilog.Events.LogEventLevel.Information"/>
    /// (<c>Debug</c> logs every task transition).</summary>
    public Serilog.Events.LogEventLevel LogLevel { get; set; } = Serilog.Events.LogEventLevel.Information;

    /// <summary>Threads that run join app bodies. Default 10. Async join bodies and workflows hold none while they wait.</summary>
    public int InternalTasksMaxThreads { get; set; } = 10;

    /// <summary>Back-pressure: an app call blocks while this many tasks are unfinished, so submitting millions of
    /// tasks holds memory for at most this many. Calls made from inside a running task never block. Default 0: unbounded.</summary>
    public int MaxTasksInFlight { get; set; }

    /// <summary>Monitoring: the database with Parsl's tables, events, counts, the dashboard and progress.
    /// Default null: off.</summary>
    public MonitoringOptions? Monitoring { get; set; }

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
        if (!Enum.IsDefined(DependencyResolver))
            errors.Add(new ConfigurationError(FieldPrefix + "DependencyResolver", $"{(int)DependencyResolver} is not a DependencyResolution; use Shallow or Deep"));
        var config = ConfigParts.Create(
            executors.ToArray(), Retries, RetryHandler is null ? null : new Func<Exception, TaskInfo, double>(RetryHandler),
            RunDir, (int)ExitMode, DependencyResolver == DependencyResolution.Deep, InitializeLogging, LogLevel,
            InternalTasksMaxThreads, MaxTasksInFlight);
        if (Monitoring is not null) config = Monitoring.Apply(config);
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
        if (type == "MonitoringConfig")
            return new ConfigurationError("MonitoringOptions." + property, reason);
        if (type == "HighThroughputExecutor")
            (property, reason) = HighThroughputExecutorOptions.ToCSharp(property, reason);
        else if (type == "LocalProvider")
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

    /// <summary>After this long the command's whole process group is killed and the task fails with
    /// <see cref="AppTimeout"/>. Default null: no limit.</summary>
    public TimeSpan? Walltime { get; set; }

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

    /// <summary>Appends to the file at <paramref name="path"/>.</summary>
    /// <param name="path">The file.</param>
    public static implicit operator StreamTarget(string path) => Append(path);

    /// <summary>What the target does, in words.</summary>
    public string Description { get; }

    internal StdSpec Spec => spec;

    /// <inheritdoc/>
    public override string ToString() => Description;
}
