namespace Parsl.Executors

open System
open System.Collections.Concurrent
open System.Threading
open System.Threading.Tasks
open Parsl
open Parsl.Runtime
open Parsl.Node.Runtime

/// The walltime of one function-app try on the thread pool: when it passes, the try fails with `AppTimeout` and its
/// token is cancelled. A try with a walltime has two reporters, its body and this timer: `Claim` lets exactly one of
/// them report. The thread itself cannot be stopped: a body that ignores its token runs on, and what it returns is
/// dropped.
[<Sealed; AllowNullLiteral>]
type internal WalltimeGuard(t: ExecTask, walltime: TimeSpan, cts: CancellationTokenSource, ctx: ExecutorContext) =
    let mutable claimed = 0
    let mutable timer: Timer = null

    /// True for the first caller only: that one reports the try.
    member _.Claim() = Interlocked.Exchange(&claimed, 1) = 0

    /// Starts the timer (before the body runs).
    member this.Start() =
        timer <- new Timer((fun g -> (g :?> WalltimeGuard).Expire()), this, walltime, Timeout.InfiniteTimeSpan)

    member private this.Expire() =
        if this.Claim() then
            (try cts.Cancel() with :? ObjectDisposedException -> ())
            let name = match t.Body with Function c -> c.AppName | Shell c -> c.AppName
            ctx.Report(
                TryFailed(
                    t.Id, t.Try,
                    AppTimeout(sprintf "Function app %s ran past its walltime of %g s (task %d); its CancellationToken was cancelled" name walltime.TotalSeconds t.Id.Value)))

    /// Stops the timer once the body has returned.
    member _.Dispose() = if not (isNull timer) then timer.Dispose()

/// Runs tries in the client process on `MaxThreads` threads of its own (Parsl's `ThreadPoolExecutor`).
/// The threads are dedicated, not borrowed from the .NET thread pool: shell apps and blocking bodies would
/// otherwise starve the pool, which adds threads only slowly. A body blocked waiting on an `AppFuture` lends its
/// thread's slot (a compensating thread starts), so tasks may submit further tasks and wait on them without
/// deadlock. An async body holds its slot until its first await; its result is reported when its Task ends.
/// Accepts no resource specification keys.
[<Sealed>]
type ThreadPoolExecutor(label: string, maxThreads: int) =
    let queue = WorkQueue<ExecTask>()
    // Tries asked to stop: checked before a queued try starts.
    let cancelRequested = ConcurrentDictionary<struct (int * int), bool>()
    // Running tries that can be stopped (shell apps, bodies taking a CancellationToken).
    let running = ConcurrentDictionary<struct (int * int), CancellationTokenSource>()
    // Each worker thread's end, and each async body still running: awaited at shutdown.
    let threads = ConcurrentDictionary<int, Task>()
    let asyncBodies = ConcurrentDictionary<struct (int * int), Task>()
    let gate = obj ()
    let mutable active = 0 // worker threads running
    let mutable blocked = 0 // worker threads whose body is blocked waiting on a future
    let mutable nextThread = 0
    let mutable ctx = Unchecked.defaultof<ExecutorContext>
    let mutable blockingHook: Func<IDisposable> = null
    let mutable stopping = false
    let shutdownToken = new CancellationTokenSource()

    let report (t: ExecTask) (result: Result<obj, exn>) =
        match result with
        | Ok v -> ctx.Report(TryDone(t.Id, t.Try, v))
        | Result.Error e -> ctx.Report(TryFailed(t.Id, t.Try, TaskResults.unwrap e))

    /// How an async body's finished Task ends the try.
    let outcome (t: ExecTask) (p: Task) : Result<obj, exn> =
        if p.IsCompletedSuccessfully then Ok(TaskResults.value p)
        elif p.IsCanceled then Result.Error(OperationCanceledException(sprintf "Task %d was cancelled" t.Id.Value))
        else Result.Error p.Exception

    let runBody (t: ExecTask) (token: CancellationToken) : obj =
        match t.Body with
        | Function call -> call.Invoke call.Args token
        | Shell call -> Shell.run call token

    let needsToken (t: ExecTask) =
        match t.Body with
        | Shell _ -> true
        | Function c -> c.TakesCancellation || c.Walltime.IsSome

    let walltimeOf (t: ExecTask) =
        match t.Body with
        | Function c -> c.Walltime
        | Shell _ -> None

    let rec enterBlocking () : IDisposable =
        let spawn =
            lock gate (fun () ->
                blocked <- blocked + 1
                not stopping && active - blocked < maxThreads)
        if spawn then startThread ()
        { new IDisposable with
            member _.Dispose() = lock gate (fun () -> blocked <- blocked - 1) }

    and runOne (t: ExecTask) =
        let key = struct (t.Id.Value, t.Try.Value)
        if not cancelRequested.IsEmpty && fst (cancelRequested.TryRemove key) then
            report t (Result.Error(OperationCanceledException(sprintf "Task %d was cancelled" t.Id.Value)))
        else
            let cts =
                if needsToken t then
                    let c = CancellationTokenSource.CreateLinkedTokenSource shutdownToken.Token
                    running[key] <- c
                    if not cancelRequested.IsEmpty && fst (cancelRequested.TryRemove key) then c.Cancel()
                    c
                else
                    null
            let token = if isNull cts then CancellationToken.None else cts.Token
            // A function app's walltime: the try fails with AppTimeout and its token is cancelled. The thread itself
            // cannot be stopped: a body that ignores its token runs on, and what it returns is dropped. Only a try
            // with a walltime has two reporters, so only it gets the guard (a cell, a closure and a cleanup closure
            // on every try cost the no-op row about a tenth of its rate).
            let guard =
                match walltimeOf t with
                | Some w ->
                    let g = WalltimeGuard(t, w, cts, ctx)
                    g.Start()
                    g
                | None -> null
            let result =
                try
                    Ok(runBody t token)
                with e ->
                    Result.Error e
            match result with
            | Ok(:? Task as pending) when not pending.IsCompleted ->
                // An async body: its thread is free again; report when its Task ends.
                let finished =
                    pending.ContinueWith(
                        (fun (p: Task) ->
                            try
                                reportOnce guard t (outcome t p)
                            finally
                                finish key guard cts
                                asyncBodies.TryRemove key |> ignore),
                        TaskScheduler.Default)
                asyncBodies[key] <- finished
                // The continuation may have run (and removed nothing) before the line above: do not keep it.
                if finished.IsCompleted then asyncBodies.TryRemove key |> ignore
            | Ok(:? Task as completed) ->
                finish key guard cts
                reportOnce guard t (outcome t completed)
            | result ->
                finish key guard cts
                reportOnce guard t result

    /// Reports a try's end, unless its walltime has reported it already.
    and reportOnce (guard: WalltimeGuard) (t: ExecTask) (result: Result<obj, exn>) =
        if isNull guard || guard.Claim() then report t result

    /// After a try's body: its walltime timer and its token are released.
    and finish key (guard: WalltimeGuard) (cts: CancellationTokenSource) =
        if not (isNull guard) then guard.Dispose()
        if not (isNull cts) then
            running.TryRemove key |> ignore
            cts.Dispose()

    and work (n: int) (finished: TaskCompletionSource) () =
        // Set once for the thread's life (it runs nothing but tries), not around every try.
        Blocking.Hook <- blockingHook
        try
            let mutable go = true
            while go do
                if not (queue.Wait()) then go <- false
                else
                    let mutable item = Unchecked.defaultof<ExecTask>
                    while go && queue.TryTake(&item) do
                        runOne item
                        // A compensating thread ends once the thread it stood in for is running again.
                        if Volatile.Read(&active) - Volatile.Read(&blocked) > maxThreads then
                            go <- lock gate (fun () ->
                                if active - blocked > maxThreads then
                                    active <- active - 1
                                    false
                                else
                                    true)
            if go then lock gate (fun () -> active <- active - 1)
        finally
            threads.TryRemove n |> ignore
            finished.TrySetResult() |> ignore

    and startThread () =
        let n = Interlocked.Increment(&nextThread)
        lock gate (fun () -> active <- active + 1)
        let finished = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
        threads[n] <- finished.Task
        let t = Thread(work n finished, IsBackground = true, Name = sprintf "parsl-%s-%d" label n)
        t.Start()

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
                startThread ()
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
                    // Skip: shell apps' process groups are killed and tokens cancelled here, at once; queued tries
                    // fail now and running ones are failed by the kernel (KernelShutdownError) without waiting for
                    // them. A function body that ignores its token cannot be stopped: its thread (a background
                    // thread) runs on until it returns, and its result is dropped.
                    shutdownToken.Cancel()
                    let mutable item = Unchecked.defaultof<ExecTask>
                    while queue.TryTake(&item) do
                        ctx.Report(TryFailed(item.Id, item.Try, KernelShutdownError(item.Id)))
                else
                    // Threads end when the queue is drained; compensating threads may start meanwhile, so repeat.
                    // Only unfinished ones: a finished entry left behind must not make this loop spin.
                    let unfinished () =
                        Seq.append threads.Values asyncBodies.Values |> Seq.filter (fun t -> not t.IsCompleted) |> Array.ofSeq
                    let mutable pending = unfinished ()
                    while pending.Length > 0 do
                        do! Task.WhenAll pending
                        pending <- unfinished ()
                    shutdownToken.Dispose()
            }
            :> Task
