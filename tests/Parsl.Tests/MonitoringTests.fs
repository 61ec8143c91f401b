module Parsl.Tests.MonitoringTests

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.Diagnostics.Metrics
open System.IO
open System.Threading
open Expecto
open FsCheck
open Microsoft.Data.Sqlite
open Parsl
open Parsl.Monitoring
open Parsl.Node.Monitoring
open Parsl.Tests.TestUtil

/// A kernel with monitoring on (changed by `m`) and its own run directory.
let loadMonitored (m: MonitoringConfig -> MonitoringConfig) (f: Config -> Config) =
    load (fun c -> f { c with Monitoring = Some(m MonitoringConfig.defaults) })

let dbOf (dfk: DataFlowKernel) = (Option.get dfk.Monitoring).DatabasePath |> Option.get

/// Opens the database as a reader would, after the run.
let query (db: string) (sql: string) : obj list list =
    use c = Database.openRead db
    use cmd = c.CreateCommand()
    cmd.CommandText <- sql
    use r = cmd.ExecuteReader()
    [ while r.Read() do
          yield [ for i in 0 .. r.FieldCount - 1 -> if r.IsDBNull i then null else r.GetValue i ] ]

let scalar db sql = (query db sql).Head.Head

let counts db runId =
    use c = Database.openRead db
    Database.rowCounts c (Some runId)

let statusNames db (task: int) =
    query db (sprintf "SELECT task_status_name FROM status WHERE task_id = %d ORDER BY timestamp, rowid" task)
    |> List.map (fun r -> string r.Head)

let basic =
    testList "test_basic" [
        test "one app on the thread pool: one workflow, task and try row, its states, no resource, node or block rows" {
            let dfk = loadMonitored id id
            let runId = (Option.get dfk.Monitoring).RunId
            let db = dbOf dfk
            let square = App.func dfk (fun (x: int) -> x * x)
            Expect.equal (await (square (Arg.value 5)).Task) 25 "result"
            (dfk :> IDisposable).Dispose()
            let n = counts db runId
            Expect.equal n["workflow"] 1L "one workflow row"
            Expect.equal n["task"] 1L "one task row"
            Expect.equal n["try"] 1L "one try row"
            Expect.equal n["resource"] 0L "the thread pool records no resources, as Parsl"
            Expect.equal n["node"] 0L "no managers"
            Expect.equal n["block"] 0L "no blocks"
            Expect.equal (statusNames db 0) [ "pending"; "launched"; "running"; "running_ended"; "exec_done" ] "every state, in order"
            let w = (query db "SELECT time_began, time_completed, tasks_completed_count, tasks_failed_count, status, workflow_name, host, rundir FROM workflow").Head
            Expect.isNotNull w[0] "time_began"
            Expect.isNotNull w[1] "time_completed"
            Expect.equal (Convert.ToInt32 w[2]) 1 "tasks_completed_count"
            Expect.equal (Convert.ToInt32 w[3]) 0 "tasks_failed_count"
            Expect.equal (string w[4]) "completed" "status"
            Expect.equal (string w[7]) dfk.RunDir "rundir"
            let began = ParslFormat.parseTime (string w[0])
            let completed = ParslFormat.parseTime (string w[1])
            Expect.isTrue (completed >= began) "completed after it began"
            Expect.isTrue (abs (began - DateTime.UtcNow).TotalMinutes < 10.0) "Parsl's local-time text"
            let t = (query db "SELECT task_func_name, task_time_invoked, task_time_returned, task_fail_count, task_memoize, task_executor FROM task").Head
            Expect.isTrue ((string t[0]).Length > 0) "task_func_name"
            Expect.isNotNull t[1] "task_time_invoked"
            Expect.isNotNull t[2] "task_time_returned"
            Expect.equal (Convert.ToInt32 t[3]) 0 "no failures"
            Expect.equal (string t[4]) "False" "not memoized"
            Expect.equal (string t[5]) "threads" "executor"
            let tr = (query db "SELECT task_executor, task_try_time_launched, task_try_time_running, task_try_time_returned, hostname FROM try").Head
            Expect.equal (string tr[0]) "threads" "try's executor"
            for i in 1..3 do Expect.isNotNull tr[i] "try times"
            Expect.equal (string tr[4]) Environment.MachineName "hostname"
        }

        test "one app on the HTEx: node and block rows, the try's host and block" {
            let htex = Parsl.Executors.HighThroughputExecutor(HtexTests.fastOptions id)
            let dfk = loadMonitored (fun m -> { m with ExecutorPollInterval = TimeSpan.FromMilliseconds 200.0 }) (fun c -> { c with Executors = [ htex ] })
            let runId = (Option.get dfk.Monitoring).RunId
            let db = dbOf dfk
            let square = App.func dfk (fun (x: int) -> x * x)
            Expect.equal (await (square (Arg.value 6)).Task) 36 "result"
            (dfk :> IDisposable).Dispose()
            let n = counts db runId
            Expect.equal n["workflow"] 1L "one workflow row"
            Expect.equal n["task"] 1L "one task row"
            Expect.equal n["try"] 1L "one try row"
            Expect.isGreaterThanOrEqual n["node"] 1L "a node row per manager"
            Expect.isGreaterThanOrEqual n["block"] 1L "block rows"
            let node = (query db "SELECT hostname, uid, block_id, worker_count, cpu_count, python_v FROM node").Head
            Expect.equal (string node[0]) Environment.MachineName "the manager's host"
            Expect.equal (Convert.ToInt32 node[3]) 2 "its workers"
            Expect.isNotNull node[5] "runtime version"
            let blocks = query db "SELECT block_id, status, executor_label FROM block" |> List.map (fun r -> string r[1])
            Expect.contains blocks "RUNNING" "the block ran"
            Expect.equal (string (scalar db "SELECT task_executor FROM try")) (htex :> Parsl.Executors.IExecutor).Label "the try's executor"
            Expect.isGreaterThanOrEqual n["resource"] 1L "resource rows from the worker"
            let res = (query db "SELECT psutil_process_pid, psutil_process_memory_resident, psutil_process_status, resource_monitoring_interval FROM resource").Head
            Expect.notEqual (Convert.ToInt32 res[0]) Environment.ProcessId "the worker's process, not the client's"
            Expect.isGreaterThan (Convert.ToDouble res[1]) 0.0 "its resident memory"
            let tr = (query db "SELECT hostname, block_id, task_try_time_running FROM try").Head
            Expect.equal (string tr[0]) Environment.MachineName "the worker's host"
            Expect.equal (string tr[1]) "0" "its block"
            Expect.isNotNull tr[2] "when the body started, as the worker saw it"
            Expect.contains (statusNames db 0) "running" "a running status from the worker"
        }

        test "the database is private to the user, in the base run directory, in WAL mode" {
            let dfk = loadMonitored id id
            let db = dbOf dfk
            (dfk :> IDisposable).Dispose()
            Expect.equal (Path.GetDirectoryName db) (Path.GetDirectoryName dfk.RunDir) "runinfo/monitoring.db, as Parsl"
            Expect.equal (File.GetUnixFileMode db) (UnixFileMode.UserRead ||| UnixFileMode.UserWrite) "0600"
            Expect.equal (string (scalar db "PRAGMA journal_mode")) "wal" "WAL"
            let indexes = query db "SELECT name FROM sqlite_master WHERE type = 'index'" |> List.map (fun r -> string r.Head)
            Expect.contains indexes "ix_status_run" "status indexed by run and task"
            Expect.contains indexes "ix_task_task_hashsum" "Parsl's hashsum index"
        }

        test "two runs share the database, each with its own run id" {
            let baseDir = tempRunDir ()
            for _ in 1..2 do
                use dfk = DataFlowKernel.Load { Config.defaults with RunDir = baseDir; Monitoring = Some MonitoringConfig.defaults }
                let f = App.func dfk (fun (x: int) -> x + 1)
                await (f (Arg.value 1)).Task |> ignore
            let db = Path.Combine(baseDir, "monitoring.db")
            Expect.equal (Convert.ToInt32(scalar db "SELECT COUNT(DISTINCT run_id) FROM workflow")) 2 "two workflows"
            Expect.equal (Convert.ToInt32(scalar db "SELECT COUNT(*) FROM task")) 2 "a task each"
        }
    ]

let failures =
    testList "failures and retries" [
        test "a failed task has its cause on its try; a retried task has one try row per attempt" {
            let dfk = loadMonitored id (fun c -> { c with Retries = 1 })
            let runId = (Option.get dfk.Monitoring).RunId
            let db = dbOf dfk
            let attempts = ref 0
            let flaky =
                App.func dfk (fun (x: int) ->
                    if Interlocked.Increment &attempts.contents = 1 then invalidOp "first try fails" else x)
            let bad = App.func dfk (fun (_: int) -> raise (ArgumentException "no such input") : int)
            Expect.equal (await (flaky (Arg.value 3)).Task) 3 "the retry succeeded"
            errorOf (bad (Arg.value 0)) |> ignore
            (dfk :> IDisposable).Dispose()
            let n = counts db runId
            Expect.equal n["task"] 2L "two tasks"
            Expect.equal n["try"] 4L "two tries each (the failing one used its retry too)"
            let first = (query db "SELECT task_fail_type, task_fail_message, task_fail_history FROM try WHERE task_id = 0 AND try_id = 0").Head
            Expect.equal (string first[0]) "InvalidOperationException" "the first try's failure type"
            Expect.equal (string first[1]) "first try fails" "its message"
            Expect.equal (string first[2]) "first try fails" "Parsl's task_fail_history"
            let second = (query db "SELECT task_fail_type FROM try WHERE task_id = 0 AND try_id = 1").Head
            Expect.isNull second[0] "the retry succeeded"
            Expect.equal (statusNames db 0) [ "pending"; "launched"; "running"; "running_ended"; "fail_retryable"; "pending"; "launched"; "running"; "running_ended"; "exec_done" ] "retry states"
            Expect.equal (List.last (statusNames db 1)) "failed" "the bad task ended failed"
            let bt = (query db "SELECT task_fail_count FROM task WHERE task_id = 1").Head
            Expect.equal (Convert.ToInt32 bt[0]) 2 "two failures counted"
            let cause = (query db "SELECT task_fail_type, task_fail_message FROM try WHERE task_id = 1 AND try_id = 1").Head
            Expect.equal (string cause[0]) "ArgumentException" "cause type"
            Expect.equal (string cause[1]) "no such input" "cause message"
            let w = (query db "SELECT tasks_completed_count, tasks_failed_count FROM workflow").Head
            Expect.equal (Convert.ToInt32 w[0], Convert.ToInt32 w[1]) (1, 1) "one completed, one failed"
        }

        test "a dependency failure is recorded as dep_fail with its dependency, without a try" {
            let dfk = loadMonitored id id
            let db = dbOf dfk
            let bad = App.func dfk (fun (_: int) -> failwith "root" : int)
            let next = App.func dfk (fun (x: int) -> x)
            let a = bad (Arg.value 0)
            let b = next (Arg.future a)
            errorOf b |> ignore
            (dfk :> IDisposable).Dispose()
            Expect.equal (List.last (statusNames db 1)) "dep_fail" "dep_fail"
            Expect.equal (string (scalar db "SELECT task_depends FROM task WHERE task_id = 1")) "0" "task_depends"
            Expect.equal (Convert.ToInt32(scalar db "SELECT COUNT(*) FROM try WHERE task_id = 1")) 0 "never launched"
        }

        test "shell apps' stdout and stderr paths are on the task and the try" {
            let dfk = loadMonitored id id
            let db = dbOf dfk
            let out = Path.Combine(dfk.RunDir, "echo.out")
            let echo = App.shellWith dfk { AppOptions.defaults with Stdout = Some(Path out) } (fun (s: string) -> "echo " + s)
            await (echo (Arg.value "hi")).Task |> ignore
            (dfk :> IDisposable).Dispose()
            Expect.equal (string (scalar db "SELECT task_stdout FROM task")) out "task_stdout"
            Expect.equal (string (scalar db "SELECT task_stdout FROM try")) out "try's stdout"
        }
    ]

let programs =
    testList "events, counts, spans and metrics" [
        test "subscribers see every state of every task, in order; counts follow" {
            use dfk = loadMonitored (fun m -> { m with WriteDatabase = false }) id
            let h = Option.get dfk.Monitoring
            let seen = ConcurrentQueue<TaskStateEvent>()
            use _ = (h :> IObservable<TaskStateEvent>).Subscribe(fun e -> seen.Enqueue e)
            let inc = App.func dfk (fun (x: int) -> x + 1)
            let futures = [ for i in 1..20 -> inc (Arg.value i) ]
            for f in futures do await f.Task |> ignore
            await (h.FlushAsync().ContinueWith(fun _ -> 0)) |> ignore
            let byTask = seen.ToArray() |> Array.groupBy (fun e -> e.TaskId)
            Expect.equal byTask.Length 20 "every task"
            for _, es in byTask do
                Expect.equal (es |> Array.map (fun e -> e.State) |> List.ofArray) [ Pending; Launched; Running; RunningEnded; ExecDone ] "states in order"
                Expect.isTrue (es |> Array.forall (fun e -> e.AppName <> "")) "app names"
            Expect.equal (h.Count ExecDone) 20 "20 exec_done"
            Expect.equal (h.Count Pending + h.Count Launched + h.Count Running + h.Count RunningEnded) 0 "none live"
        }

        test "live counts show running tasks on the thread pool" {
            use dfk = loadMonitored (fun m -> { m with WriteDatabase = false }) id
            let h = Option.get dfk.Monitoring
            use gate = new ManualResetEventSlim(false)
            use started = new CountdownEvent(2)
            let hold = App.func dfk (fun (x: int) -> started.Signal() |> ignore; gate.Wait(TimeSpan.FromSeconds 60.0) |> ignore; x)
            let fs = [ hold (Arg.value 1); hold (Arg.value 2) ]
            Expect.isTrue (started.Wait(TimeSpan.FromSeconds 60.0)) "both started"
            await (h.FlushAsync().ContinueWith(fun _ -> 0)) |> ignore
            Expect.equal (h.Count Running) 2 "two running"
            gate.Set()
            for f in fs do await f.Task |> ignore
        }

        test "one span per try, with the task's ids and an error status for a failed try; meter counters" {
            let spans = ConcurrentQueue<Activity>()
            use listener =
                new ActivityListener(
                    ShouldListenTo = (fun s -> s.Name = MonitoringLoop.SourceName),
                    Sample = (fun _ -> ActivitySamplingResult.AllDataAndRecorded),
                    ActivityStopped = (fun a -> spans.Enqueue a))
            ActivitySource.AddActivityListener listener
            let finished = ConcurrentDictionary<string, int64>()
            use meters = new MeterListener()
            meters.InstrumentPublished <- fun i l -> if i.Meter.Name = MonitoringLoop.SourceName then l.EnableMeasurementEvents i
            meters.SetMeasurementEventCallback<int64>(fun i v tags _ ->
                if i.Name = "parsl.tasks.finished" then
                    for t in tags do
                        if t.Key = "state" then finished.AddOrUpdate(string t.Value, v, fun _ old -> old + v) |> ignore)
            meters.Start()
            let dfk = loadMonitored (fun m -> { m with WriteDatabase = false }) id
            let h = Option.get dfk.Monitoring
            let ok = App.func dfk (fun (x: int) -> x)
            let bad = App.func dfk (fun (_: int) -> failwith "boom" : int)
            await (ok (Arg.value 1)).Task |> ignore
            errorOf (bad (Arg.value 1)) |> ignore
            await (h.FlushAsync().ContinueWith(fun _ -> 0)) |> ignore
            let mine = spans.ToArray() |> Array.filter (fun a -> a.TagObjects |> Seq.exists (fun t -> t.Key = "parsl.task_id"))
            Expect.equal mine.Length 2 "a span per try"
            let failed = mine |> Array.find (fun a -> a.Status = ActivityStatusCode.Error)
            Expect.equal failed.StatusDescription "boom" "the failure's message"
            Expect.isTrue (failed.Duration >= TimeSpan.Zero) "a duration"
            (dfk :> IDisposable).Dispose()
            Expect.equal (finished.GetOrAdd("exec_done", 0L)) 1L "exec_done counted"
            Expect.equal (finished.GetOrAdd("failed", 0L)) 1L "failed counted"
        }
    ]

let robustness =
    testList "robustness" [
        test "a full database is logged and the workflow still finishes" {
            let dfk = loadMonitored (fun m -> { m with MaxPageCount = Some 12 }) id
            let h = Option.get dfk.Monitoring
            let f = App.func dfk (fun (x: int) -> x * 2)
            let fs = [ for i in 1..3000 -> f (Arg.value i) ]
            let total = fs |> List.sumBy (fun t -> await t.Task)
            Expect.equal total (3000 * 3001) "every task ran"
            let runDir = dfk.RunDir
            (dfk :> IDisposable).Dispose()
            Expect.isGreaterThan h.Rows.Dropped 0L "rows were dropped, not written"
            let logText = File.ReadAllText(Path.Combine(runDir, "parsl.log"))
            Expect.stringContains logText "could not write" "the failure is logged"
        }

        test "a run killed mid-way leaves a readable database whose workflow is marked died" {
            let baseDir = tempRunDir ()
            let db = Path.Combine(baseDir, "monitoring.db")
            let exe = Reflection.Assembly.GetEntryAssembly().Location
            let psi = ProcessStartInfo("dotnet", [ exe; "--monitoring-child"; baseDir ], RedirectStandardOutput = true, UseShellExecute = false)
            use child = Process.Start psi
            let line = child.StandardOutput.ReadLine()
            Expect.equal line "READY" "the child ran a task and flushed"
            child.Kill true
            child.WaitForExit()
            let running = query db "SELECT status, time_completed FROM workflow"
            Expect.equal (string running.Head[0]) "running" "written while running"
            Expect.isNull running.Head[1] "no end recorded"
            // The next open (the next run, or the dashboard's recovery) marks it.
            use c = Database.openFile db None
            let dead = Database.markDeadRuns c Environment.MachineName
            Expect.equal dead.Length 1 "one run died"
            let w = (query db "SELECT status, time_completed, tasks_completed_count FROM workflow").Head
            Expect.equal (string w[0]) "died" "final status"
            Expect.isNotNull w[1] "time_completed is its last event"
            Expect.equal (Convert.ToInt32 w[2]) 1 "the task that finished"
            Expect.equal (Convert.ToInt32(scalar db "SELECT COUNT(*) FROM task")) 2 "both tasks recorded"
        }

        test "a run ended by SIGTERM is marked died by its own exit handling" {
            let baseDir = tempRunDir ()
            let db = Path.Combine(baseDir, "monitoring.db")
            let exe = Reflection.Assembly.GetEntryAssembly().Location
            let psi = ProcessStartInfo("dotnet", [ exe; "--monitoring-child"; baseDir ], RedirectStandardOutput = true, UseShellExecute = false)
            use child = Process.Start psi
            Expect.equal (child.StandardOutput.ReadLine()) "READY" "the child ran a task and flushed"
            Expect.equal (HtexTests.kill (child.Id, 15)) 0 "SIGTERM sent"
            Expect.isTrue (child.WaitForExit 60000) "the child exited"
            let w = (query db "SELECT status, time_completed FROM workflow").Head
            Expect.equal (string w[0]) "died" "marked on the way out"
            Expect.isNotNull w[1] "with its end time"
        }

        test "options are validated at load, naming the field" {
            let check (m: MonitoringConfig) field =
                try
                    loadMonitored (fun _ -> m) id |> ignore
                    failtest "expected a ConfigurationError"
                with :? ConfigurationError as e -> Expect.equal e.Field field "field"
            check { MonitoringConfig.defaults with DashboardAddress = "0.0.0.0" } "MonitoringConfig.DashboardToken"
            check { MonitoringConfig.defaults with ResourceMonitoringInterval = TimeSpan.FromSeconds -1.0 } "MonitoringConfig.ResourceMonitoringInterval"
            check { MonitoringConfig.defaults with DashboardPort = 70000 } "MonitoringConfig.DashboardPort"
            // This test project does not reference Parsl.Dashboard.
            check { MonitoringConfig.defaults with Dashboard = true } "MonitoringConfig.Dashboard"
        }
    ]

let formats =
    testList "formats" [
        testProperty "times round-trip through Parsl's text at microsecond precision" (fun (ticks: int64) ->
            let t = DateTime(abs ticks % (DateTime(2200, 1, 1).Ticks - DateTime(1971, 1, 1).Ticks) + DateTime(1971, 1, 1).Ticks, DateTimeKind.Utc)
            let micro = DateTime(t.Ticks - t.Ticks % 10L, DateTimeKind.Utc)
            ParslFormat.parseTime (ParslFormat.time micro) = micro)
        testProperty "radio lines round-trip" (fun (task: NonNegativeInt) (tryId: NonNegativeInt) (rss: NormalFloat) ->
            let key = (int64 task.Get <<< 32) ||| int64 tryId.Get
            let t = DateTime(2025, 1, 2, 3, 4, 5, DateTimeKind.Utc)
            let s =
                { Task = 0; Try = 0; TimestampUtc = t; Pid = 42; MemoryPercent = 1.5; ChildrenCount = 2; TimeUser = 0.25; TimeSystem = 0.125
                  MemoryVirtual = 1e9; MemoryResident = abs rss.Get; DiskRead = 3.0; DiskWrite = 4.0; Status = "sleeping"; CpuNum = 1.0
                  CtxSwitchesVoluntary = 5.0; CtxSwitchesInvoluntary = 6.0 }
            RadioReader.parse (RadioLine.sample key s) = Some(Resources [ { s with Task = task.Get; Try = tryId.Get } ])
            && RadioReader.parse (RadioLine.running key "h" "0" t) = Some(TryRunning(task.Get, tryId.Get, "h", "0", t))
            && RadioReader.parse "S\tgarbage" = None)
        test "Parsl's text has six fractional digits" {
            Expect.equal ((ParslFormat.time (DateTime(2024, 3, 4, 5, 6, 7, DateTimeKind.Utc))).Length) 26 "YYYY-MM-DD HH:MM:SS.ffffff"
        }
        testProperty "the progress line shows every count it is given" (fun (a: NonNegativeInt) (b: NonNegativeInt) ->
            let line = Progress.line (fun s -> if s = ExecDone then a.Get elif s = Failed then b.Get else 0) (TimeSpan.FromSeconds 2.0)
            line.Contains(sprintf "exec_done %d" a.Get) && line.Contains(sprintf "failed %d" b.Get)
            && line.Contains(sprintf "%.1f tasks/s" (float (a.Get + b.Get) / 2.0)))
    ]

/// The child of the crash test: one task finishes and is written, another hangs until the process is killed.
let crashChild (baseDir: string) =
    let dfk = DataFlowKernel.Load { Config.defaults with RunDir = baseDir; Monitoring = Some MonitoringConfig.defaults }
    let quick = App.func dfk (fun (x: int) -> x)
    let hang = App.func dfk (fun (x: int) -> Thread.Sleep Timeout.Infinite; x)
    (quick (Arg.value 1)).Task.Wait()
    hang (Arg.value 2) |> ignore
    (Option.get dfk.Monitoring).FlushAsync().Wait()
    Console.Out.WriteLine "READY"
    Console.Out.Flush()
    Thread.Sleep Timeout.Infinite
    0

// In sequence: the span and meter listeners are process-wide.
let tests = testSequenced (testList "Monitoring" [ basic; failures; programs; robustness; formats ])
