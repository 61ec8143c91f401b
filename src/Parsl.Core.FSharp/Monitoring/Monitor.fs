namespace Parsl.Monitoring

open System
open System.Collections.Generic
open System.Threading.Tasks
open Parsl
open Parsl.Core
open Parsl.Executors

/// A running dashboard (from the Parsl.Dashboard package).
type IDashboard =
    inherit IAsyncDisposable
    /// Where it listens, as a URL a browser opens (with the token, when there is one).
    abstract Address: string

/// Finds the dashboard without the core referencing it: Parsl.Dashboard has a type
/// `Parsl.Dashboard.DashboardFactory` with a static `Start(database, address, port, token, runId)` returning an
/// `IDashboard`. Loaded by name when `MonitoringConfig.Dashboard` is on.
[<RequireQualifiedAccess>]
module DashboardPlugin =
    /// The assembly-qualified name of the factory.
    [<Literal>]
    let TypeName = "Parsl.Dashboard.DashboardFactory, Parsl.Dashboard"

    /// The factory's `Start` method, or None when Parsl.Dashboard is not referenced.
    let find () =
        match (try Type.GetType(TypeName, false) with _ -> null) with
        | null -> None
        | t -> Option.ofObj (t.GetMethod("Start", [| typeof<string>; typeof<string>; typeof<int>; typeof<string>; typeof<string> |]))

/// The kernel's side of monitoring: turns each kernel step into records for the monitoring actor, wraps thread-pool
/// tries so that they report `running`, polls the HTEx for managers and blocks, and starts the dashboard and the
/// progress display. Called on the kernel's loop only; it never waits on the disk.
[<Sealed>]
type internal Monitor(options: MonitoringConfig option, baseRunDir: string, runDir: string, log: Serilog.ILogger,
                      executors: IReadOnlyDictionary<string, IExecutor>, memoized: obj -> bool) =
    let handle =
        match options with
        | None -> None
        | Some o ->
            let runId = Guid.NewGuid().ToString()
            let started = DateTime.UtcNow
            Some(
                MonitoringLoop.start
                    { RunId = runId
                      DatabasePath =
                        if o.WriteDatabase then
                            Some(IO.Path.GetFullPath(defaultArg o.Database (IO.Path.Combine(baseRunDir, "monitoring.db"))))
                        else None
                      MaxPageCount = o.MaxPageCount
                      WorkflowName =
                        o.WorkflowName
                        |> Option.defaultWith (fun () ->
                            match Reflection.Assembly.GetEntryAssembly() with
                            | null -> "parsl"
                            | a -> a.GetName().Name)
                      WorkflowVersion = o.WorkflowVersion |> Option.defaultValue (ParslFormat.time started)
                      RunDir = runDir
                      ResourceInterval = o.ResourceMonitoringInterval
                      Log = log }
            )
    let sink = match handle with Some h -> h.Post | None -> ignore
    let threadPools =
        executors
        |> Seq.filter (fun (KeyValue(_, e)) -> e :? ThreadPoolExecutor)
        |> Seq.map (fun (KeyValue(l, _)) -> l)
        |> HashSet
    let radioDir =
        match options with
        | Some o when o.ResourceMonitoringEnabled ->
            let monitored = executors.Values |> Seq.choose (function :? IMonitoredExecutor as m -> Some m | _ -> None) |> List.ofSeq
            if monitored.IsEmpty then None
            else
                let dir = IO.Path.Combine(runDir, "monitor-fs-radio")
                try
                    RadioReader.create dir
                    // Before the executors start: their launch commands turn the workers' radio on.
                    for m in monitored do
                        m.EnableResourceMonitoring(dir, o.ResourceMonitoringInterval)
                    Some dir
                with e ->
                    log.Error(e, "Monitoring: cannot create {Dir}; no resource samples", dir)
                    None
        | _ -> None
    let mutable poller: ExecutorPollerHandle option = None
    let mutable dashboard: IDashboard option = None
    let mutable progress: IProgressDisplay option = None
    let host = Environment.MachineName

    let failure (e: exn) = Some(e.GetType().Name, e.Message)

    let tryOf (before: KernelState) (after: KernelState) (id: TaskId) =
        match Kernel.tryFind after id with
        | Some r -> r.Try
        | None ->
            match Kernel.tryFind before id with
            | Some r -> r.Try
            | None -> 0

    /// The monitoring actor's handle, when monitoring is on.
    member _.Handle = handle

    /// Whether anything is recorded.
    member _.Enabled = handle.IsSome

    /// Checks what can only be checked with the assemblies loaded: the dashboard package.
    static member Validate(options: MonitoringConfig option) =
        match options with
        | None -> []
        | Some o ->
            [ if o.Dashboard && not o.WriteDatabase then
                  ConfigurationError("MonitoringConfig.Dashboard", "reads the database: set WriteDatabase = true, or Dashboard = false")
              if o.Dashboard && (DashboardPlugin.find ()).IsNone then
                  ConfigurationError(
                      "MonitoringConfig.Dashboard",
                      "needs the Parsl.Dashboard package: add a reference to it, or set Dashboard = false") ]

    /// Starts the executor poller, the dashboard and the progress display.
    member _.Start() =
        match handle, options with
        | Some h, Some o ->
            let monitored =
                [ for KeyValue(l, e) in executors do
                      match e with
                      | :? IMonitoredExecutor as m -> yield l, m
                      | _ -> () ]
            if not monitored.IsEmpty then poller <- Some(ExecutorPoller.start monitored radioDir o.ExecutorPollInterval sink log)
            if o.Dashboard then
                match DashboardPlugin.find (), h.DatabasePath with
                | Some m, Some db ->
                    try
                        let d = m.Invoke(null, [| box db; box o.DashboardAddress; box o.DashboardPort; box (Option.toObj o.DashboardToken); box h.RunId |]) :?> IDashboard
                        dashboard <- Some d
                        h.SetDashboardAddress d.Address
                        // As Dask prints its dashboard's link at start.
                        Console.Error.WriteLine("Parsl dashboard: {0}", d.Address)
                        log.Information("Parsl dashboard at {Address}", d.Address)
                    with e ->
                        log.Error(e, "Monitoring: the dashboard could not start; the workflow goes on without it")
                | _ -> ()
            if o.Progress then progress <- Some(Progress.start h)
        | _ -> ()

    /// Records one kernel step: its event and the commands it produced (on the kernel's loop).
    member _.Step(before: KernelState, event: Event, commands: Command list, after: KernelState) =
        if handle.IsSome then
            let now = DateTime.UtcNow
            match event with
            | Submit spec ->
                let depends = [ for d in spec.Deps -> d.Value ] @ [ for f, _ in spec.FailedDeps do match f with Some t -> t.Value | None -> () ]
                sink (TaskSubmitted(spec.Id.Value, spec.AppName, spec.Executor, depends, memoized spec.Payload, now))
            | Event.TryEnded(id, tryId, result) ->
                match Kernel.tryFind before id with
                | Some r when r.Try = tryId.Value ->
                    let f =
                        match result with
                        | Succeeded _ -> None
                        | Threw(e, _) -> failure e
                    sink (MonitoringRecord.TryEnded(id.Value, tryId.Value, f, now))
                | _ -> ()
            | _ -> ()
            for c in commands do
                match c with
                | StateChanged(id, s) ->
                    // A failed try's state belongs to that try; the retry's `pending` to the next one.
                    let t = if s = FailRetryable then (match Kernel.tryFind before id with Some r -> r.Try | None -> 0) else tryOf before after id
                    sink (MonitoringRecord.StateChanged(id.Value, t, s, now))
                | Complete(id, _, final, _) ->
                    let count, cost =
                        match Kernel.tryFind before id with
                        | Some r ->
                            match event with
                            | Event.TryEnded(e, _, Threw _) when e = id -> r.FailCount + 1, r.FailCost
                            | _ -> r.FailCount, r.FailCost
                        | None -> 0, 0.0
                    sink (TaskFinal(id.Value, final, count, cost, now))
                | _ -> ()

    /// A try is about to be handed to its executor: records its launch; on the thread pool, wraps its body so
    /// that it reports `running` when it starts and `running_ended` when it returns.
    member _.Launching(label: string, t: ExecTask) : ExecTask =
        match handle with
        | None -> t
        | Some h ->
            let task, tryId = t.Id.Value, t.Try.Value
            let stdout, stderr =
                match t.Body with
                | Shell s -> (s.Stdout |> Option.map (fun p -> p.Path) |> Option.toObj), (s.Stderr |> Option.map (fun p -> p.Path) |> Option.toObj)
                | Function _ -> null, null
            h.Post(TryLaunched(task, tryId, label, stdout, stderr, DateTime.UtcNow))
            if not (threadPools.Contains label) then t
            else
                let running () = h.Post(TryRunning(task, tryId, host, null, DateTime.UtcNow))
                match t.Body with
                | Function f ->
                    let invoke = f.Invoke
                    let wrapped (args: obj[]) ct =
                        running ()
                        let r = invoke args ct
                        // An async body ends later: its try's end records `running_ended` then.
                        if not (r :? Task) then h.Post(TryRunningEnded(task, tryId, DateTime.UtcNow))
                        r
                    { t with Body = Function { f with Invoke = wrapped } }
                | Shell s ->
                    let build = s.BuildCommand
                    { t with Body = Shell { s with BuildCommand = fun () -> running (); build () } }

    /// Polls the executors one last time, while their managers are still connected.
    member _.BeforeShutdownAsync() : Task =
        task {
            match poller with
            | Some p ->
                let t = TaskCompletionSource<unit>(TaskCreationOptions.RunContinuationsAsynchronously)
                p.Post(PollNow t)
                let! _ = Task.WhenAny(t.Task, p.Completion)
                ()
            | None -> ()
        }

    /// Stops the poller, writes everything and the workflow's end, closes the database, stops the dashboard.
    member _.CloseAsync() : Task =
        task {
            match poller with
            | Some p ->
                let t = TaskCompletionSource<unit>(TaskCreationOptions.RunContinuationsAsynchronously)
                p.Post(StopPolling t)
                do! p.Completion
            | None -> ()
            match progress with
            | Some p -> do! p.DisposeAsync()
            | None -> ()
            match handle with
            | Some h ->
                let t = TaskCompletionSource<unit>(TaskCreationOptions.RunContinuationsAsynchronously)
                if h.Send(Finish t) then do! h.Completion
            | None -> ()
            match dashboard with
            | Some d -> do! d.DisposeAsync()
            | None -> ()
        }
