namespace Parsl

open System

/// The base of every error Parsl.NET raises (Parsl's `ParslError`).
type ParslException(message: string, inner: exn) =
    inherit Exception(message, inner)
    /// An error with a message.
    new(message: string) = ParslException(message, null)

/// A configuration value is wrong. `Field` names the option; the message says how to fix it.
type ConfigurationError(field: string, message: string) =
    inherit ParslException(sprintf "%s: %s" field message)
    /// The option at fault, as `Config.Retries` or `ThreadPoolExecutor.MaxThreads`.
    member _.Field = field

/// The DataFlowKernel was cleaned up (or never loaded), so no app can be called (Parsl's `NoDataFlowKernelError`).
type NoDataFlowKernelError(message: string) =
    inherit ParslException(message)

/// The kernel shut down before this task finished (exit mode `skip`, or `cleanup` with the task still pending).
/// Parsl would leave such a future unresolved forever; here it fails.
type KernelShutdownError(taskId: TaskId) =
    inherit ParslException(sprintf "Task %d did not finish: its DataFlowKernel was shut down first" taskId.Value)
    /// The task.
    member _.TaskId = taskId

/// An app failed in a way that is not its own exception (Parsl's `AppException`).
type AppException(message: string, inner: exn) =
    inherit ParslException(message, inner)

/// A shell app's command line could not be built (Parsl's `AppBadFormatting`).
type AppBadFormatting(message: string, inner: exn) =
    inherit ParslException(message, inner)

/// A shell app's command builder returned no command (Parsl's `BashAppNoReturn`).
type BashAppNoReturn(appName: string) =
    inherit ParslException(sprintf "Shell app %s returned no command line (null or empty)" appName)
    /// The app.
    member _.AppName = appName

/// A shell app exited with a non-zero code (Parsl's `BashExitFailure`). A process killed by a signal has
/// the negative signal number, as Python's `Popen.returncode`.
type BashExitFailure(appName: string, exitCode: int) =
    inherit ParslException(sprintf "bash_app %s failed with unix exit code %d" appName exitCode)
    /// The app.
    member _.AppName = appName
    /// The exit code.
    member _.ExitCode = exitCode

/// An app ran past its walltime (Parsl's `AppTimeout`). For shell apps the whole process group was killed.
type AppTimeout(message: string) =
    inherit ParslException(message)

/// A shell app finished but did not create all its declared outputs (Parsl's `MissingOutputs`).
type MissingOutputs internal (reason: string, outputs: string list) =
    inherit ParslException(sprintf "Missing outputs: %s (%s)" (String.Join(", ", outputs)) reason)
    /// The outputs that were missing.
    member _.Outputs: System.Collections.Generic.IReadOnlyList<string> = List.toArray outputs

/// A stdout/stderr specification is invalid (Parsl's `BadStdStreamFile`).
type BadStdStreamFile(message: string, inner: exn) =
    inherit ParslException(message, inner)

/// A dependency of this task failed, so it never ran (Parsl's `DependencyError`). `InnerException` is a
/// representative root cause, followed through the first failed dependency.
type DependencyError internal (dependencies: TaskId list, taskId: TaskId, rootCause: exn) =
    inherit ParslException(
        (let ids = dependencies |> List.map (fun t -> sprintf "task %d" t.Value) |> String.concat ", "
         let rec chain (e: exn) acc =
             match e with
             | :? DependencyError as d when d.Dependencies.Count > 0 ->
                 chain d.InnerException (sprintf "task %d" d.Dependencies[0].Value :: acc)
             | _ -> List.rev acc
         let via =
             match dependencies with
             | first :: _ -> String.concat " <- " (sprintf "task %d" first.Value :: chain rootCause [])
             | [] -> "an external future"
         sprintf "Dependency failure for task %d with failed dependencies from %s. The representative cause is via %s"
             taskId.Value (if ids = "" then "an external future" else ids) via),
        (let rec root (e: exn) =
             match e with
             | :? DependencyError as d when not (isNull d.InnerException) -> root d.InnerException
             | _ -> e
         root rootCause))
    /// The failed dependencies' task ids (external futures are not named).
    member _.Dependencies: System.Collections.Generic.IReadOnlyList<TaskId> = List.toArray dependencies
    /// The task that could not run.
    member _.TaskId = taskId

/// One or more futures a join app returned failed (Parsl's `JoinError`).
type JoinError internal (failed: TaskId list, taskId: TaskId, firstCause: exn) =
    inherit ParslException(
        sprintf "Join failure for task %d with failed join dependencies from %s" taskId.Value
            (if failed.IsEmpty then "an awaited Task (workflow or join body); see InnerException"
             else failed |> List.map (fun t -> sprintf "task %d" t.Value) |> String.concat ", "),
        firstCause)
    /// The failed inner tasks.
    member _.FailedTasks: System.Collections.Generic.IReadOnlyList<TaskId> = List.toArray failed
    /// The join task.
    member _.TaskId = taskId

/// A resource specification holds keys the executor does not know (Parsl's `InvalidResourceSpecification`).
type InvalidResourceSpecification internal (invalidKeys: string list, message: string) =
    inherit ParslException(message)
    /// The keys that were refused.
    member _.InvalidKeys: System.Collections.Generic.IReadOnlyList<string> = List.toArray invalidKeys

/// An executor failed (Parsl's `ExecutorError`).
type ExecutorError(label: string, message: string, inner: exn) =
    inherit ParslException(sprintf "Executor %s failed: %s" label message, inner)
    /// The executor's label.
    member _.Label = label

/// The executor is in a bad state; its tasks fail with this (Parsl's `BadStateException`).
type BadStateException(label: string, message: string, inner: exn) =
    inherit ExecutorError(label, message, inner)

/// A worker process died while running the task (Parsl's `WorkerLost`).
type WorkerLost(workerId: int, hostname: string) =
    inherit ParslException(sprintf "Task failure due to loss of worker %d on host %s" workerId hostname)
    /// The worker.
    member _.WorkerId = workerId
    /// Its host.
    member _.Hostname = hostname

/// A manager stopped heartbeating, and its tasks are failed (Parsl's `ManagerLost`).
type ManagerLost(managerId: string, hostname: string) =
    inherit ParslException(sprintf "Task failure due to loss of manager %s on host %s" managerId hostname)
    /// The manager.
    member _.ManagerId = managerId
    /// Its host.
    member _.Hostname = hostname

/// A manager with another version tried to register (Parsl's `VersionMismatch`).
type VersionMismatch(message: string) =
    inherit ParslException(message)

/// An argument or result could not be serialized; only that task fails (Parsl's `SerializationError`).
type SerializationError(message: string, inner: exn) =
    inherit ParslException(message, inner)

/// An exception raised by the app on a remote worker: its type, message and remote stack trace.
type RemoteException(typeName: string, message: string, remoteStackTrace: string) =
    inherit ParslException(sprintf "%s: %s" typeName message)
    /// The full name of the remote exception's type.
    member _.TypeName = typeName
    /// The remote stack trace.
    member _.RemoteStackTrace = remoteStackTrace
    override _.StackTrace = remoteStackTrace
