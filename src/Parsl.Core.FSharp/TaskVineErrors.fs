namespace Parsl

// Parallel to the Work Queue failures on purpose: Parsl has one exception family per executor, each caught apart.

/// A TaskVine task ended without a result (Parsl's `TaskVineTaskFailure`): the worker's `VINE_RESULT_*` code says
/// why. Each code has a subtype below, so a program can catch the case it cares about.
type TaskVineTaskFailure(resultCode: int, reason: string) =
    inherit ParslException(sprintf "TaskVine task failed (result code %d): %s" resultCode reason)
    /// TaskVine's `VINE_RESULT_*` code.
    member _.ResultCode = resultCode
    /// What happened, in words.
    member _.Reason = reason

/// An input file of the task was missing on the worker (`VINE_RESULT_INPUT_MISSING`, 1).
type TaskVineInputMissing(reason: string) =
    inherit TaskVineTaskFailure(1, reason)

/// The task ran but did not write a declared output file (`VINE_RESULT_OUTPUT_MISSING`, 2).
type TaskVineOutputMissing(reason: string) =
    inherit TaskVineTaskFailure(2, reason)

/// The task's stdout was truncated (`VINE_RESULT_STDOUT_MISSING`, 4).
type TaskVineStdoutMissing(reason: string) =
    inherit TaskVineTaskFailure(4, reason)

/// The task was killed by a signal (`VINE_RESULT_SIGNAL`, 8).
type TaskVineSignal(reason: string) =
    inherit TaskVineTaskFailure(8, reason)

/// The task used more than its declared `disk` or `memory` (`VINE_RESULT_RESOURCE_EXHAUSTION`, 16), or more disk
/// than its sandbox allows (`VINE_RESULT_SANDBOX_EXHAUSTION`, 104).
type TaskVineResourceExhaustion(resultCode: int, reason: string) =
    inherit TaskVineTaskFailure(resultCode, reason)

/// The task ran past its end time (`VINE_RESULT_MAX_END_TIME`, 24) or longer than its `running_time_min` or a
/// shell app's walltime (`VINE_RESULT_MAX_WALL_TIME`, 56).
type TaskVineMaxRunTime(resultCode: int, reason: string) =
    inherit TaskVineTaskFailure(resultCode, reason)

/// The worker could not classify the result (`VINE_RESULT_UNKNOWN`, 32).
type TaskVineUnknownResult(reason: string) =
    inherit TaskVineTaskFailure(32, reason)

/// The task failed, but not by its own fault: the worker gave it up (`VINE_RESULT_FORSAKEN`, 40; and the unused
/// `VINE_RESULT_MAX_RETRIES`, 48).
type TaskVineForsaken(resultCode: int, reason: string) =
    inherit TaskVineTaskFailure(resultCode, reason)

/// The resource monitor failed (`VINE_RESULT_RMONITOR_ERROR`, 64).
type TaskVineMonitorError(reason: string) =
    inherit TaskVineTaskFailure(64, reason)

/// An output could not be brought back to the manager (`VINE_RESULT_OUTPUT_TRANSFER_ERROR`, 72).
type TaskVineOutputTransferError(reason: string) =
    inherit TaskVineTaskFailure(72, reason)

/// No worker holds a file the task needs where it is (`VINE_RESULT_FIXED_LOCATION_MISSING`, 80).
type TaskVineFixedLocationMissing(reason: string) =
    inherit TaskVineTaskFailure(80, reason)

/// The task was cancelled (`VINE_RESULT_CANCELLED`, 88).
type TaskVineCancelled(reason: string) =
    inherit TaskVineTaskFailure(88, reason)

/// The library process serving the function call ended (`VINE_RESULT_LIBRARY_EXIT`, 96), or the worker has no such
/// library (`VINE_RESULT_MISSING_LIBRARY`, 112).
type TaskVineLibraryFailure(resultCode: int, reason: string) =
    inherit TaskVineTaskFailure(resultCode, reason)
