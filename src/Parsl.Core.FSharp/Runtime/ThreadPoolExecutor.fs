namespace Parsl.Executors

open System
open System.Collections.Concurrent
open System.Reflection
open System.Threading
open System.Threading.Tasks
open Parsl
open Parsl.Runtime

/// Runs tries in the client process on at most `MaxThreads` threads at once (Parsl's `ThreadPoolExecutor`).
/// A task body that blocks waiting on an `AppFuture` lends its slot, so tasks may submit further tasks and
/// wait on them without deadlock. Accepts no resource specification keys.
[<Sealed>]
type ThreadPoolExecutor(label: string, maxThreads: int) =
    let queue = WorkQueue<ExecTask>()
    // Tries asked to stop: checked before a queued try starts.
    let cancelRequested = ConcurrentDictionary<struct (int * int), bool>()
    // Running tries that can be stopped (shell apps, bodies taking a CancellationToken).
    let running = ConcurrentDictionary<struct (int * int), CancellationTokenSource>()
    let loops = ConcurrentDictionary<int, Task>()
    let gate = obj ()
    let mutable active = 0 // loops running
    let mutable blocked = 0 // loops whose body is blocked waiting on a future
    let mutable nextLoop = 0
    let mutable ctx = Unchecked.defaultof<ExecutorContext>
    let mutable blockingHook: Func<IDisposable> = null
    let mutable stopping = false
    let shutdownToken = new CancellationTokenSource()

    let rec unwrapInvocation (e: exn) =
        match e with
        | :? TargetInvocationException as t when not (isNull t.InnerException) -> unwrapInvocation t.InnerException
        | :? AggregateException as a when a.InnerExceptions.Count = 1 -> unwrapInvocation a.InnerException
        | e -> e

    let finish (t: ExecTask) (result: Result<obj, exn>) =
        match result with
        | Ok v -> ctx.Report(TryDone(t.Id, t.Try, v))
        | Result.Error e -> ctx.Report(TryFailed(t.Id, t.Try, unwrapInvocation e))

    /// Awaits a body's Task result, if it returned one, as `obj`.
    let awaitResult (v: obj) : ValueTask<obj> =
        match v with
        | :? Task as t ->
            let ty = t.GetType()
            let resultOf () =
                if ty.IsGenericType then
                    let p = ty.GetProperty "Result"
                    let r = p.GetValue t
                    // Task<VoidTaskResult> (a plain Task built by async machinery) has no user value.
                    if p.PropertyType.FullName = "System.Threading.Tasks.VoidTaskResult" then null else r
                else
                    null
            if t.IsCompletedSuccessfully then ValueTask<obj>(resultOf ())
            else ValueTask<obj>(t.ContinueWith((fun (t: Task) -> t.GetAwaiter().GetResult(); resultOf ()), TaskScheduler.Default))
        | v -> ValueTask<obj>(v)

    let runBody (t: ExecTask) (token: CancellationToken) : obj =
        match t.Body with
        | Function call -> call.Invoke call.Args token
        | Shell call -> Shell.run call token

    let needsToken (t: ExecTask) =
        match t.Body with
        | Shell _ -> true
        | Function c -> c.TakesCancellation

    let rec enterBlocking () : IDisposable =
        let spawn =
            lock gate (fun () ->
                blocked <- blocked + 1
                not stopping && active - blocked < maxThreads)
        if spawn then startLoop ()
        { new IDisposable with
            member _.Dispose() = lock gate (fun () -> blocked <- blocked - 1) }

    and runOne (t: ExecTask) : Task =
        let key = struct (t.Id.Value, t.Try.Value)
        if not cancelRequested.IsEmpty && cancelRequested.TryRemove key |> fst then
            finish t (Result.Error(OperationCanceledException(sprintf "Task %d was cancelled" t.Id.Value)))
            Task.CompletedTask
        else
            let cts =
                if needsToken t then
                    let c = CancellationTokenSource.CreateLinkedTokenSource shutdownToken.Token
                    running[key] <- c
                    if not cancelRequested.IsEmpty && cancelRequested.TryRemove key |> fst then c.Cancel()
                    c
                else
                    null
            let token = if isNull cts then CancellationToken.None else cts.Token
            let cleanup () =
                if not (isNull cts) then
                    running.TryRemove key |> ignore
                    cts.Dispose()
            let v =
                Blocking.Hook <- blockingHook
                try
                    try
                        Ok(runBody t token)
                    with e ->
                        Result.Error e
                finally
                    Blocking.Hook <- null
            match v with
            | Ok(:? Task as pending) ->
                task {
                    try
                        try
                            let! r = awaitResult pending
                            finish t (Ok r)
                        with e ->
                            finish t (Result.Error e)
                    finally
                        cleanup ()
                }
                :> Task
            | v ->
                cleanup ()
                finish t (v |> Result.mapError id)
                Task.CompletedTask

    and loop (n: int) : Task =
        task {
            let mutable go = true
            while go do
                let! more = queue.WaitAsync()
                if not more then go <- false
                else
                    let mutable item = Unchecked.defaultof<ExecTask>
                    while go && queue.TryTake(&item) do
                        do! runOne item
                        // A compensating loop ends once the loop it stood in for is running again.
                        if Volatile.Read(&active) - Volatile.Read(&blocked) > maxThreads then
                            go <- lock gate (fun () ->
                                if active - blocked > maxThreads then
                                    active <- active - 1
                                    false
                                else
                                    true)
                            if not go then loops.TryRemove n |> ignore
            if go then lock gate (fun () -> active <- active - 1)
        }

    and startLoop () =
        let n = Interlocked.Increment(&nextLoop)
        lock gate (fun () -> active <- active + 1)
        loops[n] <- Task.Run(fun () -> loop n)

    do blockingHook <- Func<IDisposable>(enterBlocking)

    /// Parsl's defaults: label `threads`, 2 threads.
    new() = ThreadPoolExecutor("threads", 2)

    /// The label.
    member _.Label = label
    /// The most tries running at once (Parsl's `max_threads`).
    member _.MaxThreads = maxThreads

    interface IExecutor with
        member _.Label = label

        member _.Validate() =
            [ if maxThreads <= 0 then
                  ConfigurationError(
                      "ThreadPoolExecutor.MaxThreads",
                      sprintf "must be at least 1 (got %d) for executor '%s'; the default is 2" maxThreads label) ]

        member _.CheckResources spec = Resources.check label [] spec

        member _.StartAsync(context, _) =
            ctx <- context
            for _ in 1..maxThreads do
                startLoop ()
            Task.CompletedTask

        member _.Submit t =
            if not (queue.Post t) then
                ctx.Report(TryFailed(t.Id, t.Try, KernelShutdownError(t.Id)))

        member _.Cancel(id, tryId) =
            let key = struct (id.Value, tryId.Value)
            cancelRequested[key] <- true
            match running.TryGetValue key with
            | true, c ->
                cancelRequested.TryRemove key |> ignore
                try c.Cancel() with :? ObjectDisposedException -> ()
            | _ -> ()

        member _.ShutdownAsync(wait) =
            task {
                lock gate (fun () -> stopping <- true)
                queue.Complete()
                if not wait then
                    shutdownToken.Cancel()
                    let mutable item = Unchecked.defaultof<ExecTask>
                    while queue.TryTake(&item) do
                        ctx.Report(TryFailed(item.Id, item.Try, KernelShutdownError(item.Id)))
                // Loops end when the queue is drained; compensating loops may start meanwhile, so repeat.
                let mutable pending = loops.Values |> Array.ofSeq
                while pending.Length > 0 do
                    do! Task.WhenAll pending
                    pending <- loops.Values |> Seq.filter (fun t -> not t.IsCompleted) |> Array.ofSeq
                shutdownToken.Dispose()
            }
            :> Task
