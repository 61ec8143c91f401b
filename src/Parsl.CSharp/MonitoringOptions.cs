using System.Diagnostics;
using Parsl.Monitoring;

namespace Parsl;

/// <summary>Monitoring (Parsl's <c>MonitoringHub</c>): a SQLite database with Parsl's seven tables, task-state
/// events and live counts, a span per try and meter counters, the live dashboard and a terminal progress display.
/// Set <see cref="DfkOptions.Monitoring"/> to an instance to turn it on; every default is Parsl's.</summary>
public sealed class MonitoringOptions
{
    /// <summary>The database file. Default null: <c>monitoring.db</c> in <see cref="DfkOptions.RunDir"/>, shared by
    /// every run there (Parsl's <c>runinfo/monitoring.db</c>).</summary>
    public string? Database { get; set; }

    /// <summary>Write the database. Default true; false keeps events, counts and spans only.</summary>
    public bool WriteDatabase { get; set; } = true;

    /// <summary>The workflow's name (Parsl's <c>workflow_name</c>). Default null: the entry assembly's name.</summary>
    public string? WorkflowName { get; set; }

    /// <summary>The workflow's version (Parsl's <c>workflow_version</c>). Default null: the start time.</summary>
    public string? WorkflowVersion { get; set; }

    /// <summary>Sample each try's process tree on HTEx workers. Default true. The thread pool records none.</summary>
    public bool ResourceMonitoringEnabled { get; set; } = true;

    /// <summary>How often tries' processes are sampled. Default 30 seconds; zero: first and last samples only.</summary>
    public TimeSpan ResourceMonitoringInterval { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>How often managers and blocks are polled for the <c>node</c> and <c>block</c> tables. Default 1 second.</summary>
    public TimeSpan ExecutorPollInterval { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>Start the live dashboard (reference the Parsl.Dashboard package) and print its address. Default false.</summary>
    public bool Dashboard { get; set; }

    /// <summary>The dashboard's address. Default <c>127.0.0.1</c>; any other needs <see cref="DashboardToken"/>.</summary>
    public string DashboardAddress { get; set; } = "127.0.0.1";

    /// <summary>The dashboard's port. Default 0: a free port, printed at start.</summary>
    public int DashboardPort { get; set; }

    /// <summary>A secret (16 characters or more) every dashboard request must carry. Default null; required
    /// when <see cref="DashboardAddress"/> is not a loopback address.</summary>
    public string? DashboardToken { get; set; }

    /// <summary>Show counts by state and a rate on standard error while tasks run; silent when it is not a
    /// terminal. Default false.</summary>
    public bool Progress { get; set; }

    internal Config Apply(Config config) =>
        MonitoringParts.With(config, Database!, WriteDatabase, WorkflowName!, WorkflowVersion!, ResourceMonitoringEnabled,
            ResourceMonitoringInterval, ExecutorPollInterval, Dashboard, DashboardAddress, DashboardPort, DashboardToken!, Progress);
}

/// <summary>A task changed state.</summary>
public sealed class TaskStateChange
{
    internal TaskStateChange(TaskStateEvent e)
    {
        TaskId = e.TaskId;
        TryId = e.TryId;
        AppName = e.AppName;
        State = AppFutureExtensions.ToStates(e.State);
        TimestampUtc = e.TimestampUtc;
    }

    /// <summary>The task (Parsl's <c>task_id</c>).</summary>
    public int TaskId { get; }

    /// <summary>The try the state belongs to (Parsl's <c>try_id</c>).</summary>
    public int TryId { get; }

    /// <summary>The app's name.</summary>
    public string AppName { get; }

    /// <summary>The new state.</summary>
    public States State { get; }

    /// <summary>When it changed, in UTC.</summary>
    public DateTime TimestampUtc { get; }

    /// <inheritdoc/>
    public override string ToString() => $"task {TaskId} try {TryId} ({AppName}) -> {State}";
}

/// <summary>A kernel's monitoring, for programs: task-state events (an event and an <see cref="IObservable{T}"/>),
/// live counts of every state, and the names of its <see cref="ActivitySource"/> and <see cref="System.Diagnostics.Metrics.Meter"/>
/// for OpenTelemetry. Events are raised on monitoring's own thread, in order; a slow handler delays the next.</summary>
public sealed class TaskMonitor : IObservable<TaskStateChange>
{
    private readonly MonitoringHandle handle;

    /// <summary>The name of the <see cref="ActivitySource"/> (a span per try) and of the meter
    /// (<c>parsl.tasks.submitted</c>, <c>parsl.tasks.finished</c>, <c>parsl.tries.launched</c>,
    /// <c>parsl.tries.failed</c>, <c>parsl.tasks.live</c>).</summary>
    public const string SourceName = MonitoringLoop.SourceName;

    internal TaskMonitor(MonitoringHandle handle)
    {
        this.handle = handle;
        ((IObservable<TaskStateEvent>)handle).Subscribe(new Forward(this));
    }

    /// <summary>Raised for every state change of every task, in order.</summary>
    public event EventHandler<TaskStateChange>? TaskStateChanged;

    /// <summary>This run's id (Parsl's <c>run_id</c>) in the database.</summary>
    public string RunId => handle.RunId;

    /// <summary>The database file, or null when none is written.</summary>
    public string? DatabasePath => handle.DatabasePath is { } p ? p.Value : null;

    /// <summary>How many tasks are in this state now (for final states: how many ended there).</summary>
    /// <param name="state">The state.</param>
    /// <returns>The count.</returns>
    public int Count(States state) => handle.Count(ToCore(state));

    /// <summary>Every state's count.</summary>
    public IReadOnlyDictionary<States, int> Counts =>
        Enum.GetValues<States>().ToDictionary(s => s, Count);

    /// <summary>Waits until every change so far is handled: events raised, counts updated, rows written.</summary>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <returns>A task that completes then.</returns>
    public Task FlushAsync(CancellationToken cancellationToken = default) =>
        handle.FlushAsync().WaitAsync(cancellationToken);

    /// <inheritdoc/>
    public IDisposable Subscribe(IObserver<TaskStateChange> observer)
    {
        ArgumentNullException.ThrowIfNull(observer);
        return ((IObservable<TaskStateEvent>)handle).Subscribe(new Convert(observer));
    }

    private static TaskState ToCore(States s) =>
        TaskStateModule.all.First(t => TaskStateModule.value(t) == (int)s);

    private sealed class Forward(TaskMonitor owner) : IObserver<TaskStateEvent>
    {
        public void OnCompleted() { }
        public void OnError(Exception error) { }
        public void OnNext(TaskStateEvent value)
        {
            if (owner.TaskStateChanged is { } h) h(owner, new TaskStateChange(value));
        }
    }

    private sealed class Convert(IObserver<TaskStateChange> inner) : IObserver<TaskStateEvent>
    {
        public void OnCompleted() => inner.OnCompleted();
        public void OnError(Exception error) => inner.OnError(error);
        public void OnNext(TaskStateEvent value) => inner.OnNext(new TaskStateChange(value));
    }
}
