namespace Parsl;

/// <summary>When the results of cached apps are checkpointed (Parsl's <c>checkpoint_mode</c>). Only successful
/// results are written; a later run that loads the checkpoint reuses them instead of running those calls.</summary>
public enum CheckpointPolicy
{
    /// <summary>No checkpoints (the default).</summary>
    None = 0,
    /// <summary>Each cached task's result as soon as the task completes (Parsl's <c>task_exit</c>).</summary>
    TaskExit = 1,
    /// <summary>The results gathered so far, every <see cref="DfkOptions.CheckpointPeriod"/> (Parsl's <c>periodic</c>).</summary>
    Periodic = 2,
    /// <summary>When the kernel is cleaned up (Parsl's <c>dfk_exit</c>).</summary>
    DfkExit = 3,
    /// <summary>When the program calls <see cref="Dfk.CheckpointAsync(CancellationToken)"/>, and at cleanup (Parsl's <c>manual</c>).</summary>
    Manual = 4,
}

/// <summary>Finds checkpoints of earlier runs, for <see cref="DfkOptions.CheckpointFiles"/> (Parsl's
/// <c>get_all_checkpoints</c> and <c>get_last_checkpoint</c>).</summary>
public static class Checkpoints
{
    /// <summary>The checkpoint directory of every run under <paramref name="runDir"/> that has one, oldest first
    /// (run directories are ordered by number, past 999).</summary>
    /// <param name="runDir">The base run directory, as <see cref="DfkOptions.RunDir"/>.</param>
    /// <returns>The checkpoint directories; empty when there are none.</returns>
    /// <exception cref="ArgumentException"><paramref name="runDir"/> is null or blank.</exception>
    public static IReadOnlyList<string> All(string runDir = "runinfo")
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(runDir);
        return Parsl.Runtime.Checkpoints.all(runDir).ToArray();
    }

    /// <summary>The checkpoint directory of the newest run under <paramref name="runDir"/> that has one ("the last
    /// one").</summary>
    /// <param name="runDir">The base run directory, as <see cref="DfkOptions.RunDir"/>.</param>
    /// <returns>One directory, or none.</returns>
    /// <exception cref="ArgumentException"><paramref name="runDir"/> is null or blank.</exception>
    public static IReadOnlyList<string> Last(string runDir = "runinfo")
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(runDir);
        return Parsl.Runtime.Checkpoints.last(runDir).ToArray();
    }
}
