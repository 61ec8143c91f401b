namespace Parsl.Jobs

open System
open System.Text
open Parsl
open Parsl.Providers

/// The executor stopped because too many of its blocks failed (Parsl's `TooManyJobFailuresError`). The message
/// lists each block's state message, exit code and output head/tail.
type TooManyJobFailuresError(message: string) =
    inherit ParslException(message)

/// How an executor reacts to failing blocks (Parsl's `block_error_handler`).
[<RequireQualifiedAccess>]
type BlockErrorHandler =
    /// Bad state once at least `max(1, InitBlocks)` blocks exist and every one failed (Parsl's default, `True`).
    | Simple
    /// Bad state once the newest `threshold` blocks all failed (Parsl's `windowed_error_handler`, default 3).
    | Windowed of threshold: int
    /// Never (Parsl's `False`).
    | Off

/// What the error handler decided; the executor applies it.
type BlockErrorDecision =
    /// Carry on.
    | Healthy
    /// Set the executor's bad state and fail every outstanding task with `TooManyJobFailuresError(message)`.
    | SetBadState of message: string

/// Pure block error handling over a snapshot of block statuses, keyed by block id.
[<RequireQualifiedAccess>]
module ErrorHandlers =
    /// A failure counts when the block FAILED or went MISSING (never connected), as Parsl.
    let isFailure (s: JobStatus) =
        match s.State with
        | JobState.Failed | JobState.Missing -> true
        | _ -> false

    /// (total, failed).
    let count (statuses: (string * JobStatus) list) =
        List.length statuses, statuses |> List.filter (snd >> isFailure) |> List.length

    /// Block ids in submission order: numeric ids numerically, others after them by name.
    let ordered (statuses: (string * JobStatus) list) =
        statuses
        |> List.sortBy (fun (id, _) ->
            match Int64.TryParse id with
            | true, n -> 0, n, ""
            | _ -> 1, 0L, id)

    /// The message of the error: every block's state message, exit code and output summaries.
    let describe (statuses: (string * JobStatus) list) =
        let sb = StringBuilder()
        ordered statuses
        |> List.iteri (fun i (id, s) ->
            sb.AppendFormat("Error {0} (block {1}, {2}):\n", i + 1, id, JobState.name s.State) |> ignore
            s.Message |> Option.iter (fun m -> sb.AppendFormat("\t{0}\n", m) |> ignore)
            s.ExitCode |> Option.iter (fun c -> sb.AppendFormat("\tEXIT CODE: {0}\n", c) |> ignore)
            s.Stdout |> Option.bind BatchJobs.summary |> Option.iter (fun o -> sb.AppendFormat("\tSTDOUT: {0}\n", o) |> ignore)
            s.Stderr |> Option.bind BatchJobs.summary |> Option.iter (fun e -> sb.AppendFormat("\tSTDERR: {0}\n", e) |> ignore))
        if sb.Length = 0 then "No error messages received" else sb.ToString()

    /// Parsl's `simple_error_handler`.
    let simple initBlocks (statuses: (string * JobStatus) list) =
        let total, failed = count statuses
        if total >= max 1 initBlocks && failed = total then SetBadState(describe statuses) else Healthy

    /// Parsl's `windowed_error_handler`: the newest `threshold` blocks.
    let windowed threshold (statuses: (string * JobStatus) list) =
        let window = ordered statuses |> List.rev |> List.truncate (max 1 threshold)
        let _, failed = count window
        if failed = max 1 threshold then SetBadState(describe statuses) else Healthy

    /// Leaves out the blocks that ran tasks and then ended: such a block is a node lost (a crash, an out-of-memory
    /// kill, a preemption), whose tasks fail with `ManagerLost` and are retried, not a sign that blocks cannot run.
    /// What is left is what the handlers judge: blocks that never connected, and blocks that ended before returning
    /// a result (dying at start, such as workers that cannot start). Parsl's handlers count both kinds alike, so
    /// one manager crash made a one-block run fail every later task.
    let withoutLostNodes (served: Set<string>) (statuses: (string * JobStatus) list) =
        statuses |> List.filter (fun (id, s) -> not (served.Contains id && JobState.isTerminal s.State))

    /// Applies a handler to a snapshot.
    let decide handler initBlocks statuses =
        match handler with
        | BlockErrorHandler.Simple -> simple initBlocks statuses
        | BlockErrorHandler.Windowed t -> windowed t statuses
        | BlockErrorHandler.Off -> Healthy

    /// Checks a handler's settings.
    let validate owner handler =
        match handler with
        | BlockErrorHandler.Windowed t when t < 1 ->
            [ ConfigurationError(owner + ".BlockErrorHandler", sprintf "Windowed threshold is %d; use 1 or more (Parsl's default is 3)" t) ]
        | _ -> []

    /// The exception a bad-state decision fails tasks with.
    let toException message = TooManyJobFailuresError(message)
