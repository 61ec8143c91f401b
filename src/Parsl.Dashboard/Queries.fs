namespace Parsl.Dashboard

open System
open System.Collections.Generic
open Microsoft.Data.Sqlite
open Parsl.Monitoring

/// One workflow (a run).
type WorkflowView =
    { RunId: string
      Name: string
      Version: string
      Began: string
      Completed: string
      Host: string
      User: string
      RunDir: string
      TasksCompleted: int
      TasksFailed: int
      /// running, completed or died (a run whose process is gone without recording its end).
      Status: string }

/// One task, with its latest state.
type TaskView =
    { TaskId: int
      App: string
      Executor: string
      State: string
      Invoked: string
      Returned: string
      FailCount: int
      Depends: int list
      Stdout: string
      Stderr: string }

/// One try of a task.
type TryView =
    { TaskId: int
      TryId: int
      App: string
      Executor: string
      Hostname: string
      BlockId: string
      Launched: string
      Running: string
      Returned: string
      FailType: string
      FailMessage: string
      Stdout: string
      Stderr: string }

/// One state change.
type StatusView = { TaskId: int; TryId: int; State: string; Timestamp: string }

/// One resource sample.
type ResourceView =
    { TaskId: int
      TryId: int
      Timestamp: string
      Pid: int
      CpuUser: float
      CpuSystem: float
      MemoryResident: float
      MemoryVirtual: float
      DiskRead: float
      DiskWrite: float }

/// One manager row.
type NodeView = { Hostname: string; Uid: string; BlockId: string; WorkerCount: int; CpuCount: int; TotalMemory: int64; Active: bool; Timestamp: string }

/// One block status row.
type BlockView = { Executor: string; BlockId: string; JobId: string; Status: string; Timestamp: string }

/// Per-app figures.
type AppView = { App: string; Tasks: int; Done: int; Failed: int; MeanSeconds: float; MaxSeconds: float }

/// Reads a monitoring database (Parsl's tables, as written by Parsl.NET; Parsl's own files lack our extra columns
/// and are read without them).
[<RequireQualifiedAccess>]
module Queries =
    let private str (r: SqliteDataReader) (i: int) = if r.IsDBNull i then null else Convert.ToString(r.GetValue i, Globalization.CultureInfo.InvariantCulture)
    let private int' (r: SqliteDataReader) (i: int) = if r.IsDBNull i then 0 else Convert.ToInt32(r.GetValue i)
    let private flt (r: SqliteDataReader) (i: int) = if r.IsDBNull i then 0.0 else Convert.ToDouble(r.GetValue i)

    let private rows (conn: SqliteConnection) (sql: string) (ps: (string * obj) list) (read: SqliteDataReader -> 'T) =
        use cmd = conn.CreateCommand()
        cmd.CommandText <- sql
        for k, v in ps do
            cmd.Parameters.AddWithValue(k, v) |> ignore
        use r = cmd.ExecuteReader()
        [ while r.Read() do
              yield read r ]

    let private columns (conn: SqliteConnection) (table: string) =
        rows conn (sprintf "PRAGMA table_info(\"%s\")" table) [] (fun r -> r.GetString 1) |> HashSet

    /// The seconds between two times in Parsl's text (0 when either is missing).
    let seconds (a: string) (b: string) =
        if isNull a || isNull b then 0.0 else (ParslFormat.parseTime b - ParslFormat.parseTime a).TotalSeconds

    /// Every workflow, newest first. A run left `running` whose process is gone (same host) shows as died.
    let workflows (conn: SqliteConnection) =
        let cols = columns conn "workflow"
        let extra = cols.Contains "status"
        let sql =
            sprintf "SELECT run_id, workflow_name, workflow_version, time_began, time_completed, host, user, rundir, tasks_completed_count, tasks_failed_count, %s FROM workflow ORDER BY time_began DESC"
                (if extra then "status, pid, process_start" else "NULL, NULL, NULL")
        rows conn sql [] (fun r ->
            let completed = str r 4
            let status =
                match str r 10 with
                | "running" when isNull completed && str r 5 = Environment.MachineName
                                 && (r.IsDBNull 11 || Database.processStart (int' r 11) <> Option.ofObj (str r 12)) -> "died"
                | null -> if isNull completed then "running" else "completed"
                | s -> s
            { RunId = str r 0; Name = str r 1; Version = str r 2; Began = str r 3; Completed = completed; Host = str r 5
              User = str r 6; RunDir = str r 7; TasksCompleted = int' r 8; TasksFailed = int' r 9; Status = status })

    /// One workflow.
    let workflow (conn: SqliteConnection) (runId: string) =
        workflows conn |> List.tryFind (fun w -> w.RunId = runId)

    /// Every state change of a run, in time order.
    let statuses (conn: SqliteConnection) (runId: string) =
        rows conn "SELECT task_id, try_id, task_status_name, timestamp FROM status WHERE run_id = $r ORDER BY timestamp, rowid" [ "$r", box runId ] (fun r ->
            { TaskId = int' r 0; TryId = int' r 1; State = str r 2; Timestamp = str r 3 })

    /// Every task of a run, with its latest state.
    let tasks (conn: SqliteConnection) (runId: string) =
        let latest = Dictionary<int, string>()
        for s in statuses conn runId do
            latest[s.TaskId] <- s.State
        let cols = columns conn "task"
        let executor = if cols.Contains "task_executor" then "task_executor" else "NULL"
        rows conn
            (sprintf "SELECT task_id, task_func_name, %s, task_time_invoked, task_time_returned, task_fail_count, task_depends, task_stdout, task_stderr FROM task WHERE run_id = $r ORDER BY task_id" executor)
            [ "$r", box runId ]
            (fun r ->
                let id = int' r 0
                { TaskId = id; App = str r 1; Executor = str r 2
                  State = (match latest.TryGetValue id with | true, s -> s | _ -> "pending")
                  Invoked = str r 3; Returned = str r 4; FailCount = int' r 5
                  Depends =
                    (match str r 6 with
                     | null | "" -> []
                     | d -> d.Split(',', StringSplitOptions.RemoveEmptyEntries) |> Array.choose (fun x -> match Int32.TryParse x with | true, v -> Some v | _ -> None) |> List.ofArray)
                  Stdout = str r 7; Stderr = str r 8 })

    /// Every try of a run (optionally of one task).
    let tries (conn: SqliteConnection) (runId: string) (task: int option) =
        let cols = columns conn "try"
        let ours = cols.Contains "task_fail_type"
        let sql =
            sprintf
                "SELECT y.task_id, y.try_id, t.task_func_name, y.task_executor, y.hostname, y.block_id, y.task_try_time_launched, y.task_try_time_running, y.task_try_time_returned, %s FROM try y LEFT JOIN task t ON t.task_id = y.task_id AND t.run_id = y.run_id WHERE y.run_id = $r %s ORDER BY y.task_try_time_launched, y.task_id, y.try_id"
                (if ours then "y.task_fail_type, y.task_fail_message, y.task_stdout, y.task_stderr" else "NULL, y.task_fail_history, NULL, NULL")
                (match task with Some _ -> "AND y.task_id = $t" | None -> "")
        rows conn sql [ yield "$r", box runId; match task with Some t -> yield "$t", box t | None -> () ] (fun r ->
            { TaskId = int' r 0; TryId = int' r 1; App = str r 2; Executor = str r 3; Hostname = str r 4; BlockId = str r 5
              Launched = str r 6; Running = str r 7; Returned = str r 8; FailType = str r 9; FailMessage = str r 10
              Stdout = str r 11; Stderr = str r 12 })

    /// Resource samples of a run (optionally of one task).
    let resources (conn: SqliteConnection) (runId: string) (task: int option) =
        rows conn
            (sprintf "SELECT task_id, try_id, timestamp, psutil_process_pid, psutil_process_time_user, psutil_process_time_system, psutil_process_memory_resident, psutil_process_memory_virtual, psutil_process_disk_read, psutil_process_disk_write FROM resource WHERE run_id = $r %s ORDER BY timestamp"
                (match task with Some _ -> "AND task_id = $t" | None -> ""))
            [ yield "$r", box runId; match task with Some t -> yield "$t", box t | None -> () ]
            (fun r ->
                { TaskId = int' r 0; TryId = int' r 1; Timestamp = str r 2; Pid = int' r 3; CpuUser = flt r 4; CpuSystem = flt r 5
                  MemoryResident = flt r 6; MemoryVirtual = flt r 7; DiskRead = flt r 8; DiskWrite = flt r 9 })

    /// Manager rows of a run.
    let nodes (conn: SqliteConnection) (runId: string) =
        rows conn "SELECT hostname, uid, block_id, worker_count, cpu_count, total_memory, active, timestamp FROM node WHERE run_id = $r ORDER BY id" [ "$r", box runId ] (fun r ->
            { Hostname = str r 0; Uid = str r 1; BlockId = str r 2; WorkerCount = int' r 3; CpuCount = int' r 4
              TotalMemory = (if r.IsDBNull 5 then 0L else Convert.ToInt64(r.GetValue 5)); Active = int' r 6 <> 0; Timestamp = str r 7 })

    /// Block status rows of a run.
    let blocks (conn: SqliteConnection) (runId: string) =
        rows conn "SELECT executor_label, block_id, job_id, status, timestamp FROM block WHERE run_id = $r ORDER BY timestamp" [ "$r", box runId ] (fun r ->
            { Executor = str r 0; BlockId = str r 1; JobId = str r 2; Status = str r 3; Timestamp = str r 4 })

    /// Counts of tasks by latest state.
    let stateCounts (tasks: TaskView list) =
        tasks |> List.countBy (fun t -> t.State) |> Map.ofList

    /// Per-app counts and durations (invoked to returned, of tasks that ended).
    let apps (tasks: TaskView list) =
        tasks
        |> List.groupBy (fun t -> t.App)
        |> List.map (fun (app, ts) ->
            let durations = ts |> List.filter (fun t -> not (isNull t.Returned)) |> List.map (fun t -> seconds t.Invoked t.Returned)
            { App = app
              Tasks = ts.Length
              Done = ts |> List.filter (fun t -> t.State = "exec_done" || t.State = "memo_done") |> List.length
              Failed = ts |> List.filter (fun t -> t.State = "failed" || t.State = "dep_fail") |> List.length
              MeanSeconds = (if durations.IsEmpty then 0.0 else List.average durations)
              MaxSeconds = (if durations.IsEmpty then 0.0 else List.max durations) })
        |> List.sortBy (fun a -> a.App)

    /// Tasks in each state over time (pure): after each state change, the count of every state, sampled down to
    /// at most `points` instants. Returns (seconds since the first change, state -> count) in time order.
    let statesOverTime (points: int) (changes: StatusView list) =
        match changes with
        | [] -> []
        | first :: _ ->
            let t0 = ParslFormat.parseTime first.Timestamp
            let current = Dictionary<int, string>()
            let counts = Dictionary<string, int>()
            let samples = List<float * Map<string, int>>()
            for c in changes do
                match current.TryGetValue c.TaskId with
                | true, old -> counts[old] <- counts[old] - 1
                | _ -> ()
                current[c.TaskId] <- c.State
                counts[c.State] <- (match counts.TryGetValue c.State with | true, n -> n + 1 | _ -> 1)
                samples.Add(((ParslFormat.parseTime c.Timestamp) - t0).TotalSeconds, counts |> Seq.map (fun (KeyValue(k, v)) -> k, v) |> Map.ofSeq)
            let n = samples.Count
            if n <= points then List.ofSeq samples
            else [ for i in 0 .. points - 1 -> samples[int (int64 i * int64 (n - 1) / int64 (points - 1))] ]

    /// The depth of each task in the dependency graph (0: no dependencies), for drawing it in layers (pure).
    let depths (tasks: TaskView list) =
        let byId = tasks |> List.map (fun t -> t.TaskId, t) |> dict
        let depth = Dictionary<int, int>()
        // Dependencies always have smaller ids (a future exists before it is passed), so one pass in id order works.
        for t in tasks |> List.sortBy (fun t -> t.TaskId) do
            let d =
                t.Depends
                |> List.choose (fun p -> if byId.ContainsKey p then Some(match depth.TryGetValue p with | true, v -> v + 1 | _ -> 1) else None)
                |> function [] -> 0 | ds -> List.max ds
            depth[t.TaskId] <- d
        depth
