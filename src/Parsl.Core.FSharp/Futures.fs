namespace Parsl

open System
open System.Threading
open System.Threading.Tasks
open Parsl.Core
open Parsl.Data
open Parsl.Runtime

/// What owns a future: the kernel that runs its task.
type internal IFutureOwner =
    /// Asks the kernel to cancel the task.
    abstract Cancel: TaskId -> unit

/// The future of one app call (Parsl's `AppFuture`): its task id, state, and eventually a result or an exception.
[<AllowNullLiteral>]
type AppFuture
    internal
    (id: TaskId, appName: string, owner: IFutureOwner, task: Task, resultObject: unit -> obj,
     complete: TaskState -> Completion -> (unit -> obj) -> unit) =
    [<VolatileField>]
    let mutable state = Pending
    let mutable outputs: System.Collections.Generic.IReadOnlyList<DataFuture> = Array.empty<DataFuture>
    let mutable stdoutFuture: DataFuture = null
    let mutable stderrFuture: DataFuture = null

    /// The task's id.
    member _.TaskId = id
    /// The app's name.
    member _.AppName = appName
    /// The task's current state (Parsl's `task_status()`). F# only: C# reads the `Status` extension, a C# enum
    /// (the public-surface test lists this member as hidden from C# for that reason).
    [<System.ComponentModel.EditorBrowsable(System.ComponentModel.EditorBrowsableState.Never)>]
    member _.State = state
    member internal _.Owner = owner
    member internal _.SetState s = state <- s
    /// The result as an object (only once completed successfully).
    member internal _.ResultObject = resultObject ()
    /// Completes the future. Called only by the kernel's loop.
    member internal this.Complete(final, completion, joinResults) =
        state <- final
        complete final completion joinResults

    /// The future as a plain `Task`.
    member _.AsTask = task
    /// Whether the task is final.
    member _.IsCompleted = task.IsCompleted
    /// Whether the task failed (or was cancelled).
    member _.IsFaulted = task.IsFaulted || task.IsCanceled

    /// The task's exception, once it has failed; null otherwise.
    member _.Exception: exn =
        if task.IsCanceled then OperationCanceledException(sprintf "Task %d was cancelled" id.Value) :> exn
        elif task.IsFaulted then task.Exception.InnerException
        else null

    /// Cancels the task: a pending task never runs and its dependents fail with `DependencyError`; a running
    /// try is told to stop (a shell app's process group is killed). Does nothing once the task is final.
    member _.Cancel() = owner.Cancel id

    /// Blocks until the task is final. On an executor thread, the thread's slot is lent meanwhile.
    member _.Wait() = Blocking.Wait task

    /// The futures of the files the call declared as outputs (`Arg.output`), in order (Parsl's `outputs`).
    /// A read-only list rather than an F# list, so that C# sees a BCL type.
    member _.Outputs: System.Collections.Generic.IReadOnlyList<DataFuture> = outputs
    /// A shell app's stdout when it was given as a `File` (staged out like an output); null otherwise.
    member _.Stdout: DataFuture = stdoutFuture
    /// A shell app's stderr when it was given as a `File` (staged out like an output); null otherwise.
    member _.Stderr: DataFuture = stderrFuture
    member internal _.SetFiles(o: DataFuture list, out: DataFuture option, err: DataFuture option) =
        outputs <- Array.ofList o
        stdoutFuture <- Option.toObj out
        stderrFuture <- Option.toObj err

    override this.ToString() =
        sprintf "<AppFuture task %d (%s) %s>" id.Value appName (TaskState.name this.State)

/// The future of a file an app produces (Parsl's `DataFuture`): completes with the `File` when the task that
/// produces it (the app, or its stage-out task) succeeds, and fails with that task's exception otherwise.
/// Pass it to another app with `Arg.data` to depend on it.
and [<Sealed; AllowNullLiteral>] DataFuture internal (file: File, parent: AppFuture) =
    let task =
        parent.AsTask.ContinueWith(
            (fun (t: Task) ->
                if t.IsCanceled then raise (OperationCanceledException(sprintf "Task %d was cancelled" parent.TaskId.Value))
                elif t.IsFaulted then raise parent.Exception
                else file),
            CancellationToken.None,
            TaskContinuationOptions.ExecuteSynchronously,
            TaskScheduler.Default)

    /// The file (with its local path when it was staged).
    member _.File = file
    /// The id of the task that produces the file (Parsl's `tid`).
    member _.TaskId = parent.TaskId
    /// The producing task's future.
    member _.Parent = parent
    /// The file's path (Parsl's `filepath`).
    member _.Filepath = file.Filepath
    /// The file's name (Parsl's `filename`).
    member _.FileName = file.FileName
    /// The future as a `Task<File>`.
    member _.Task: Task<File> = task
    /// Whether the producing task is final.
    member _.IsCompleted = task.IsCompleted
    /// Makes the future awaitable.
    member _.GetAwaiter() = task.GetAwaiter()
    override _.ToString() = sprintf "<DataFuture %s of task %d>" file.Url parent.TaskId.Value

module internal FutureCompletion =
    let complete (tcs: TaskCompletionSource<'T>) (final: TaskState) (completion: Completion) (joinResults: unit -> obj) =
        match completion with
        | Value v -> tcs.TrySetResult(unbox<'T> v) |> ignore
        | JoinResults -> tcs.TrySetResult(unbox<'T> (joinResults ())) |> ignore
        | Error(:? OperationCanceledException) when final = Failed -> tcs.TrySetCanceled() |> ignore
        | Error e -> tcs.TrySetException e |> ignore

/// A typed app future. Await it (`let! x = fut` in `task { }`, `await fut` in C#), or read `Result` to block.
[<Sealed; AllowNullLiteral>]
type AppFuture<'T> private (id: TaskId, appName: string, owner: IFutureOwner, tcs: TaskCompletionSource<'T>) =
    inherit AppFuture(id, appName, owner, tcs.Task, (fun () -> box tcs.Task.Result), FutureCompletion.complete tcs)

    internal new(id, appName, owner) =
        AppFuture<'T>(id, appName, owner, TaskCompletionSource<'T>(TaskCreationOptions.RunContinuationsAsynchronously))

    /// The future as a `Task<'T>`.
    member _.Task = tcs.Task

    /// Blocks for the result; raises the task's exception. On an executor thread, the thread's slot is lent meanwhile.
    member this.Result: 'T =
        this.Wait()
        tcs.Task.GetAwaiter().GetResult()

    /// Makes the future awaitable.
    member _.GetAwaiter() = tcs.Task.GetAwaiter()
