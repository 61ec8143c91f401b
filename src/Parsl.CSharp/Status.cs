using Parsl.Executors;
using Parsl.Executors.HighThroughput;
using Parsl.Providers;

namespace Parsl;

/// <summary>A block's state, with Parsl's names (<c>parsl.jobs.states.JobState</c>).</summary>
public enum BlockState
{
    /// <summary>The provider cannot tell.</summary>
    Unknown = 0,
    /// <summary>Queued.</summary>
    Pending = 1,
    /// <summary>Running.</summary>
    Running = 2,
    /// <summary>Cancelled (final).</summary>
    Cancelled = 3,
    /// <summary>Finished (final).</summary>
    Completed = 4,
    /// <summary>Failed (final): see <see cref="BlockStatus.ExitCode"/> and the output.</summary>
    Failed = 5,
    /// <summary>Hit its walltime (final).</summary>
    Timeout = 6,
    /// <summary>Held by the scheduler.</summary>
    Held = 7,
    /// <summary>The scheduler no longer knows the job (final).</summary>
    Missing = 8,
    /// <summary>Submission failed (final).</summary>
    ScalingFailed = 9,
}

/// <summary>A manager (one per node of a block) connected to a HighThroughputExecutor's interchange (a row of
/// Parsl's <c>connected_managers()</c>).</summary>
/// <param name="Executor">The executor's label.</param>
/// <param name="ManagerId">The manager's id.</param>
/// <param name="BlockId">Its block.</param>
/// <param name="Hostname">Its host.</param>
/// <param name="Pid">Its process id on that host.</param>
/// <param name="WorkerCount">Its worker processes.</param>
/// <param name="TasksInFlight">Tries sent to it and not yet returned.</param>
/// <param name="IdleFor">How long it has had no task (zero while it has some).</param>
/// <param name="Active">False once its block is being scaled in.</param>
/// <param name="Draining">Taking no new tasks (<see cref="HighThroughputExecutorOptions.DrainPeriod"/>).</param>
/// <param name="Local">Connected over the local socket (same host), not TCP.</param>
public sealed record ManagerStatus(string Executor, string ManagerId, string BlockId, string Hostname, int Pid, int WorkerCount,
    int TasksInFlight, TimeSpan IdleFor, bool Active, bool Draining, bool Local);

/// <summary>A block an executor started, with its status (a row of Parsl's <c>executor.status()</c>).</summary>
/// <param name="Executor">The executor's label.</param>
/// <param name="BlockId">The block's id.</param>
/// <param name="JobId">The provider's job id; null when submission failed.</param>
/// <param name="State">The block's state.</param>
/// <param name="ExitCode">The job's exit code, when known.</param>
/// <param name="Message">The provider's explanation, if any.</param>
/// <param name="Stdout">The head and tail of the job's stdout, for failed blocks.</param>
/// <param name="Stderr">The head and tail of the job's stderr, for failed blocks.</param>
/// <param name="ScaledIn">The strategy scaled it in (Parsl's <c>SCALED_IN</c>).</param>
public sealed record BlockStatus(string Executor, string BlockId, string? JobId, BlockState State, int? ExitCode, string? Message,
    string? Stdout, string? Stderr, bool ScaledIn);

public sealed partial class Dfk
{
    /// <summary>Writes a checkpoint of the cached results not yet checkpointed (Parsl's <c>dfk.checkpoint()</c>), for
    /// any <see cref="DfkOptions.CheckpointMode"/>.</summary>
    /// <param name="cancellationToken">Stops waiting (the checkpoint goes on).</param>
    /// <returns>How many results were written.</returns>
    public Task<int> CheckpointAsync(CancellationToken cancellationToken = default) =>
        kernel.CheckpointAsync().WaitAsync(cancellationToken);

    /// <summary>This run's checkpoint file (<c>runinfo/NNN/checkpoint/tasks.ckpt</c>), whether written yet or not.</summary>
    public string CheckpointFile => kernel.CheckpointFile;

    private IEnumerable<(string Label, HighThroughputExecutor Htex)> Htexes(string? executor)
    {
        if (executor is not null)
        {
            if (!kernel.ExecutorLabels.Contains(executor))
                throw new ArgumentException($"No executor is labelled '{executor}'; configured: {string.Join(", ", kernel.ExecutorLabels)}", nameof(executor));
            if (kernel.Executor(executor) is not HighThroughputExecutor h)
                throw new ArgumentException($"The executor '{executor}' has no blocks: only a HighThroughputExecutor does", nameof(executor));
            yield return (executor, h);
            yield break;
        }
        foreach (var label in kernel.ExecutorLabels)
            if (kernel.Executor(label) is HighThroughputExecutor h)
                yield return (label, h);
    }

    /// <summary>The managers connected to the HighThroughputExecutors (Parsl's <c>connected_managers()</c>).</summary>
    /// <param name="executor">One executor's label; null for every HighThroughputExecutor.</param>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <returns>One row per manager.</returns>
    /// <exception cref="ArgumentException"><paramref name="executor"/> is not a HighThroughputExecutor's label.</exception>
    public async Task<IReadOnlyList<ManagerStatus>> ConnectedManagersAsync(string? executor = null, CancellationToken cancellationToken = default)
    {
        var rows = new List<ManagerStatus>();
        foreach (var (label, htex) in Htexes(executor).ToList())
            foreach (var m in await htex.ConnectedManagersAsync().WaitAsync(cancellationToken).ConfigureAwait(false))
                rows.Add(new(label, m.ManagerId, m.BlockId, m.Hostname, m.Pid, m.WorkerCount, m.TasksInFlight, m.IdleFor, m.Active, m.Draining, m.Local));
        return rows;
    }

    /// <summary>The ids of blocks whose managers have connected (Parsl's <c>connected_blocks()</c>).</summary>
    /// <param name="executor">One executor's label; null for every HighThroughputExecutor.</param>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <returns>The block ids.</returns>
    /// <exception cref="ArgumentException"><paramref name="executor"/> is not a HighThroughputExecutor's label.</exception>
    public async Task<IReadOnlyList<string>> ConnectedBlocksAsync(string? executor = null, CancellationToken cancellationToken = default)
    {
        var rows = new List<string>();
        foreach (var (_, htex) in Htexes(executor).ToList())
            rows.AddRange(await htex.ConnectedBlocksAsync().WaitAsync(cancellationToken).ConfigureAwait(false));
        return rows;
    }

    /// <summary>Every block the HighThroughputExecutors started, with its status (Parsl's <c>executor.status()</c>).</summary>
    /// <param name="executor">One executor's label; null for every HighThroughputExecutor.</param>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <returns>One row per block.</returns>
    /// <exception cref="ArgumentException"><paramref name="executor"/> is not a HighThroughputExecutor's label.</exception>
    public async Task<IReadOnlyList<BlockStatus>> BlocksAsync(string? executor = null, CancellationToken cancellationToken = default)
    {
        var rows = new List<BlockStatus>();
        foreach (var (label, htex) in Htexes(executor).ToList())
            foreach (var b in await htex.BlocksAsync().WaitAsync(cancellationToken).ConfigureAwait(false))
                rows.Add(new(label, b.BlockId, b.JobId?.Value, ToBlockState(b.Status.State),
                    b.Status.ExitCode is { } code ? code.Value : null, b.Status.Message?.Value, b.Status.Stdout?.Value,
                    b.Status.Stderr?.Value, b.ScaledIn));
        return rows;
    }

    private static BlockState ToBlockState(JobState s) => s.Tag switch
    {
        JobState.Tags.Pending => BlockState.Pending,
        JobState.Tags.Running => BlockState.Running,
        JobState.Tags.Cancelled => BlockState.Cancelled,
        JobState.Tags.Completed => BlockState.Completed,
        JobState.Tags.Failed => BlockState.Failed,
        JobState.Tags.Timeout => BlockState.Timeout,
        JobState.Tags.Held => BlockState.Held,
        JobState.Tags.Missing => BlockState.Missing,
        JobState.Tags.ScalingFailed => BlockState.ScalingFailed,
        _ => BlockState.Unknown,
    };
}
