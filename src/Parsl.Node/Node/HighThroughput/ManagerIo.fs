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

/// What the IO helper (and the threads it starts) tell the manager, in messages.
type internal IoReply =
    | WorkerStarted of rank: int * generation: int * Process
    | WorkerStartFailed of rank: int * generation: int * reason: string
    /// A worker process exited; `stderr` is the first of what it wrote there (why it could not start, if it did not).
    | WorkerExited of rank: int * generation: int * exitCode: int * stderr: string
    | Located of fid: int * found: (AssemblyRef * string option) list
    | Stored of hash: string * path: Result<string, string>

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
        // The waiters end with their processes; a pump ends when the last holder of the pipe has gone.
        for t in threads do
            t.Join(TimeSpan.FromSeconds 2.0) |> ignore
        for p in processes do
            p.Dispose()
        requests.Dispose()
