namespace Parsl.Node.HighThroughput

open System
open System.Collections.Concurrent
open System.Collections.Generic
open System.Diagnostics
open System.IO
open System.Threading

/// One worker process to start: the command line and environment, worked out by the manager.
type internal WorkerStart =
    { Rank: int
      Generation: int
      Program: string
      Arguments: string list
      Environment: (string * string) list }

/// What the manager asks of its IO helper: everything that starts or kills a process or touches a file.
type internal IoRequest =
    | StartWorker of WorkerStart
    /// Ends a worker and what it started (a cancelled running try, a function app past its walltime).
    | KillWorker of Process
    /// Kills the process groups of the shell apps a worker ran (try key, group id).
    | KillGroups of rank: int * groups: (int64 * int) list
    /// Finds a local copy of each assembly a function needs (hashing files).
    | Locate of fid: int * refs: AssemblyRef list
    /// Writes an assembly the interchange sent to the node's cache.
    | Store of hash: string * bytes: byte[]
    /// Kills what the worker of slot `rank` left behind when it died, re-parented to the manager (see `Orphans`).
    | KillOrphans of rank: int
    /// Reaps the re-parented processes that have exited (the manager got a SIGCHLD).
    | ReapOrphans

/// What the IO helper (and the threads it starts) tell the manager, in messages.
type internal IoReply =
    | WorkerStarted of rank: int * generation: int * Process
    | WorkerStartFailed of rank: int * generation: int * reason: string
    /// A worker process exited; `stderr` is the first of what it wrote there (why it could not start, if it did not).
    | WorkerExited of rank: int * generation: int * exitCode: int * stderr: string
    | Located of fid: int * found: (AssemblyRef * string option) list
    | Stored of hash: string * path: Result<string, string>

/// The manager as the subreaper of its workers' descendants. A shell app's command is in a process group of its own,
/// which the worker reports to the manager just after starting it; a worker killed between the start and the report
/// (or a command that left its group: a double fork, `setsid`) used to leave a command that nobody killed, re-parented
/// to init. Once the manager is a child subreaper, whatever a dead worker leaves is re-parented to the manager instead,
/// where it can be found (a child of the manager that is not one of its workers) and killed; and the manager reaps
/// what it adopts. Each adopted process is told apart by the environment a worker hands its commands
/// (`PARSL_WORKER_POOL_ID`, `PARSL_WORKER_RANK`): a dead worker's leftovers go at once, while what a live worker's
/// running try double-forked (a daemon it still uses) stays until its own worker dies or the manager ends.
[<RequireQualifiedAccess>]
module internal Orphans =
    /// Whether a process started with `environment` descends from the worker of slot `rank` of manager `managerId`.
    let isFrom (managerId: string) (rank: int) (environment: string[]) =
        Array.contains ("PARSL_WORKER_POOL_ID=" + managerId) environment
        && Array.contains ("PARSL_WORKER_RANK=" + string rank) environment

    /// Makes this process the subreaper (see above); says so in the log where the system cannot.
    let adopt (log: string -> unit) =
        if not (Parsl.Node.Runtime.Native.becomeSubreaper ()) then
            log "cannot become a child subreaper here: a process a dead worker leaves outside its reported process groups is not killed"

    /// This process's children that are not in `workers`. `workers` must be read before (the pids of the worker
    /// processes not yet reaped): a worker that exits meanwhile is then still excluded, so a child .NET must reap (it
    /// would fail fast on a child reaped under it) is never taken for an orphan.
    let private adopted (workers: HashSet<int>) =
        Parsl.Node.Runtime.Native.processTable ()
        |> List.filter (fun row -> row.Parent = Environment.ProcessId && not (workers.Contains row.Pid))

    /// Kills the adopted processes from the worker of slot `rank`, and what they started; returns their pids.
    let killFrom (managerId: string) (rank: int) (workers: HashSet<int>) =
        [ for row in adopted workers do
            if row.State <> 'Z' && isFrom managerId rank (Parsl.Node.Runtime.Native.environmentOf row.Pid) then
                Parsl.Node.Runtime.Native.killTree row.Pid
                yield row.Pid ]

    /// Kills every adopted process and what it started (the manager is ending); returns their pids.
    let killAll (workers: HashSet<int>) =
        [ for row in adopted workers do
            if row.State <> 'Z' then
                Parsl.Node.Runtime.Native.killTree row.Pid
                yield row.Pid ]

    /// Reaps the adopted processes that have exited.
    let reap (workers: HashSet<int>) =
        for row in adopted workers do
            if row.State = 'Z' then Parsl.Node.Runtime.Native.reapIfExited row.Pid |> ignore

/// The manager's IO helper: one thread that starts and kills processes and reads and writes files, so that none of
/// that runs on the manager's owner path (a process start takes milliseconds; a result hop takes microseconds).
/// It owns the file-hash caches and every process it started, and for each of those two threads of its own: one
/// waits for the exit (no CPU per task), one passes the worker's stderr on to the manager's (the block's error file)
/// and keeps its first lines. All are joined by `Finish`.
///
/// ```
///   manager owner ──IoRequest──▶ [BlockingCollection] ──▶ io thread ── Process.Start / kill / File.* ──┐
///        ▲                                                   │ starts per worker: waiter, stderr pump │
///        └──────────────── IoReply (posted by io thread, waiters) ◀───────────────────────────────────┘
/// ```
[<Sealed>]
type internal ManagerIo(cacheDir: string, sharedFileSystem: bool, managerId: string, log: string -> unit, reply: IoReply -> unit) =
    let requests = new BlockingCollection<IoRequest>()
    let mutable stopping = 0
    // Owned by the io thread until `Finish` (which runs after it has ended).
    let processes = List<Process>()
    let threads = List<Thread>()
    let resolved = Dictionary<string, string>() // hash -> verified local path
    let verified = Dictionary<string, string>() // path -> hash
    // A reap is queued (SIGCHLDs that arrive meanwhile are covered by it).
    let mutable reapQueued = 0

    /// The worker processes not yet reaped (by .NET: `HasExited` is true only once it has reaped one).
    let workerPids () =
        let live = HashSet<int>()
        for p in processes do
            if not (try p.HasExited with _ -> true) then live.Add p.Id |> ignore
        live

    let localCopy (r: AssemblyRef) =
        match resolved.TryGetValue r.Hash with
        | true, p -> Some p
        | _ ->
            let hashOf p =
                match verified.TryGetValue p with
                | true, h -> h
                | _ ->
                    let h = Serialization.hashFile p
                    verified[p] <- h
                    h
            let cached = Path.Combine(cacheDir, r.Hash + ".dll")
            let found =
                if sharedFileSystem && File.Exists r.Path && hashOf r.Path = r.Hash then Some r.Path
                elif File.Exists cached && hashOf cached = r.Hash then Some cached
                else None
            found |> Option.iter (fun p -> resolved[r.Hash] <- p)
            found

    let start (w: WorkerStart) =
        let psi = ProcessStartInfo(w.Program)
        for a in w.Arguments do
            psi.ArgumentList.Add a
        psi.UseShellExecute <- false
        // Read by a pump that passes it on to this manager's stderr and keeps the first lines of a start.
        psi.RedirectStandardError <- true
        for k, v in w.Environment do
            psi.Environment[k] <- v
        let p = Process.Start psi
        processes.Add p
        p

    /// The waiter and the stderr pump of a started worker (after `WorkerStarted` is posted, so its exit comes after).
    let watch (w: WorkerStart) (p: Process) =
        let first = Text.StringBuilder()
        let pump =
            Thread(
                (fun () ->
                    let buffer = Array.zeroCreate<byte> 8192
                    use err = Console.OpenStandardError()
                    let source = p.StandardError.BaseStream
                    let mutable n = (try source.Read(buffer, 0, buffer.Length) with _ -> 0)
                    while n > 0 do
                        (try err.Write(buffer, 0, n); err.Flush() with _ -> ())
                        lock first (fun () ->
                            if first.Length < 2048 then
                                first.Append(Text.Encoding.UTF8.GetString(buffer, 0, min n (2048 - first.Length))) |> ignore)
                        n <- (try source.Read(buffer, 0, buffer.Length) with _ -> 0)),
                IsBackground = true,
                Name = "worker-" + string w.Rank + "-stderr")
        pump.Start()
        let waiter =
            Thread(
                (fun () ->
                    p.WaitForExit()
                    // What it wrote just before it died is usually why: give the pump a moment to pass it on (bounded,
                    // as a shell app that inherited the pipe may keep it open).
                    pump.Join(TimeSpan.FromMilliseconds 200.0) |> ignore
                    reply (WorkerExited(w.Rank, w.Generation, p.ExitCode, lock first (fun () -> first.ToString().Trim())))),
                IsBackground = true,
                Name = "worker-" + string w.Rank + "-waiter")
        waiter.Start()
        threads.Add pump
        threads.Add waiter

    let handle (r: IoRequest) =
        match r with
        | StartWorker w ->
            if Volatile.Read(&stopping) = 0 then
                match (try Ok(start w) with e -> Error e.Message) with
                | Ok p ->
                    log ("worker " + string w.Rank + " started as pid " + string p.Id)
                    reply (WorkerStarted(w.Rank, w.Generation, p))
                    watch w p
                | Error why -> reply (WorkerStartFailed(w.Rank, w.Generation, why))
        | KillWorker p -> (try p.Kill true with _ -> ())
        | KillGroups(rank, groups) ->
            for k, pgid in groups do
                log (sprintf "killing process group %d of try %d, left by worker %d" pgid k rank)
                Parsl.Node.Runtime.Native.killGroup pgid
        | KillOrphans rank ->
            for pid in Orphans.killFrom managerId rank (workerPids ()) do
                log ("killed process " + string pid + ", left by worker " + string rank)
        | ReapOrphans ->
            Volatile.Write(&reapQueued, 0)
            Orphans.reap (workerPids ())
        | Locate(fid, refs) -> reply (Located(fid, refs |> List.map (fun r -> r, (try localCopy r with _ -> None))))
        | Store(h, bytes) ->
            let stored =
                try
                    Directory.CreateDirectory cacheDir |> ignore
                    let target = Path.Combine(cacheDir, h + ".dll")
                    let tmp = target + "." + managerId + ".tmp"
                    File.WriteAllBytes(tmp, bytes)
                    File.Move(tmp, target, true)
                    resolved[h] <- target
                    Ok target
                with e -> Error e.Message
            reply (Stored(h, stored))

    let thread =
        Thread(
            (fun () ->
                for r in requests.GetConsumingEnumerable() do
                    handle r),
            IsBackground = true,
            Name = "manager-io")

    /// Starts the io thread.
    member _.Start() = thread.Start()

    /// Queues a request (any thread); dropped once `Finish` has begun.
    member _.Post(r: IoRequest) =
        try requests.Add r with
        | :? InvalidOperationException
        | :? ObjectDisposedException -> ()

    /// Queues a reap of adopted processes that have exited (from the SIGCHLD handler; one at a time is enough).
    member this.RequestReap() =
        if Interlocked.Exchange(&reapQueued, 1) = 0 then this.Post ReapOrphans

    /// Ends the io thread after the requests queued (starts among them are skipped), then stops every process it
    /// started: each gets until `grace` to exit (the manager has closed their connections), then is killed; the
    /// waiter and pump threads are joined.
    member _.Finish(grace: TimeSpan) =
        Volatile.Write(&stopping, 1)
        requests.CompleteAdding()
        if not (thread.ThreadState.HasFlag ThreadState.Unstarted) then thread.Join()
        let deadline = DateTime.UtcNow + grace
        for p in processes do
            let left = max 0 (int (deadline - DateTime.UtcNow).TotalMilliseconds)
            if not (try p.WaitForExit left with _ -> true) then
                try p.Kill true with _ -> ()
        // Whatever the workers left behind goes with the manager (the workers' own trees were killed above).
        for pid in Orphans.killAll (workerPids ()) do
            log ("killed process " + string pid + ", left by a worker")
        // The waiters end with their processes; a pump ends when the last holder of the pipe has gone.
        for t in threads do
            t.Join(TimeSpan.FromSeconds 2.0) |> ignore
        for p in processes do
            p.Dispose()
        requests.Dispose()
