namespace Parsl.Monitoring

open System
open System.IO
open Microsoft.Data.Sqlite

/// The monitoring database: Parsl's seven tables with Parsl's column names (`parsl/monitoring/db_manager.py`),
/// a few columns of our own after them (failure type and message, stream paths, the workflow's status and
/// process), WAL, and the indexes Parsl lacks (its issue #2127).
[<RequireQualifiedAccess>]
module Database =
    /// The schema. Types are the ones SQLAlchemy declares, so Parsl's query helpers read the file.
    let schema =
        """
CREATE TABLE IF NOT EXISTS workflow (
    run_id TEXT NOT NULL PRIMARY KEY, workflow_name TEXT, workflow_version TEXT,
    time_began DATETIME NOT NULL, time_completed DATETIME,
    host TEXT NOT NULL, user TEXT NOT NULL, rundir TEXT NOT NULL,
    tasks_failed_count INTEGER NOT NULL, tasks_completed_count INTEGER NOT NULL,
    status TEXT, pid INTEGER, process_start TEXT);
CREATE TABLE IF NOT EXISTS task (
    task_id INTEGER NOT NULL, run_id TEXT NOT NULL, task_depends TEXT, task_func_name TEXT NOT NULL,
    task_memoize TEXT NOT NULL, task_hashsum TEXT, task_inputs TEXT, task_outputs TEXT, task_stdin TEXT,
    task_stdout TEXT, task_stderr TEXT, task_time_invoked DATETIME, task_time_returned DATETIME,
    task_fail_count INTEGER NOT NULL, task_fail_cost FLOAT NOT NULL,
    task_executor TEXT, task_status_name TEXT,
    PRIMARY KEY (task_id, run_id));
CREATE INDEX IF NOT EXISTS ix_task_task_hashsum ON task (task_hashsum);
CREATE INDEX IF NOT EXISTS ix_task_run ON task (run_id, task_id);
CREATE TABLE IF NOT EXISTS try (
    try_id INTEGER NOT NULL, task_id INTEGER NOT NULL, run_id TEXT NOT NULL, block_id TEXT, hostname TEXT,
    task_executor TEXT NOT NULL, task_try_time_launched DATETIME, task_try_time_running DATETIME,
    task_try_time_returned DATETIME, task_fail_history TEXT, task_joins TEXT,
    task_fail_type TEXT, task_fail_message TEXT, task_stdout TEXT, task_stderr TEXT,
    task_try_time_running_ended DATETIME,
    PRIMARY KEY (try_id, task_id, run_id));
CREATE INDEX IF NOT EXISTS ix_try_run ON try (run_id, task_id);
CREATE TABLE IF NOT EXISTS status (
    task_id INTEGER NOT NULL, task_status_name TEXT NOT NULL, timestamp DATETIME NOT NULL,
    run_id TEXT NOT NULL REFERENCES workflow (run_id), try_id INTEGER NOT NULL,
    PRIMARY KEY (task_id, run_id, task_status_name, timestamp));
CREATE INDEX IF NOT EXISTS ix_status_run ON status (run_id, task_id);
CREATE INDEX IF NOT EXISTS ix_status_timestamp ON status (timestamp);
CREATE TABLE IF NOT EXISTS resource (
    try_id INTEGER NOT NULL, task_id INTEGER NOT NULL, run_id TEXT NOT NULL REFERENCES workflow (run_id),
    timestamp DATETIME NOT NULL, resource_monitoring_interval FLOAT, psutil_process_pid INTEGER,
    psutil_process_memory_percent FLOAT, psutil_process_children_count FLOAT, psutil_process_time_user FLOAT,
    psutil_process_time_system FLOAT, psutil_process_memory_virtual FLOAT, psutil_process_memory_resident FLOAT,
    psutil_process_disk_read FLOAT, psutil_process_disk_write FLOAT, psutil_process_status TEXT,
    psutil_cpu_num TEXT, psutil_process_num_ctx_switches_voluntary FLOAT,
    psutil_process_num_ctx_switches_involuntary FLOAT,
    PRIMARY KEY (try_id, task_id, run_id, timestamp));
CREATE INDEX IF NOT EXISTS ix_resource_run ON resource (run_id, task_id);
CREATE TABLE IF NOT EXISTS node (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, hostname TEXT NOT NULL, uid TEXT NOT NULL,
    block_id TEXT NOT NULL, cpu_count INTEGER, total_memory BIGINT, active BOOLEAN, worker_count INTEGER,
    python_v TEXT, timestamp DATETIME, last_heartbeat DATETIME);
CREATE INDEX IF NOT EXISTS ix_node_run ON node (run_id);
CREATE TABLE IF NOT EXISTS block (
    run_id TEXT NOT NULL, executor_label TEXT NOT NULL, block_id TEXT NOT NULL, job_id TEXT,
    timestamp DATETIME NOT NULL, status TEXT,
    PRIMARY KEY (run_id, block_id, executor_label, timestamp));
"""

    /// The seven tables, in Parsl's order.
    let tables = [ "workflow"; "task"; "try"; "status"; "resource"; "node"; "block" ]

    /// The start time of a process as the kernel counts it (field 22 of `/proc/PID/stat`), or None when it is gone.
    /// With the pid it names one process even after the pid is reused.
    let processStart (pid: int) =
        try
            let stat = File.ReadAllText(sprintf "/proc/%d/stat" pid)
            // The command name (field 2) may hold spaces and parentheses: fields count from the last ')'.
            let rest = stat.Substring(stat.LastIndexOf ')' + 2).Split ' '
            Some rest[19]
        with _ ->
            None

    let private exec (conn: SqliteConnection) (sql: string) =
        use cmd = conn.CreateCommand()
        cmd.CommandText <- sql
        cmd.ExecuteNonQuery() |> ignore

    /// Opens (creating if needed) a database: WAL, a busy timeout for other writers, the schema.
    let openFile (path: string) (maxPageCount: int option) =
        let full = Path.GetFullPath path
        let dir = Path.GetDirectoryName full
        if not (Directory.Exists dir) then
            Directory.CreateDirectory(dir, UnixFileMode.UserRead ||| UnixFileMode.UserWrite ||| UnixFileMode.UserExecute) |> ignore
        let isNew = not (File.Exists full)
        if isNew then
            // Private to the user: task names, arguments' paths and hostnames are in it.
            use _ = new FileStream(full, FileMode.CreateNew, FileAccess.Write, FileShare.ReadWrite, 4096, FileOptions.None)
            File.SetUnixFileMode(full, UnixFileMode.UserRead ||| UnixFileMode.UserWrite)
        let conn = new SqliteConnection(SqliteConnectionStringBuilder(DataSource = full, Pooling = false).ToString())
        conn.Open()
        exec conn "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000;"
        exec conn schema
        match maxPageCount with
        | Some n -> exec conn (sprintf "PRAGMA max_page_count=%d;" n)
        | None -> ()
        conn

    /// Opens a database to read it (the dashboard): no schema change, no recovery.
    let openRead (path: string) =
        let conn =
            new SqliteConnection(
                SqliteConnectionStringBuilder(DataSource = Path.GetFullPath path, Mode = SqliteOpenMode.ReadOnly, Pooling = false)
                    .ToString())
        conn.Open()
        exec conn "PRAGMA busy_timeout=10000;"
        conn

    /// Marks runs on this host whose process is gone and that never recorded an end (a crash, a kill -9): their
    /// `time_completed` becomes their last recorded event, their counts are taken from the `status` table, and
    /// their `status` becomes `died`. Returns the run ids marked. Parsl leaves such runs "running" (its #925).
    let markDeadRuns (conn: SqliteConnection) (host: string) =
        let candidates =
            use cmd = conn.CreateCommand()
            cmd.CommandText <- "SELECT run_id, pid, process_start FROM workflow WHERE time_completed IS NULL AND host = $h"
            cmd.Parameters.AddWithValue("$h", host) |> ignore
            use r = cmd.ExecuteReader()
            [ while r.Read() do
                  yield r.GetString 0, (if r.IsDBNull 1 then None else Some(r.GetInt32 1)), (if r.IsDBNull 2 then None else Some(r.GetString 2)) ]
        let dead =
            candidates
            |> List.filter (fun (_, pid, start) ->
                match pid with
                | None -> true
                | Some p -> processStart p <> start)
            |> List.map (fun (run, _, _) -> run)
        for run in dead do
            use cmd = conn.CreateCommand()
            cmd.CommandText <-
                """
UPDATE workflow SET
  time_completed = COALESCE((SELECT MAX(timestamp) FROM status WHERE run_id = $r), time_began),
  tasks_completed_count = (SELECT COUNT(DISTINCT task_id) FROM status WHERE run_id = $r AND task_status_name IN ('exec_done', 'memo_done')),
  tasks_failed_count = (SELECT COUNT(DISTINCT task_id) FROM status WHERE run_id = $r AND task_status_name IN ('failed', 'dep_fail')),
  status = 'died'
WHERE run_id = $r AND time_completed IS NULL"""
            cmd.Parameters.AddWithValue("$r", run) |> ignore
            cmd.ExecuteNonQuery() |> ignore
        dead

    /// Rows per table for one run (or every run with None).
    let rowCounts (conn: SqliteConnection) (runId: string option) =
        tables
        |> List.map (fun t ->
            use cmd = conn.CreateCommand()
            match runId with
            | Some r ->
                cmd.CommandText <- sprintf "SELECT COUNT(*) FROM \"%s\" WHERE run_id = $r" t
                cmd.Parameters.AddWithValue("$r", r) |> ignore
            | None -> cmd.CommandText <- sprintf "SELECT COUNT(*) FROM \"%s\"" t
            t, Convert.ToInt64(cmd.ExecuteScalar()))
        |> Map.ofList
