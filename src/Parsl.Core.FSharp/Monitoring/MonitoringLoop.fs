namespace Parsl.Monitoring

open System
open System.Collections.Generic
open System.Diagnostics
open System.Diagnostics.Metrics
open System.Threading
open System.Threading.Channels
open System.Threading.Tasks
open Microsoft.Data.Sqlite
open Parsl
open Parsl.Node.Monitoring

/// A task changed state: what subscribers of `DataFlowKernel.Monitoring` receive.
[<Sealed; AllowNullLiteral>]
type TaskStateEvent(taskId: int, tryId: int, appName: string, state: TaskState, timestampUtc: DateTime) =
    /// The task (Parsl's `task_id`).
    member _.TaskId = taskId
    /// The try the state belongs to (Parsl's `try_id`).
    member _.TryId = tryId
    /// The app's name.
    member _.AppName = appName
    /// The new state.
    member _.State = state
    /// When, in UTC.
    member _.TimestampUtc = timestampUtc
    override _.ToString() = sprintf "task %d try %d (%s) -> %s" taskId tryId appName (TaskState.name state)

/// Requests to the monitoring actor.
type MonitoringMessage =
    /// Something happened.
    | Record of MonitoringRecord
    /// Write what is buffered, then answer.
    | FlushNow of TaskCompletionSource<unit>
    /// Write the workflow's end, close the database, stop.
    | Finish of TaskCompletionSource<unit>

/// How the actor is set up.
type MonitoringSettings =
    { RunId: string
      /// None: no database (events, counts and spans only).
      DatabasePath: string option
      MaxPageCount: int option
      WorkflowName: string
      WorkflowVersion: string
      RunDir: string
      ResourceInterval: TimeSpan
      Log: Serilog.ILogger }

/// Rows written so far, per table.
type RowCounts =
    { Workflow: int64; Task: int64; Try: int64; Status: int64; Resource: int64; Node: int64; Block: int64
      /// Rows that could not be written (a full or failing disk), dropped after being logged.
      Dropped: int64 }

/// The handle of the running monitoring actor.
[<Sealed>]
type MonitoringHandle internal (channel: Channel<MonitoringMessage>, counts: int[], rows: int64[], completion: Task, runId: string,
                                dbPath: string option) =
    let mutable subscribers: IObserver<TaskStateEvent>[] = [||]
    let mutable dashboard: string = null

    /// Sends a record. Never blocks.
    member _.Post(r: MonitoringRecord) = channel.Writer.TryWrite(Record r) |> ignore
    /// Sends a request. Never blocks.
    member internal _.Send(m: MonitoringMessage) = channel.Writer.TryWrite m
    /// Ends when the loop ended.
    member _.Completion = completion
    /// The run's id (Parsl's `run_id`).
    member _.RunId = runId
    /// The database file, when one is written.
    member _.DatabasePath = dbPath
    /// The dashboard's address when `MonitoringConfig.Dashboard` started one (else null).
    member _.DashboardAddress = Volatile.Read(&dashboard)
    member internal _.SetDashboardAddress(a: string) = Volatile.Write(&dashboard, a)
    /// Whether anyone listens for events (records are only worth sending then, or when a database is written).
    member _.HasSubscribers = subscribers.Length > 0
    member internal _.Subscribers = Volatile.Read(&subscribers)

    /// Tasks now in each state (final states: tasks that ended there), by Parsl's state value.
    member _.Count(state: TaskState) = Volatile.Read(&counts[TaskState.value state])

    /// Waits until every record posted so far is handled and written (events raised, counts updated).
    member _.FlushAsync() : Task =
        let t = TaskCompletionSource<unit>(TaskCreationOptions.RunContinuationsAsynchronously)
        if channel.Writer.TryWrite(FlushNow t) then t.Task :> Task else Task.CompletedTask

    /// Rows written so far.
    member _.Rows =
        { Workflow = Volatile.Read(&rows[0]); Task = Volatile.Read(&rows[1]); Try = Volatile.Read(&rows[2])
          Status = Volatile.Read(&rows[3]); Resource = Volatile.Read(&rows[4]); Node = Volatile.Read(&rows[5])
          Block = Volatile.Read(&rows[6]); Dropped = Volatile.Read(&rows[7]) }

    interface IObservable<TaskStateEvent> with
        member _.Subscribe(o: IObserver<TaskStateEvent>) =
            if isNull o then nullArg "observer"
            let rec add () =
                let old = Volatile.Read(&subscribers)
                if not (obj.ReferenceEquals(Interlocked.CompareExchange(&subscribers, Array.append old [| o |], old), old)) then add ()
            add ()
            { new IDisposable with
                member _.Dispose() =
                    let rec remove () =
                        let old = Volatile.Read(&subscribers)
                        let next = old |> Array.filter (fun s -> not (obj.ReferenceEquals(s, o)))
                        if not (obj.ReferenceEquals(Interlocked.CompareExchange(&subscribers, next, old), old)) then remove ()
                    remove () }

/// The monitoring actor (Parsl's `DatabaseManager`, in process): one loop owns the database connection, the
/// rows not yet written, the live counts and the spans. The kernel only posts records, so the kernel's path
/// never waits on the disk; records that arrive together are written in one transaction.
[<RequireQualifiedAccess>]
module MonitoringLoop =
    /// The name of the `ActivitySource` (one span per try) and of the `Meter`.
    [<Literal>]
    let SourceName = "Parsl"

    // Rows are kept whole in memory until written, so a row updated several times in one batch is written once.
    [<AllowNullLiteral>]
    type private TaskRow() =
        member val Id = 0 with get, set
        member val App = "" with get, set
        member val Executor = "" with get, set
        member val Depends = "" with get, set
        member val Memoize = false with get, set
        member val Stdout: string = null with get, set
        member val Stderr: string = null with get, set
        member val Invoked = DateTime.MinValue with get, set
        member val Returned: Nullable<DateTime> = Nullable() with get, set
        member val FailCount = 0 with get, set
        member val FailCost = 0.0 with get, set
        member val State = Pending with get, set
        member val Dirty = false with get, set
        member val Written = false with get, set

    [<AllowNullLiteral>]
    type private TryRow() =
        member val Task = 0 with get, set
        member val Try = 0 with get, set
        member val Executor = "" with get, set
        member val Hostname: string = null with get, set
        member val BlockId: string = null with get, set
        member val Launched: Nullable<DateTime> = Nullable() with get, set
        member val Running: Nullable<DateTime> = Nullable() with get, set
        member val RunningEnded: Nullable<DateTime> = Nullable() with get, set
        member val Returned: Nullable<DateTime> = Nullable() with get, set
        member val FailType: string = null with get, set
        member val FailMessage: string = null with get, set
        member val Stdout: string = null with get, set
        member val Stderr: string = null with get, set
        member val Ended = false with get, set
        member val Dirty = false with get, set
        member val Written = false with get, set

    type private Loop(settings: MonitoringSettings, channel: Channel<MonitoringMessage>, counts: int[], rows: int64[]) =
        let log = settings.Log
        let source = new ActivitySource(SourceName, "0.1.0")
        let meter = new Meter(SourceName, "0.1.0")
        let submitted = meter.CreateCounter<int64>("parsl.tasks.submitted", description = "Tasks submitted")
        let finished = meter.CreateCounter<int64>("parsl.tasks.finished", description = "Tasks that reached a final state, by state")
        let triesLaunched = meter.CreateCounter<int64>("parsl.tries.launched", description = "Tries handed to executors")
        let triesFailed = meter.CreateCounter<int64>("parsl.tries.failed", description = "Tries that failed")
        let mutable conn: SqliteConnection = null
        let mutable exitHandler: EventHandler = null
        let mutable signals: Runtime.InteropServices.PosixSignalRegistration list = []
        let tasks = Dictionary<int, TaskRow>()
        let tries = Dictionary<struct (int * int), TryRow>()
        let dirtyTasks = List<TaskRow>()
        let dirtyTries = List<TryRow>()
        let statuses = List<struct (int * int * string * DateTime)>()
        let resources = List<ResourceSample>()
        let nodeRows = List<struct (NodeSnapshot * DateTime)>()
        let blockRows = List<struct (string * BlockSnapshot * DateTime)>()
        // Workers' reports about tries whose rows were written and released (they travel by file, so may come late).
        let lateTries = List<struct (int * int * string * string * Nullable<DateTime> * Nullable<DateTime>)>()
        let lastNode = Dictionary<string, NodeSnapshot>()
        let lastBlock = Dictionary<string, string>()
        let mutable failedWrites = 0
        let mutable tasksCompleted = 0
        let mutable tasksFailed = 0
        let host = Environment.MachineName

        do
            meter.CreateObservableGauge<int>(
                "parsl.tasks.live",
                (fun () ->
                    TaskState.all
                    |> Seq.filter (TaskState.isFinal >> not)
                    |> Seq.map (fun s -> Measurement<int>(Volatile.Read(&counts[TaskState.value s]), KeyValuePair("state", box (TaskState.name s))))),
                description = "Tasks now in each state")
            |> ignore

        let param (cmd: SqliteCommand) (names: string list) =
            for n in names do
                cmd.Parameters.Add(SqliteParameter(n, null)) |> ignore
            cmd

        let value (x: obj) = if isNull x then box DBNull.Value else x
        let time (t: Nullable<DateTime>) = if t.HasValue then box (ParslFormat.time t.Value) else box DBNull.Value

        member _.Source = source
        member _.Meter = meter

        member _.Open() =
            match settings.DatabasePath with
            | None -> ()
            | Some path ->
                try
                    let c = Database.openFile path settings.MaxPageCount
                    try
                        let dead = Database.markDeadRuns c host
                        if not dead.IsEmpty then
                            log.Warning("Monitoring: marked {Count} earlier run(s) whose process died as 'died': {Runs}", dead.Length, String.Join(", ", dead))
                        use cmd = c.CreateCommand()
                        cmd.CommandText <-
                            "INSERT INTO workflow (run_id, workflow_name, workflow_version, time_began, time_completed, host, user, rundir, tasks_failed_count, tasks_completed_count, status, pid, process_start) VALUES ($r, $n, $v, $b, NULL, $h, $u, $d, 0, 0, 'running', $p, $s)"
                        let pid = Environment.ProcessId
                        for k, v in
                            [ "$r", box settings.RunId; "$n", box settings.WorkflowName; "$v", box settings.WorkflowVersion
                              "$b", box (ParslFormat.time DateTime.UtcNow); "$h", box host; "$u", box Environment.UserName
                              "$d", box settings.RunDir; "$p", box pid
                              "$s", (match Database.processStart pid with Some s -> box s | None -> box DBNull.Value) ] do
                            cmd.Parameters.AddWithValue(k, v) |> ignore
                        cmd.ExecuteNonQuery() |> ignore
                        rows[0] <- 1L
                        conn <- c
                        // A process ended by a signal (SIGTERM, Ctrl+C) without cleaning up its kernel: its run is
                        // marked at once, on a connection of its own (the loop's may be mid-write). SIGKILL cannot
                        // be caught: the next open of the database marks that run.
                        let runId = settings.RunId
                        exitHandler <-
                            EventHandler(fun _ _ ->
                                try
                                    use x = Database.openFile path None
                                    use cmd = x.CreateCommand()
                                    cmd.CommandText <- "UPDATE workflow SET time_completed = $t, status = 'died' WHERE run_id = $r AND time_completed IS NULL"
                                    cmd.Parameters.AddWithValue("$t", ParslFormat.time DateTime.UtcNow) |> ignore
                                    cmd.Parameters.AddWithValue("$r", runId) |> ignore
                                    cmd.ExecuteNonQuery() |> ignore
                                with e ->
                                    eprintfn "Parsl monitoring: could not mark the run as died at exit: %s" e.Message)
                        AppDomain.CurrentDomain.ProcessExit.AddHandler exitHandler
                        // The runtime's default for these signals ends the process without ProcessExit: mark first,
                        // then let the default go on.
                        signals <-
                            [ for s in [ Runtime.InteropServices.PosixSignal.SIGTERM; Runtime.InteropServices.PosixSignal.SIGINT ] ->
                                  Runtime.InteropServices.PosixSignalRegistration.Create(s, fun _ -> exitHandler.Invoke(null, EventArgs.Empty)) ]
                    with e ->
                        c.Dispose()
                        raise e
                with e ->
                    log.Error(e, "Monitoring: cannot open the database {Path}; the workflow runs without it", path)

        member private _.Task(id) =
            match tasks.TryGetValue id with
            | true, t -> t
            | _ -> null

        member private this.TryRow(task, tryId) =
            match tries.TryGetValue(struct (task, tryId)) with
            | true, t -> t
            | _ ->
                let t = TryRow(Task = task, Try = tryId)
                match this.Task task with
                | null -> ()
                | tr -> t.Executor <- tr.Executor
                tries[struct (task, tryId)] <- t
                t

        member private _.MarkTask(t: TaskRow) =
            if not t.Dirty then
                t.Dirty <- true
                dirtyTasks.Add t

        member private _.MarkTry(t: TryRow) =
            if not t.Dirty then
                t.Dirty <- true
                dirtyTries.Add t

        member private this.Raise(task: int, tryId: int, state: TaskState, time: DateTime, subscribers: IObserver<TaskStateEvent>[]) =
            if subscribers.Length > 0 then
                let app = match this.Task task with null -> "" | t -> t.App
                let e = TaskStateEvent(task, tryId, app, state, time)
                for s in subscribers do
                    try
                        s.OnNext e
                    with ex ->
                        log.Warning(ex, "Monitoring: a task-state subscriber threw; it stays subscribed")

        member private this.Status(task, tryId, state: TaskState, time, subscribers) =
            if not (isNull conn) then statuses.Add(struct (task, tryId, TaskState.name state, time))
            this.Raise(task, tryId, state, time, subscribers)

        member private _.Move(task: TaskRow, into: TaskState) =
            let from = TaskState.value task.State
            Interlocked.Decrement(&counts[from]) |> ignore
            Interlocked.Increment(&counts[TaskState.value into]) |> ignore
            task.State <- into

        member this.Handle(r: MonitoringRecord, subscribers: IObserver<TaskStateEvent>[]) =
            match r with
            | TaskSubmitted(id, app, executor, depends, memoize, time) ->
                let t = TaskRow(Id = id, App = app, Executor = executor, Depends = ParslFormat.depends depends, Memoize = memoize, Invoked = time)
                tasks[id] <- t
                Interlocked.Increment(&counts[TaskState.value Pending]) |> ignore
                submitted.Add 1L
                this.MarkTask t
            | StateChanged(id, tryId, state, time) ->
                match this.Task id with
                | null -> ()
                | t ->
                    if state = Launched then triesLaunched.Add 1L
                    // Running/RunningEnded come from the workers (TryRunning); the kernel never reports them.
                    this.Move(t, state)
                    this.Status(id, tryId, state, time, subscribers)
            | TryLaunched(id, tryId, executor, stdout, stderr, time) ->
                let tr = this.TryRow(id, tryId)
                tr.Executor <- executor
                tr.Launched <- Nullable time
                tr.Stdout <- stdout
                tr.Stderr <- stderr
                match this.Task id with
                | null -> ()
                | t ->
                    if not (isNull stdout) || not (isNull stderr) then
                        t.Stdout <- stdout
                        t.Stderr <- stderr
                        this.MarkTask t
                this.MarkTry tr
            | TryRunning(id, tryId, hostname, blockId, time) when not (tries.ContainsKey(struct (id, tryId))) ->
                if not (isNull conn) then
                    lateTries.Add(struct (id, tryId, hostname, blockId, Nullable time, Nullable()))
                    statuses.Add(struct (id, tryId, TaskState.name Running, time))
            | TryRunningEnded(id, tryId, time) when not (tries.ContainsKey(struct (id, tryId))) ->
                if not (isNull conn) then
                    lateTries.Add(struct (id, tryId, null, null, Nullable(), Nullable time))
                    statuses.Add(struct (id, tryId, TaskState.name RunningEnded, time))
            | TryRunning(id, tryId, hostname, blockId, time) ->
                let tr = this.TryRow(id, tryId)
                if not tr.Running.HasValue then
                    tr.Running <- Nullable time
                    tr.Hostname <- hostname
                    tr.BlockId <- blockId
                    this.MarkTry tr
                    match this.Task id with
                    | t when not (isNull t) && t.State = Launched && not tr.Ended ->
                        this.Move(t, Running)
                        this.Status(id, tryId, Running, time, subscribers)
                    | _ ->
                        // A worker's report that arrives after the try's end (it travels by file): the row and the
                        // status are still written, with the worker's time; counts and events have moved on.
                        if not (isNull conn) then statuses.Add(struct (id, tryId, TaskState.name Running, time))
            | TryRunningEnded(id, tryId, time) ->
                let tr = this.TryRow(id, tryId)
                if tr.Running.HasValue && not tr.RunningEnded.HasValue then
                    tr.RunningEnded <- Nullable time
                    this.MarkTry tr
                    match this.Task id with
                    | t when not (isNull t) && t.State = Running ->
                        this.Move(t, RunningEnded)
                        this.Status(id, tryId, RunningEnded, time, subscribers)
                    | _ -> if not (isNull conn) then statuses.Add(struct (id, tryId, TaskState.name RunningEnded, time))
            | TryEnded(id, tryId, failure, time) ->
                let tr = this.TryRow(id, tryId)
                // A body that ran (and so was `running`) ended: if its worker did not say so, the end says it.
                if tr.Running.HasValue && not tr.RunningEnded.HasValue then
                    tr.RunningEnded <- Nullable time
                    match this.Task id with
                    | null -> ()
                    | t when t.State = Running ->
                        this.Move(t, RunningEnded)
                        this.Status(id, tryId, RunningEnded, time, subscribers)
                    | _ -> ()
                tr.Returned <- Nullable time
                tr.Ended <- true
                match failure with
                | Some(ty, msg) ->
                    tr.FailType <- ty
                    tr.FailMessage <- msg
                    triesFailed.Add 1L
                | None -> ()
                this.MarkTry tr
                if source.HasListeners() then
                    let app = match this.Task id with null -> "" | t -> t.App
                    let start = if tr.Launched.HasValue then tr.Launched.Value else time
                    let tags =
                        [ KeyValuePair("parsl.task_id", box id); KeyValuePair("parsl.try_id", box tryId)
                          KeyValuePair("parsl.app", box app); KeyValuePair("parsl.executor", box tr.Executor) ]
                    match source.StartActivity("parsl.try " + app, ActivityKind.Internal, ActivityContext(), tags, null, DateTimeOffset(start)) with
                    | null -> ()
                    | a ->
                        match failure with
                        | Some(ty, msg) ->
                            a.SetStatus(ActivityStatusCode.Error, msg) |> ignore
                            a.SetTag("exception.type", ty) |> ignore
                        | None -> a.SetStatus(ActivityStatusCode.Ok) |> ignore
                        a.SetEndTime(time) |> ignore
                        a.Stop()
            | TaskFinal(id, state, failCount, failCost, time) ->
                match this.Task id with
                | null -> ()
                | t ->
                    t.Returned <- Nullable time
                    t.FailCount <- failCount
                    t.FailCost <- failCost
                    if t.State <> state then
                        this.Move(t, state)
                    if TaskState.isFailure state then tasksFailed <- tasksFailed + 1 else tasksCompleted <- tasksCompleted + 1
                    finished.Add(1L, KeyValuePair("state", box (TaskState.name state)))
                    this.MarkTask t
            | ExecutorSnapshot(label, nodes, blocks, time) ->
                for n in nodes do
                    let key = label + "/" + n.Uid
                    match lastNode.TryGetValue key with
                    | true, old when old = n -> ()
                    | _ ->
                        lastNode[key] <- n
                        if not (isNull conn) then nodeRows.Add(struct (n, time))
                for b in blocks do
                    let key = label + "/" + b.BlockId
                    match lastBlock.TryGetValue key with
                    | true, old when old = b.Status -> ()
                    | _ ->
                        lastBlock[key] <- b.Status
                        if not (isNull conn) then blockRows.Add(struct (label, b, time))
            | Resources samples -> if not (isNull conn) then resources.AddRange samples

        /// Writes every buffered row in one transaction. A failure (a full disk) is logged and the rows dropped.
        member _.Write() =
            let pending =
                dirtyTasks.Count + dirtyTries.Count + statuses.Count + resources.Count + nodeRows.Count + blockRows.Count + lateTries.Count
            if not (isNull conn) && pending > 0 then
                let run = settings.RunId
                try
                    use tx = conn.BeginTransaction()
                    if dirtyTasks.Count > 0 then
                        use cmd = conn.CreateCommand()
                        cmd.Transaction <- tx
                        cmd.CommandText <-
                            "INSERT OR REPLACE INTO task (task_id, run_id, task_depends, task_func_name, task_memoize, task_hashsum, task_inputs, task_outputs, task_stdin, task_stdout, task_stderr, task_time_invoked, task_time_returned, task_fail_count, task_fail_cost, task_executor, task_status_name) VALUES ($0, $1, $2, $3, $4, NULL, NULL, NULL, NULL, $5, $6, $7, $8, $9, $10, $11, $12)"
                        let ps = (param cmd [ for i in 0..12 -> sprintf "$%d" i ]).Parameters
                        cmd.Prepare()
                        for t in dirtyTasks do
                            ps[0].Value <- t.Id
                            ps[1].Value <- run
                            ps[2].Value <- t.Depends
                            ps[3].Value <- t.App
                            ps[4].Value <- (if t.Memoize then "True" else "False")
                            ps[5].Value <- value t.Stdout
                            ps[6].Value <- value t.Stderr
                            ps[7].Value <- ParslFormat.time t.Invoked
                            ps[8].Value <- time t.Returned
                            ps[9].Value <- t.FailCount
                            ps[10].Value <- t.FailCost
                            ps[11].Value <- t.Executor
                            ps[12].Value <- TaskState.name t.State
                            cmd.ExecuteNonQuery() |> ignore
                    if dirtyTries.Count > 0 then
                        use cmd = conn.CreateCommand()
                        cmd.Transaction <- tx
                        cmd.CommandText <-
                            "INSERT OR REPLACE INTO try (try_id, task_id, run_id, block_id, hostname, task_executor, task_try_time_launched, task_try_time_running, task_try_time_returned, task_fail_history, task_joins, task_fail_type, task_fail_message, task_stdout, task_stderr, task_try_time_running_ended) VALUES ($0, $1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10, $11, $12, $13, $14)"
                        let ps = (param cmd [ for i in 0..14 -> sprintf "$%d" i ]).Parameters
                        cmd.Prepare()
                        for t in dirtyTries do
                            ps[0].Value <- t.Try
                            ps[1].Value <- t.Task
                            ps[2].Value <- run
                            ps[3].Value <- value t.BlockId
                            ps[4].Value <- value t.Hostname
                            ps[5].Value <- t.Executor
                            ps[6].Value <- time t.Launched
                            ps[7].Value <- time t.Running
                            ps[8].Value <- time t.Returned
                            ps[9].Value <- value t.FailMessage
                            ps[10].Value <- value t.FailType
                            ps[11].Value <- value t.FailMessage
                            ps[12].Value <- value t.Stdout
                            ps[13].Value <- value t.Stderr
                            ps[14].Value <- time t.RunningEnded
                            cmd.ExecuteNonQuery() |> ignore
                    if lateTries.Count > 0 then
                        use cmd = conn.CreateCommand()
                        cmd.Transaction <- tx
                        cmd.CommandText <-
                            "UPDATE try SET hostname = COALESCE($h, hostname), block_id = COALESCE($b, block_id), task_try_time_running = COALESCE($r, task_try_time_running), task_try_time_running_ended = COALESCE($e, task_try_time_running_ended) WHERE try_id = $y AND task_id = $t AND run_id = $run"
                        let ps = (param cmd [ "$h"; "$b"; "$r"; "$e"; "$y"; "$t"; "$run" ]).Parameters
                        for struct (task, tryId, h, b, r, e) in lateTries do
                            ps[0].Value <- value h
                            ps[1].Value <- value b
                            ps[2].Value <- time r
                            ps[3].Value <- time e
                            ps[4].Value <- tryId
                            ps[5].Value <- task
                            ps[6].Value <- run
                            cmd.ExecuteNonQuery() |> ignore
                    if statuses.Count > 0 then
                        use cmd = conn.CreateCommand()
                        cmd.Transaction <- tx
                        cmd.CommandText <- "INSERT OR IGNORE INTO status (task_id, task_status_name, timestamp, run_id, try_id) VALUES ($0, $1, $2, $3, $4)"
                        let ps = (param cmd [ for i in 0..4 -> sprintf "$%d" i ]).Parameters
                        cmd.Prepare()
                        for struct (task, tryId, name, t) in statuses do
                            ps[0].Value <- task
                            ps[1].Value <- name
                            ps[2].Value <- ParslFormat.time t
                            ps[3].Value <- run
                            ps[4].Value <- tryId
                            cmd.ExecuteNonQuery() |> ignore
                    if resources.Count > 0 then
                        use cmd = conn.CreateCommand()
                        cmd.Transaction <- tx
                        cmd.CommandText <-
                            "INSERT OR IGNORE INTO resource (try_id, task_id, run_id, timestamp, resource_monitoring_interval, psutil_process_pid, psutil_process_memory_percent, psutil_process_children_count, psutil_process_time_user, psutil_process_time_system, psutil_process_memory_virtual, psutil_process_memory_resident, psutil_process_disk_read, psutil_process_disk_write, psutil_process_status, psutil_cpu_num, psutil_process_num_ctx_switches_voluntary, psutil_process_num_ctx_switches_involuntary) VALUES ($0, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
                        let ps = (param cmd [ for i in 0..17 -> sprintf "$%d" i ]).Parameters
                        cmd.Prepare()
                        for s in resources do
                            let vs: obj[] =
                                [| s.Try; s.Task; run; ParslFormat.time s.TimestampUtc; settings.ResourceInterval.TotalSeconds; s.Pid
                                   s.MemoryPercent; float s.ChildrenCount; s.TimeUser; s.TimeSystem; s.MemoryVirtual; s.MemoryResident
                                   s.DiskRead; s.DiskWrite; s.Status; string s.CpuNum; s.CtxSwitchesVoluntary; s.CtxSwitchesInvoluntary |]
                            for i in 0 .. vs.Length - 1 do
                                ps[i].Value <- vs[i]
                            cmd.ExecuteNonQuery() |> ignore
                    if nodeRows.Count > 0 then
                        use cmd = conn.CreateCommand()
                        cmd.Transaction <- tx
                        cmd.CommandText <-
                            "INSERT INTO node (run_id, hostname, uid, block_id, cpu_count, total_memory, active, worker_count, python_v, timestamp, last_heartbeat) VALUES ($0, $1, $2, $3, $4, $5, $6, $7, $8, $9, $9)"
                        let ps = (param cmd [ for i in 0..9 -> sprintf "$%d" i ]).Parameters
                        for struct (n, t) in nodeRows do
                            let vs: obj[] =
                                [| run; n.Hostname; n.Uid; n.BlockId
                                   (match n.CpuCount with Some c -> box c | None -> box DBNull.Value)
                                   (match n.TotalMemory with Some m -> box m | None -> box DBNull.Value)
                                   n.Active; n.WorkerCount; Environment.Version.ToString(); ParslFormat.time t |]
                            for i in 0 .. vs.Length - 1 do
                                ps[i].Value <- vs[i]
                            cmd.ExecuteNonQuery() |> ignore
                    if blockRows.Count > 0 then
                        use cmd = conn.CreateCommand()
                        cmd.Transaction <- tx
                        cmd.CommandText <- "INSERT OR IGNORE INTO block (run_id, executor_label, block_id, job_id, timestamp, status) VALUES ($0, $1, $2, $3, $4, $5)"
                        let ps = (param cmd [ for i in 0..5 -> sprintf "$%d" i ]).Parameters
                        for struct (label, b, t) in blockRows do
                            let vs: obj[] =
                                [| run; label; b.BlockId; (match b.JobId with Some j -> box j | None -> box DBNull.Value); ParslFormat.time t; b.Status |]
                            for i in 0 .. vs.Length - 1 do
                                ps[i].Value <- vs[i]
                            cmd.ExecuteNonQuery() |> ignore
                    tx.Commit()
                    for t in dirtyTasks do
                        if not t.Written then
                            t.Written <- true
                            Interlocked.Increment(&rows[1]) |> ignore
                    for t in dirtyTries do
                        if not t.Written then
                            t.Written <- true
                            Interlocked.Increment(&rows[2]) |> ignore
                    Interlocked.Add(&rows[3], int64 statuses.Count) |> ignore
                    Interlocked.Add(&rows[4], int64 resources.Count) |> ignore
                    Interlocked.Add(&rows[5], int64 nodeRows.Count) |> ignore
                    Interlocked.Add(&rows[6], int64 blockRows.Count) |> ignore
                with e ->
                    failedWrites <- failedWrites + 1
                    Interlocked.Add(&rows[7], int64 pending) |> ignore
                    // Logged once, then every 100th time: a full disk must not flood the log it may share.
                    if failedWrites = 1 || failedWrites % 100 = 0 then
                        log.Error(e, "Monitoring: could not write {Rows} rows to the database ({Failures} failed writes so far); the workflow goes on without them",
                                  pending, failedWrites)
            // Rows of tasks and tries that will not change again are released.
            for t in dirtyTasks do
                t.Dirty <- false
                if t.Returned.HasValue then tasks.Remove t.Id |> ignore
            for t in dirtyTries do
                t.Dirty <- false
                if t.Ended then tries.Remove(struct (t.Task, t.Try)) |> ignore
            dirtyTasks.Clear()
            dirtyTries.Clear()
            statuses.Clear()
            lateTries.Clear()
            resources.Clear()
            nodeRows.Clear()
            blockRows.Clear()

        /// Writes the workflow's end and closes the database.
        member _.Close() =
            if not (isNull exitHandler) then AppDomain.CurrentDomain.ProcessExit.RemoveHandler exitHandler
            for r in signals do
                r.Dispose()
            if not (isNull conn) then
                try
                    use cmd = conn.CreateCommand()
                    // A run stopped by SIGTERM/SIGINT is cleaned up too (Config.HandleSignals), but it did not complete:
                    // the signal handler's 'died' stays, with the final counts.
                    cmd.CommandText <-
                        "UPDATE workflow SET time_completed = $t, tasks_completed_count = $c, tasks_failed_count = $f, status = CASE WHEN status = 'died' THEN 'died' ELSE 'completed' END WHERE run_id = $r"
                    cmd.Parameters.AddWithValue("$t", ParslFormat.time DateTime.UtcNow) |> ignore
                    cmd.Parameters.AddWithValue("$c", tasksCompleted) |> ignore
                    cmd.Parameters.AddWithValue("$f", tasksFailed) |> ignore
                    cmd.Parameters.AddWithValue("$r", settings.RunId) |> ignore
                    cmd.ExecuteNonQuery() |> ignore
                    use a = conn.CreateCommand()
                    a.CommandText <- "PRAGMA optimize;"
                    a.ExecuteNonQuery() |> ignore
                with e ->
                    log.Error(e, "Monitoring: could not record the workflow's end; the next open of the database marks it")
                conn.Dispose()
                conn <- null
            source.Dispose()
            meter.Dispose()

    /// Starts the actor: opens the database (recovering runs that died), records the workflow's start.
    /// A database that cannot be opened is logged; everything else still works.
    let start (settings: MonitoringSettings) : MonitoringHandle =
        let channel = Channel.CreateUnbounded<MonitoringMessage>(UnboundedChannelOptions(SingleReader = true))
        let counts = Array.zeroCreate<int> 12
        let rows = Array.zeroCreate<int64> 8
        let finished = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
        let handle = MonitoringHandle(channel, counts, rows, finished.Task, settings.RunId, settings.DatabasePath)
        let loop = Loop(settings, channel, counts, rows)
        loop.Open()
        let reader = channel.Reader
        let run () =
            task {
                let mutable go = true
                try
                    while go do
                        let! more = reader.WaitToReadAsync()
                        if not more then go <- false
                        else
                            let subscribers = handle.Subscribers
                            let mutable m = Unchecked.defaultof<MonitoringMessage>
                            let mutable n = 0
                            let waiters = List<TaskCompletionSource<unit>>()
                            // A bounded batch, so that a flood of records is still written as it comes.
                            while go && n < 100_000 && reader.TryRead(&m) do
                                n <- n + 1
                                match m with
                                | Record r ->
                                    try
                                        loop.Handle(r, subscribers)
                                    with e ->
                                        settings.Log.Error(e, "Monitoring: could not handle {Record}", sprintf "%A" r)
                                | FlushNow t -> waiters.Add t
                                | Finish t ->
                                    waiters.Add t
                                    go <- false
                            loop.Write()
                            for w in waiters do
                                w.TrySetResult() |> ignore
                finally
                    loop.Close()
                    // Nothing is written after the end: later requests are answered at once.
                    channel.Writer.TryComplete() |> ignore
                    let mutable m = Unchecked.defaultof<MonitoringMessage>
                    while reader.TryRead(&m) do
                        match m with
                        | FlushNow t
                        | Finish t -> t.TrySetResult() |> ignore
                        | Record _ -> ()
                    for s in handle.Subscribers do
                        try
                            s.OnCompleted()
                        with _ ->
                            ()
                    finished.TrySetResult() |> ignore
            }
        Task.Run<unit>(Func<Task<unit>>(run)) |> ignore
        handle
