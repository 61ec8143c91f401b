namespace Parsl.Executors

open System
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks
open Parsl
open Parsl.Node

/// A function app's call, ready to run: the user's delegate, its argument values, and a fast local invoker.
type FunctionCall =
    { AppName: string
      /// The user's code. Executors that run tasks in other processes ship it by reference (method and target).
      Function: Delegate
      /// Resolved argument values (futures replaced by their results).
      Args: obj[]
      /// Whether the delegate's last parameter is a CancellationToken supplied by the executor.
      TakesCancellation: bool
      /// Calls the delegate in this process. The value may be a `Task` the executor awaits.
      Invoke: obj[] -> CancellationToken -> obj
      /// At this limit the try fails with `AppTimeout` and the token passed to the body is cancelled (Parsl's
      /// `walltime` of python apps). None: no limit.
      Walltime: TimeSpan option }

/// What an executor runs.
type TaskBody =
    /// A function app, or a join app's body.
    | Function of FunctionCall
    /// A shell app.
    | Shell of ShellCall

/// One try of one task, as handed to an executor.
type ExecTask =
    { Id: TaskId
      Try: TryId
      Body: TaskBody
      /// Parsl's `parsl_resource_specification`; empty when not given.
      Resources: IReadOnlyDictionary<string, obj> }

/// What an executor reports back. Executors never change task state: the kernel does.
type ExecutorEvent =
    /// The try ended with a value.
    | TryDone of TaskId * TryId * obj
    /// The try ended with an exception.
    | TryFailed of TaskId * TryId * exn

/// What an executor gets from the kernel when it starts.
type ExecutorContext =
    { /// This run's directory (`runinfo/NNN`).
      RunDir: string
      /// Sends an event to the kernel. Thread-safe; never blocks.
      Report: ExecutorEvent -> unit
      /// The run's logger.
      Log: Serilog.ILogger }

/// The protocol every executor implements (Parsl's `ParslExecutor`): tasks in, events out.
///
///   kernel ──Submit(ExecTask)──▶ executor ──TryDone / TryFailed──▶ kernel
///   kernel ──Cancel(id, try)───▶ executor      (a running try is told to stop)
///   kernel ──Shutdown(wait)────▶ executor      (wait: let running tries end; else stop them)
type IExecutor =
    /// The executor's label, unique within a config.
    abstract Label: string
    /// Checks the executor's options; each error names its field. Called once when the kernel loads.
    abstract Validate: unit -> ConfigurationError list
    /// Checks a task's resource specification (`InvalidResourceSpecification` for unknown keys).
    abstract CheckResources: IReadOnlyDictionary<string, obj> -> exn option
    /// Starts the executor's loops.
    abstract StartAsync: ExecutorContext * CancellationToken -> Task
    /// Queues one try. Never blocks.
    abstract Submit: ExecTask -> unit
    /// Asks a running or queued try to stop; it then reports `TryFailed` with an `OperationCanceledException`.
    abstract Cancel: TaskId * TryId -> unit
    /// Stops the executor and everything it started. `wait`: let tries already running finish first.
    abstract ShutdownAsync: wait: bool -> Task

/// An executor whose `Submit` only queues, and that sends what was queued at `Flush`. The kernel calls `Flush` on
/// its own thread each time it has handled every message waiting for it, so a burst of submissions leaves as one
/// batch and a lone task (the next link of a dependency chain) leaves at once, without waking another thread.
type IBatchingExecutor =
    abstract Flush: unit -> unit

/// Helpers for executors.
[<RequireQualifiedAccess>]
module Resources =
    /// No resource specification.
    let empty: IReadOnlyDictionary<string, obj> = Dictionary<string, obj>() :> _

    /// Refuses keys outside `known`, as Parsl's executors do.
    let check (label: string) (known: string list) (spec: IReadOnlyDictionary<string, obj>) =
        let bad = spec.Keys |> Seq.filter (fun k -> not (List.contains k known)) |> List.ofSeq
        if bad.IsEmpty then None
        else
            let allowed = if known.IsEmpty then "none" else String.Join(", ", known)
            Some(
                InvalidResourceSpecification(
                    bad,
                    sprintf "Executor %s does not accept the resource specification keys %s (accepted: %s)"
                        label (String.Join(", ", bad)) allowed)
                :> exn)
