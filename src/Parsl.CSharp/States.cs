namespace Parsl;

/// <summary>A task's state, with Parsl's names and numeric values (<c>parsl.dataflow.states.States</c>).</summary>
public enum States
{
    /// <summary>Known, waiting for its dependencies; also re-entered before a retry.</summary>
    Pending = 0,
    /// <summary>Monitoring only: the worker reported that the task started.</summary>
    Running = 2,
    /// <summary>Success (final).</summary>
    ExecDone = 3,
    /// <summary>Failed with no retries left, or cancelled (final).</summary>
    Failed = 4,
    /// <summary>A dependency failed, so the task never launched (final).</summary>
    DepFail = 5,
    /// <summary>Handed to an executor.</summary>
    Launched = 7,
    /// <summary>A try failed and a retry will follow.</summary>
    FailRetryable = 8,
    /// <summary>Satisfied from the memo table or a checkpoint (final).</summary>
    MemoDone = 9,
    /// <summary>A join app's body returned; waiting for the futures it returned.</summary>
    Joining = 10,
    /// <summary>Monitoring only: the worker reported that the task's body ended.</summary>
    RunningEnded = 11,
}

/// <summary>C# members of <see cref="AppFuture"/>.</summary>
public static class AppFutureExtensions
{
    /// <summary>The task's state as a C# enum (Parsl's <c>task_status()</c>).</summary>
    /// <param name="future">The future.</param>
    extension(AppFuture future)
    {
        /// <summary>The task's current state.</summary>
        public States Status => (States)TaskStateModule.value(future.State);
    }

    internal static States ToStates(TaskState state) => (States)TaskStateModule.value(state);
}
