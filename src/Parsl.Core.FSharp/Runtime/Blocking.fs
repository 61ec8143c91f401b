namespace Parsl.Runtime

open System
open System.Threading.Tasks

/// Lets an executor lend a thread's slot while the code on it blocks waiting for a future, so that a task
/// may submit further tasks and wait on them without deadlock (a "managed blocker"). Runtime, not API: a
/// thread-static hook, and the blocking wait behind `AppFuture.Wait` and `AppFuture.Result`.
[<AbstractClass; Sealed>]
type internal Blocking private () =
    [<ThreadStatic; DefaultValue>]
    static val mutable private hook: Func<IDisposable>

    /// Set by an executor on the threads it runs task bodies on; null elsewhere.
    static member Hook
        with get () = Blocking.hook
        and set v = Blocking.hook <- v

    /// Marks the start of a blocking wait; dispose at its end.
    static member Enter() : IDisposable =
        match Blocking.hook with
        | null -> null
        | h -> h.Invoke()

    /// Blocks until the task is final; on an executor thread, the thread's slot is lent meanwhile.
    static member Wait(task: Task) =
        if not task.IsCompleted then
            use _ = Blocking.Enter()
            (task :> IAsyncResult).AsyncWaitHandle.WaitOne() |> ignore
