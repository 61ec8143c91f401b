namespace Parsl

open System

/// A Work Queue task ended without a result (Parsl's `WorkQueueTaskFailure`): the worker's result code says why.
/// Each code has a subtype below, so a program can catch the case it cares about.
type WorkQueueTaskFailure(resultCode: int, reason: string) =
    inherit ParslException(sprintf "Work Queue task failed (result code %d): %s" resultCode reason)
    /// Work Queue's `WORK_QUEUE_RESULT_*` code.
    member _.ResultCode = resultCode
    /// What happened, in words.
    member _.Reason = reason

/// An input file of the task was missing on the worker (result code 1).
type WorkQueueInputMissing(reason: string) =
    inherit WorkQueueTaskFailure(1, reason)

/// The task ran but did not write a declared output file (result code 2).
type WorkQueueOutputMissing(reason: string) =
    inherit WorkQueueTaskFailure(2, reason)

/// The task was killed by a signal (result code 8).
type WorkQueueSignal(reason: string) =
    inherit WorkQueueTaskFailure(8, reason)

/// The task used more than its declared `disk` or `memory` (result code 16).
type WorkQueueResourceExhaustion(reason: string) =
    inherit WorkQueueTaskFailure(16, reason)

/// The task ran longer than its `running_time_min` (or a shell app's walltime): result codes 24 and 56.
type WorkQueueMaxRunTime(resultCode: int, reason: string) =
    inherit WorkQueueTaskFailure(resultCode, reason)
