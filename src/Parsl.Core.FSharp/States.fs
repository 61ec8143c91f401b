namespace Parsl

/// A task's state, with Parsl's names and numeric values (`parsl/dataflow/states.py`).
type TaskState =
    /// Known, waiting for its dependencies; also re-entered before a retry.
    | Pending
    /// Monitoring only: the worker reported that the task started.
    | Running
    /// Success (final).
    | ExecDone
    /// Failed with no retries left, or cancelled (final).
    | Failed
    /// A dependency failed, so the task never launched (final).
    | DepFail
    /// Handed to an executor.
    | Launched
    /// A try failed and a retry will follow.
    | FailRetryable
    /// Satisfied from the memo table or a checkpoint (final).
    | MemoDone
    /// A join app's body returned; waiting for the futures it returned.
    | Joining
    /// Monitoring only: the worker reported that the task's body ended.
    | RunningEnded

/// Functions over task states, and the transition table.
[<RequireQualifiedAccess>]
module TaskState =
    /// Parsl's integer value of a state (values 1 and 6 are unused, as in Parsl).
    let value s =
        match s with
        | Pending -> 0
        | Running -> 2
        | ExecDone -> 3
        | Failed -> 4
        | DepFail -> 5
        | Launched -> 7
        | FailRetryable -> 8
        | MemoDone -> 9
        | Joining -> 10
        | RunningEnded -> 11

    /// Parsl's name of a state (`exec_done`, `dep_fail`, ...).
    let name s =
        match s with
        | Pending -> "pending"
        | Running -> "running"
        | ExecDone -> "exec_done"
        | Failed -> "failed"
        | DepFail -> "dep_fail"
        | Launched -> "launched"
        | FailRetryable -> "fail_retryable"
        | MemoDone -> "memo_done"
        | Joining -> "joining"
        | RunningEnded -> "running_ended"

    /// Every state.
    let all =
        [ Pending; Running; ExecDone; Failed; DepFail; Launched; FailRetryable; MemoDone; Joining; RunningEnded ]

    /// Final states: once reached, a task never changes again.
    let isFinal s =
        match s with
        | ExecDone | Failed | DepFail | MemoDone -> true
        | _ -> false

    /// Final failure states.
    let isFailure s =
        match s with
        | Failed | DepFail -> true
        | _ -> false

    /// The transition table. `Running`/`RunningEnded` are reported by workers for monitoring only and
    /// never change the kernel's own state; they are listed so that monitoring records can be checked.
    ///
    ///   from \ to        | allowed
    ///   -----------------+-------------------------------------------------------------
    ///   pending          | launched, memo_done, dep_fail, failed (cancel)
    ///   launched         | running, exec_done, failed, dep_fail, fail_retryable, joining, memo_done
    ///   running          | running_ended, exec_done, failed, dep_fail, fail_retryable, joining
    ///   running_ended    | exec_done, failed, dep_fail, fail_retryable, joining
    ///
    /// A launched try may end `dep_fail`: a body that raises `DependencyError` (it waited on a failed future
    /// itself) is never retried, as in Parsl.
    ///   fail_retryable   | pending
    ///   joining          | exec_done, failed
    ///   final states     | (none)
    let canTransition (from: TaskState) (into: TaskState) =
        match from, into with
        | Pending, (Launched | MemoDone | DepFail | Failed) -> true
        | Launched, (Running | ExecDone | Failed | DepFail | FailRetryable | Joining | MemoDone) -> true
        | Running, (RunningEnded | ExecDone | Failed | DepFail | FailRetryable | Joining) -> true
        | RunningEnded, (ExecDone | Failed | DepFail | FailRetryable | Joining) -> true
        | FailRetryable, Pending -> true
        | Joining, (ExecDone | Failed) -> true
        | _ -> false

/// An impossible transition, as a value (never a crash).
type InvalidTransition =
    { Task: TaskId
      From: TaskState
      To: TaskState }

/// Functions over transitions.
[<RequireQualifiedAccess>]
module Transition =
    /// Checks a transition against the table.
    let check task from into : Result<TaskState, InvalidTransition> =
        if TaskState.canTransition from into then Ok into
        else Error { Task = task; From = from; To = into }
