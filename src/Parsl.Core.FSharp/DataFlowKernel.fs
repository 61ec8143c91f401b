namespace Parsl

open System
open System.Collections.Concurrent
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks
open Parsl.Core
open Parsl.Executors
open Parsl.Runtime
open Parsl.Node.Runtime
open Parsl.Data

/// One argument of an app call, before resolution.
type internal ArgSlot =
    /// A plain value.
    | Plain of obj
    /// A future (AppFuture or Task) whose result is the argument.
    | Future of obj
    /// Several futures whose results, in order, are combined into the argument.
    | Gather of obj[] * combine: (obj[] -> obj)
    /// A value with futures inside (deep resolver): rebuilt with their results.
    | Nested of obj

/// A call of an app, as the kernel's shell keeps it (the kernel sees it as an opaque payload).
type internal Invocation =
    { Id: TaskId
      AppName: string
      Kind: AppKind
      Executor: string
      Slots: ArgSlot[]
      Future: AppFuture
      /// Builds what the executor runs from the resolved argument values.
      Build: TaskId -> obj[] -> TaskBody
      Resources: IReadOnlyDictionary<string, obj>
      /// For join apps: from the body's return value, the futures to wait on and how to combine their results.
      JoinShape: obj -> (obj[] * (obj[] -> obj)) option
      /// Whether the call took a slot of `Config.MaxTasksInFlight` (given back when the task is final).
      HoldsSlot: bool
      mutable JoinFutures: obj[]
      mutable JoinCombine: obj[] -> obj
      /// How to memoize the call; None when the app is not cached.
      Memo: MemoSpec option }

type internal HostMessage =
    | Submitted of Invocation
    | FromExecutor of ExecutorEvent
    | ExternalCompleted of TaskId * exn option
    | CancelRequested of TaskId
    | WaitIdle of TaskCompletionSource<unit>
    | Closing
    | AbandonAll of TaskCompletionSource<unit>

/// The DataFlowKernel: one loop that applies `Kernel.step` to each event and carries out the commands.
/// Create it with `DataFlowKernel.Load`; dispose it (or call `CleanupAsync`) to shut down.
[<Sealed>]
type DataFlowKernel private (config: Config, runDir: string, log: Serilog.ILogger, executors: Dictionary<string, IExecutor>) as this =
    let mailbox = Mailbox<HostMessage>()
    let mutable state = Kernel.empty
    let mutable taskCount = -1
    let mutable closed = 0
    let mutable closing = false
    let mutable cleanedUp = false
    let idleWaiters = List<TaskCompletionSource<unit>>()
    // How many tasks ended in each final state, indexed by `TaskState.value`. Written only by the kernel's loop,
    // one word at a time with volatile writes, and read word by word by any thread (`FinalCounts`): a reader sees
    // each count as it was at some moment, never a half-written structure (a Dictionary copied while the loop
    // adds its first key of a kind may throw or read torn state).
    let finalCounts: int[] = Array.zeroCreate 16
    let countFinals () : IReadOnlyDictionary<TaskState, int> =
        let counts = Dictionary<TaskState, int>()
        for s in TaskState.all do
            let n = Volatile.Read(&finalCounts[TaskState.value s])
            if n > 0 then counts[s] <- n
        counts :> _
    let followUps = Queue<Event>()
    let userLabels = executors.Keys |> Seq.filter (fun l -> l <> Config.InternalLabel) |> Array.ofSeq
    // Executors that send what `Submit` queued when the kernel has drained its mailbox (looked up once started).
    let batching =
        lazy (executors.Values |> Seq.choose (function :? IBatchingExecutor as b -> Some b | _ -> None) |> Array.ofSeq)
    let mutable loopTask: Task = Task.CompletedTask
    let debug = log.IsEnabled Serilog.Events.LogEventLevel.Debug
    let inFlight = if config.MaxTasksInFlight > 0 then new SemaphoreSlim(config.MaxTasksInFlight) else null
    let memoizer = Memoizer(config, runDir, log)
    // SIGTERM/SIGINT: cleaned up (as Skip), then the signal is sent again with no handler of ours left.
    let mutable signalRegistrations: Runtime.InteropServices.PosixSignalRegistration list = []
    let mutable signalled = 0
    let mutable cleanupTask: Task = null
    let signalGate = obj ()
    let dropSignals () =
        let regs = lock signalGate (fun () -> let r = signalRegistrations in signalRegistrations <- []; r)
        for r in regs do
            r.Dispose()
    let monitor =
        Parsl.Monitoring.Monitor(config.Monitoring, config.RunDir, runDir, log, executors, fun p -> (p :?> Invocation).Memo.IsSome)

    let post m =
        if not (mailbox.Post m) then
            // Only after the loop ended: nothing can be done, but never lose a waiter.
            match m with
            | WaitIdle t
            | AbandonAll t -> t.TrySetResult() |> ignore
            | Submitted inv ->
                inv.Future.Complete(Failed, Error(KernelShutdownError inv.Id), fun () -> null)
                if inv.HoldsSlot then inFlight.Release() |> ignore
            | _ -> ()

    /// Splits futures into live kernel tasks, failures already known, and a count of unfinished external
    /// futures (each of which posts `ExternalCompleted` for `waiter` when done).
    let split (waiter: TaskId) (futures: obj seq) =
        let live = List<TaskId>()
        let failed = List<FailedDependency>()
        let mutable external = 0
        for f in futures do
            match f with
            | :? AppFuture as a when obj.ReferenceEquals(a.Owner, this) ->
                if not a.IsCompleted then live.Add a.TaskId
                elif a.IsFaulted then failed.Add((Some a.TaskId, a.Exception))
            | f ->
                let t = FutureValue.asTask f
                if t.IsCompleted then
                    match FutureValue.error f with
                    | null -> ()
                    | e -> failed.Add((None, e))
                else
                    external <- external + 1
                    t.ContinueWith(
                        (fun (_: Task) -> post (ExternalCompleted(waiter, Option.ofObj (FutureValue.error f)))),
                        TaskScheduler.Default)
                    |> ignore
        List.ofSeq live, List.ofSeq failed, external

    let futuresOf (inv: Invocation) =
        seq {
            for s in inv.Slots do
                match s with
                | Plain _ -> ()
                | Future f -> yield f
                | Gather(fs, _) -> yield! fs
                | Nested v -> yield! DeepResolver.gather v
        }

    let resolve (slot: ArgSlot) : obj =
        match slot with
        | Plain v -> v
        | Future f -> FutureValue.result f
        | Gather(fs, combine) -> combine (fs |> Array.map FutureValue.result)
        | Nested v -> DeepResolver.unwrap v

    let taskInfo (r: TaskRecord) =
        { Id = r.Spec.Id
          AppName = r.Spec.AppName
          Try = r.Try
          FailCount = r.FailCount + 1
          Executor = r.Spec.Executor }

    let retryCost (r: TaskRecord) (e: exn) =
        match config.RetryHandler with
        | None -> Cost 1.0
        | Some h ->
            try
                Cost(h e (taskInfo r))
            with he ->
                HandlerFailed he

    let rec apply (event: Event) =
        let s, commands = Kernel.step state event
        if monitor.Enabled then monitor.Step(state, event, commands, s)
        state <- s
        for c in commands do
            interpret c
        while followUps.Count > 0 do
            let e = followUps.Dequeue()
            let s, commands = Kernel.step state e
            if monitor.Enabled then monitor.Step(state, e, commands, s)
            state <- s
            for c in commands do
                interpret c

    and failTry (id: TaskId) (tryId: TryId) (e: exn) =
        followUps.Enqueue(TryEnded(id, tryId, Threw(e, HandlerFailed e)))

    and interpret (c: Command) =
        match c with
        | Launch(id, tryId, label, payload) ->
            let inv = payload :?> Invocation
            if closing then failTry id tryId (KernelShutdownError id)
            else
                match executors.TryGetValue label with
                | false, _ ->
                    failTry id tryId (ConfigurationError("executors", sprintf "no executor is labelled '%s'" label))
                | true, ex ->
                    match (if inv.Resources.Count = 0 then None else ex.CheckResources inv.Resources) with
                    | Some e -> failTry id tryId e
                    | None ->
                        match
                            (try
                                let args = inv.Slots |> Array.map resolve
                                // Parsl's launch_task: the memo table first; a hit never reaches the executor.
                                match memoizer.Check(id, inv.Memo, args) with
                                | Miss -> Ok(Some(inv.Build id args))
                                | HitValue v ->
                                    followUps.Enqueue(MemoHit(id, tryId, v))
                                    Ok None
                                | HitError e
                                | KeyFailed e -> Result.Error e
                             with e ->
                                 Result.Error e)
                        with
                        | Ok None -> ()
                        | Ok(Some body) ->
                            if debug then
                                log.Debug("Task {Task} try {Try} launched on executor {Executor}", id.Value, tryId.Value, label)
                            ex.Submit(
                                monitor.Launching(
                                    label,
                                    { Id = id
                                      Try = tryId
                                      Body = body
                                      Resources = inv.Resources }))
                        | Result.Error e -> failTry id tryId e
        | StateChanged(id, s) ->
            if debug then log.Debug("Task {Task} -> {State}", id.Value, TaskState.name s)
            match Kernel.tryFind state id with
            | Some r -> (r.Spec.Payload :?> Invocation).Future.SetState s
            | None -> ()
        | Complete(id, payload, final, completion) ->
            let inv = payload :?> Invocation
            if inv.HoldsSlot then inFlight.Release() |> ignore
            let slot = TaskState.value final
            Volatile.Write(&finalCounts[slot], finalCounts[slot] + 1)
            let joinResults () =
                inv.JoinCombine(inv.JoinFutures |> Array.map FutureValue.result)
            try
                inv.Future.Complete(final, completion, joinResults)
            with e ->
                // A result of the wrong type, or a join combine that failed: the future still completes.
                inv.Future.Complete(Failed, Error(AppException(sprintf "Task %d's result could not be delivered" id.Value, e)), joinResults)
            memoizer.Record(id, final, completion, fun () -> inv.Future.ResultObject)
            if final <> ExecDone && final <> MemoDone then
                match completion with
                | Error e -> log.Information("Task {Task} ({App}) ended {State}: {Error}", id.Value, inv.AppName, TaskState.name final, e.Message)
                | _ -> ()
        | CancelTry(id, tryId, label) ->
            match executors.TryGetValue label with
            | true, ex -> ex.Cancel(id, tryId)
            | _ -> ()
        | Rejected r -> log.Warning("Kernel refused an event: {Rejection}", sprintf "%A" r)

    let onExecutorEvent (e: ExecutorEvent) =
        match e with
        | TryDone(id, tryId, v) ->
            match Kernel.tryFind state id with
            | Some r when r.Spec.Kind = JoinApp && r.Try = tryId.Value ->
                let inv = r.Spec.Payload :?> Invocation
                match (try inv.JoinShape v with _ -> None) with
                | Some(futures, combine) ->
                    inv.JoinFutures <- futures
                    inv.JoinCombine <- combine
                    let live, failed, external = split id futures
                    apply (JoinReturned(id, tryId, live, failed, external))
                | None ->
                    let e =
                        AppException(
                            sprintf "Join app %s must return a future or a sequence of futures; it returned %s" r.Spec.AppName
                                (if isNull v then "null" else v.GetType().Name),
                            null)
                    apply (TryEnded(id, tryId, Threw(e, HandlerFailed e)))
            | _ -> apply (TryEnded(id, tryId, Succeeded v))
        | TryFailed(id, tryId, e) ->
            match Kernel.tryFind state id with
            | Some r when r.Try = tryId.Value -> apply (TryEnded(id, tryId, Threw(e, retryCost r e)))
            | _ -> apply (TryEnded(id, tryId, Threw(e, Cost 1.0)))

    let handle (m: HostMessage) =
        match m with
        | Submitted inv ->
            let live, failed, external = split inv.Id (futuresOf inv)
            apply (
                Submit
                    { Id = inv.Id
                      AppName = inv.AppName
                      Executor = inv.Executor
                      Kind = inv.Kind
                      Deps = live
                      FailedDeps = failed
                      ExternalDeps = external
                      Retries = config.Retries
                      Payload = inv }
            )
        | FromExecutor e -> onExecutorEvent e
        | ExternalCompleted(id, failure) -> apply (ExternalDone(id, failure))
        | CancelRequested id -> apply (Cancel id)
        | WaitIdle t -> idleWaiters.Add t
        | Closing -> closing <- true
        | AbandonAll t ->
            for KeyValue(k, _) in state.Tasks |> Seq.toArray do
                // Abandoning a task fails its dependents with it: those are no longer live.
                if Kernel.isLive state (TaskId k) then apply (Abandon(TaskId k, KernelShutdownError(TaskId k)))
            t.TrySetResult() |> ignore

    /// The kernel loop, on a thread of its own: it blocks when idle instead of bouncing through the thread pool.
    let run (finished: TaskCompletionSource) () =
        try
            try
                let mutable go = true
                while go do
                    if not (mailbox.WaitToRead()) then go <- false
                    else
                        let mutable m = Unchecked.defaultof<HostMessage>
                        while mailbox.TryTake(&m) do
                            try
                                handle m
                            with e ->
                                log.Error(e, "Kernel loop failed to handle {Message}", sprintf "%A" m)
                        for b in batching.Value do
                            try
                                b.Flush()
                            with e ->
                                log.Error(e, "Kernel loop failed to flush an executor")
                        if state.Live = 0 && idleWaiters.Count > 0 then
                            for w in idleWaiters do
                                w.TrySetResult() |> ignore
                            idleWaiters.Clear()
            with e ->
                log.Fatal(e, "Kernel loop stopped")
        finally
            finished.TrySetResult() |> ignore

    let choose (labels: string list) =
        match labels with
        | [] -> userLabels[Random.Shared.Next userLabels.Length]
        | [ l ] -> l
        | ls -> ls[Random.Shared.Next ls.Length]

    /// A SIGTERM or SIGINT: stop as a dispose with `Skip` would (or let a cleanup already under way finish), then
    /// end the process as the signal intends: our handlers are removed and the signal is sent again.
    member private this.OnSignal(ctx: Runtime.InteropServices.PosixSignalContext) =
        ctx.Cancel <- true
        let number = if ctx.Signal = Runtime.InteropServices.PosixSignal.SIGINT then 2 else 15
        if Interlocked.Exchange(&signalled, 1) = 0 then
            log.Warning("Received {Signal}: stopping every executor, then exiting", ctx.Signal)
            let stop =
                task {
                    try
                        if Volatile.Read(&closed) = 0 then
                            do! this.CleanupAsync(Skip)
                        else
                            match Volatile.Read(&cleanupTask) with
                            | null -> ()
                            | t -> do! t.WaitAsync(TimeSpan.FromSeconds 30.0)
                    with _ -> ()
                    dropSignals ()
                    Native.signalSelf number
                }
            stop |> ignore

    member private this.WatchSignals() =
        if config.HandleSignals && not (OperatingSystem.IsWindows()) then
            let handler = Action<Runtime.InteropServices.PosixSignalContext>(fun ctx -> this.OnSignal ctx)
            lock signalGate (fun () ->
              signalRegistrations <-
                [ Runtime.InteropServices.PosixSignalRegistration.Create(Runtime.InteropServices.PosixSignal.SIGTERM, handler)
                  Runtime.InteropServices.PosixSignalRegistration.Create(Runtime.InteropServices.PosixSignal.SIGINT, handler) ])

    member private this.Start() =
        memoizer.Start()
        let context =
            { RunDir = runDir
              Report = fun e -> post (FromExecutor e)
              Log = log }
        for ex in executors.Values do
            ex.StartAsync(context, CancellationToken.None).GetAwaiter().GetResult()
        let finished = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
        loopTask <- finished.Task
        Thread(run finished, IsBackground = true, Name = "parsl-kernel").Start()
        this.WatchSignals()
        monitor.Start()
        log.Information("Parsl.NET {Version} loaded; run directory {RunDir}; executors {Executors}",
                        typeof<DataFlowKernel>.Assembly.GetName().Version, runDir, String.Join(", ", userLabels))

    /// Loads a kernel: validates the configuration (raising `ConfigurationError` naming the field), creates
    /// the numbered run directory, and starts the executors.
    static member Load(config: Config) : DataFlowKernel =
        if obj.ReferenceEquals(config, null) then nullArg "config"
        match Config.validate config @ Parsl.Monitoring.Monitor.Validate config.Monitoring with
        | [] -> ()
        | [ e ] -> raise e
        | e :: rest ->
            raise (ConfigurationError(e.Field, e.Message.Substring(e.Field.Length + 2) + " (and: " + String.Join("; ", rest |> List.map (fun r -> r.Message)) + ")"))
        let runDir =
            try
                RunDir.create config.RunDir
            with
            | :? IO.IOException
            | :? UnauthorizedAccessException
            | :? NotSupportedException
            | :? ArgumentException as e ->
                raise (
                    ConfigurationError(
                        "Config.RunDir",
                        sprintf "the run directory cannot be created under '%s' (%s); choose a directory you can write to" config.RunDir e.Message)
                )
        let log = RunDir.logger runDir config.InitializeLogging config.LogLevel config.LogSinks
        let executors = Dictionary<string, IExecutor>()
        let userExecutors = if config.Executors.IsEmpty then [ ThreadPoolExecutor() :> IExecutor ] else config.Executors
        for e in userExecutors do
            executors[e.Label] <- e
        executors[Config.InternalLabel] <- ThreadPoolExecutor(Config.InternalLabel, config.InternalTasksMaxThreads)
        let dfk =
            try
                new DataFlowKernel(config, runDir, log, executors)
            with _ ->
                // A bad checkpoint is found while the kernel is built: close the log file it opened.
                match log with
                | :? IDisposable as d -> d.Dispose()
                | _ -> ()
                reraise ()
        dfk.Start()
        dfk

    /// Loads a kernel with Parsl's defaults (one ThreadPoolExecutor).
    static member Load() = DataFlowKernel.Load Config.defaults

    /// The configuration.
    member _.Config = config
    /// This run's directory (`runinfo/NNN`).
    member _.RunDir = runDir
    /// The run's logger (`parsl.log`).
    member _.Log = log
    /// The executors' labels (without the internal one).
    member _.ExecutorLabels: string list = List.ofArray userLabels
    /// The executor with this label.
    member _.Executor(label: string) : IExecutor =
        match executors.TryGetValue label with
        | true, e -> e
        | _ -> raise (ConfigurationError("executors", sprintf "no executor is labelled '%s'; configured: %s" label (String.Join(", ", userLabels))))
    /// How many tasks ended in each final state so far.
    member _.FinalCounts: IReadOnlyDictionary<TaskState, int> = countFinals ()
    /// Monitoring's events (`IObservable`), live counts by state and rows written; None when
    /// `Config.Monitoring` is off.
    member _.Monitoring: Parsl.Monitoring.MonitoringHandle option = monitor.Handle
    /// Whether `CleanupAsync` has run.
    member _.IsClosed = Volatile.Read(&closed) = 1

    /// Checks the executor labels an app names: each must be configured (else `ConfigurationError`).
    member _.CheckLabels(appName: string, labels: string list) =
        for l in labels do
            if not (executors.ContainsKey l) then
                raise (
                    ConfigurationError(
                        "executors",
                        sprintf "app '%s' names the executor '%s', which is not configured; configured labels: %s"
                            appName l (String.Join(", ", userLabels)))
                )

    member internal this.Submit<'T>(appName, kind, labels: string list, slots: ArgSlot[], build, resources, joinShape) : AppFuture<'T> =
        this.SubmitWith<'T>(appName, kind, labels, slots, build, resources, joinShape, None)

    /// The executor label a call of an app will run on (Parsl chooses once, at submit).
    member internal _.ChooseExecutor(kind: AppKind, labels: string list) =
        if kind = JoinApp then Config.InternalLabel else choose labels

    /// `Submit`, memoized when `memo` is given.
    member internal this.SubmitWith<'T>(appName, kind, labels: string list, slots: ArgSlot[], build, resources, joinShape, memo: MemoSpec option) : AppFuture<'T> =
        if Volatile.Read(&closed) = 1 then
            raise (NoDataFlowKernelError(sprintf "Cannot call app '%s': its DataFlowKernel was cleaned up" appName))
        // Back-pressure: wait for a slot, except on executor threads (a task submitting children must not block).
        let holdsSlot =
            not (isNull inFlight) && isNull Blocking.Hook
            && (inFlight.Wait(); true)
        if holdsSlot && Volatile.Read(&closed) = 1 then
            inFlight.Release() |> ignore
            raise (NoDataFlowKernelError(sprintf "Cannot call app '%s': its DataFlowKernel was cleaned up" appName))
        let id = TaskId(Interlocked.Increment(&taskCount))
        let label = this.ChooseExecutor(kind, labels)
        let future = AppFuture<'T>(id, appName, this)
        let slots =
            if config.DependencyResolver = Deep then
                slots
                |> Array.map (fun s ->
                    match s with
                    | Plain v when not (isNull v) && not (DeepResolver.gather v).IsEmpty -> Nested v
                    | s -> s)
            else
                slots
        post (
            Submitted
                { Id = id
                  AppName = appName
                  Kind = kind
                  Executor = label
                  Slots = slots
                  Future = future
                  Build = build
                  Resources = resources
                  JoinShape = joinShape
                  HoldsSlot = holdsSlot
                  JoinFutures = [||]
                  JoinCombine = fun _ -> null
                  Memo = memo }
        )
        future

    /// Writes a checkpoint of the cached results gathered since the last one (Parsl's `checkpoint()`; the
    /// way to checkpoint in `Manual` mode). Returns the number of records written; 0 when checkpoints are off.
    member _.CheckpointAsync() : Task<int> = memoizer.CheckpointAsync()

    /// This run's checkpoint file (`runinfo/NNN/checkpoint/tasks.ckpt`); it exists once a record was written.
    member _.CheckpointFile = memoizer.CheckpointFile

    /// Waits until every task submitted so far is final (Parsl's `wait_for_current_tasks`).
    member _.WaitForCurrentTasksAsync() : Task =
        let t = TaskCompletionSource<unit>(TaskCreationOptions.RunContinuationsAsynchronously)
        post (WaitIdle t)
        t.Task :> Task

    /// Waits until every task submitted so far is final, blocking.
    member this.WaitForCurrentTasks() = this.WaitForCurrentTasksAsync().GetAwaiter().GetResult()

    /// Shuts the kernel down (Parsl's `cleanup`): no app can be called afterwards; tries already running
    /// finish (unless `skip`), every executor and process it started is stopped, and futures of tasks that
    /// did not finish fail with `KernelShutdownError`. `mode` defaults to the config's `ExitMode`.
    /// A second call raises `NoDataFlowKernelError`.
    member this.CleanupAsync(?mode: ExitMode) : Task =
        let mode = defaultArg mode config.ExitMode
        if Interlocked.Exchange(&closed, 1) = 1 then
            raise (NoDataFlowKernelError "CleanupAsync was already called on this DataFlowKernel")
        let t = this.Cleanup mode
        Volatile.Write(&cleanupTask, t)
        t

    member private this.Cleanup(mode: ExitMode) : Task =
        task {
            if mode = Wait then do! this.WaitForCurrentTasksAsync()
            do! monitor.BeforeShutdownAsync()
            post Closing
            if mode = Skip then
                // Skip fails every unfinished future with KernelShutdownError before the executors stop their tries, so
                // that a try's own end (a killed shell app, a cancelled token) cannot be what the future reports.
                let abandoned = TaskCompletionSource<unit>(TaskCreationOptions.RunContinuationsAsynchronously)
                post (AbandonAll abandoned)
                do! abandoned.Task
            // User executors first (their tries may still submit joins), then the internal one.
            for KeyValue(label, ex) in executors do
                if label <> Config.InternalLabel then
                    try
                        do! ex.ShutdownAsync(mode <> Skip)
                    with e ->
                        log.Error(e, "Executor {Label} failed to shut down", label)
            do! executors[Config.InternalLabel].ShutdownAsync(mode <> Skip)
            let abandoned = TaskCompletionSource<unit>(TaskCreationOptions.RunContinuationsAsynchronously)
            post (AbandonAll abandoned)
            do! abandoned.Task
            mailbox.Complete()
            do! loopTask
            // After the loop: every result that will ever be recorded has been (Parsl closes its memoizer
            // before the executors, losing results of tries that finish during shutdown).
            do! memoizer.CloseAsync()
            do! monitor.CloseAsync()
            log.Information("DataFlowKernel cleaned up; final task states: {Counts}",
                            String.Join(", ", countFinals () |> Seq.map (fun (KeyValue(k, v)) -> sprintf "%s=%d" (TaskState.name k) v)))
            cleanedUp <- true
            // A signal's own handler drops these after the cleanup it started (then sends the signal again).
            if Volatile.Read(&signalled) = 0 then dropSignals ()
            match log with
            | :? IDisposable as d -> d.Dispose()
            | _ -> ()
        }
        :> Task

    interface IFutureOwner with
        member _.Cancel id = post (CancelRequested id)

    interface IAsyncDisposable with
        member this.DisposeAsync() =
            if Volatile.Read(&closed) = 1 then ValueTask()
            else ValueTask(this.CleanupAsync())

    interface IDisposable with
        member this.Dispose() =
            if Volatile.Read(&closed) = 0 then this.CleanupAsync().GetAwaiter().GetResult()
