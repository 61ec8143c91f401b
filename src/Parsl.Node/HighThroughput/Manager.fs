namespace Parsl.Node.HighThroughput

open System
open System.Collections.Concurrent
open System.Collections.Generic
open System.Diagnostics
open System.IO
open System.Text
open System.Threading
open NetMQ
open NetMQ.Sockets

/// How a manager is started (the worker executable's command line, parsed).
type ManagerSettings =
    { /// The interchange, as `tcp://host:port`.
      Address: string
      ManagerId: string
      BlockId: string
      MaxWorkers: int option
      CoresPerWorker: float
      MemPerWorker: float option
      Prefetch: int
      HeartbeatPeriod: TimeSpan
      HeartbeatThreshold: TimeSpan
      DrainPeriod: TimeSpan option
      CpuAffinity: string
      Accelerators: string list
      /// The directory with `server.key` and `client.key` (None: plain TCP).
      CertDir: string option
      /// The interchange's local socket (abstract name), tried before `Address`: it answers only on the client's host.
      LocalSocket: string option
      /// The command that starts one worker process (program first); `--worker` is run in worker mode.
      WorkerCommand: string list
      /// Where assemblies fetched from the interchange are cached by hash.
      CacheDir: string
      /// False when this node does not share the client's file system: assemblies are always fetched from
      /// the interchange (once per node, cached by hash) instead of loaded from the client's paths.
      SharedFileSystem: bool
      /// Overrides the version sent at registration (used to check that a mismatch is refused).
      ParslVersion: string option
      Log: TextWriter
      /// CURVE on the TCP connection (with the keys in `CertDir`). The executor's `Encrypted`.
      Curve: bool
      /// Prove the run's secret (from `CertDir`) by challenge and response before registering over TCP.
      Authenticate: bool
      /// The largest message the interchange accepts (its `MaxMessageSize`): result batches are kept below it.
      MaxMessageSize: int }

type private WorkerEvent =
    | Exited of rank: int * generation: int * exitCode: int
    /// A worker that failed at start waited out its back-off: start it again (if nothing else did meanwhile).
    | RestartDue of rank: int * generation: int

type private WorkerSlot =
    { Rank: int
      mutable Generation: int
      mutable Process: Process
      /// The worker's connection once it said hello (null before, and after it closed).
      mutable Conn: Link
      Outstanding: List<WireTask>
      Functions: HashSet<int>
      /// The process groups of the shell apps this worker is running, by try: killed if the worker dies.
      Groups: Dictionary<int64, int>
      /// This start said hello (it was up); a start that exits before is a failure to start.
      mutable Up: bool
      /// Starts in a row that failed before saying hello.
      mutable StartFailures: int
      /// The first lines this start wrote to stderr (kept until it is up), to say why it could not start.
      StartErr: Text.StringBuilder
      /// Being replaced: a function app ran past its walltime and the worker ends itself; no new tries.
      mutable Retiring: bool }

/// The manager (Parsl's `process_worker_pool.py`): one per node. Connects out to the interchange,
/// registers, heartbeats, runs worker processes (restarting any that die), passes batches of tries to them
/// and results back, drains after `DrainPeriod`, and exits when the interchange goes away or says so.
[<RequireQualifiedAccess>]
module Manager =
    let private readMemAvailableGb () =
        try
            File.ReadLines "/proc/meminfo"
            |> Seq.tryFind (fun l -> l.StartsWith "MemAvailable:")
            |> Option.map (fun l -> float (l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) / 1048576.0)
        with _ -> None

    /// How many workers this node runs.
    let workerCount (s: ManagerSettings) =
        let cores =
            match Environment.GetEnvironmentVariable "PARSL_CORES" |> Option.ofObj |> Option.map Int32.TryParse with
            | Some(true, n) -> n
            | _ -> Environment.ProcessorCount
        let mem =
            match Environment.GetEnvironmentVariable "PARSL_MEMORY_GB" |> Option.ofObj |> Option.map Double.TryParse with
            | Some(true, m) -> Some m
            | _ -> if s.MemPerWorker.IsSome then readMemAvailableGb () else None
        Policies.workerCount s.MaxWorkers cores s.CoresPerWorker mem s.MemPerWorker s.Accelerators.Length

    /// Runs the manager until it is told to stop or loses the interchange; returns the exit code.
    let run (s: ManagerSettings) : int =
        // No `sprintf` on the start-up path: its first call costs tens of milliseconds (measured), all before the
        // first result.
        let log (text: string) =
            s.Log.WriteLine(DateTime.UtcNow.ToString "HH:mm:ss.fff" + " manager " + s.ManagerId + ": " + text)
            s.Log.Flush()
        let host = Environment.MachineName
        let count = workerCount s
        let affinity = match Policies.parseAffinity s.CpuAffinity with Ok a -> a | Error _ -> NoAffinity
        let tasksetExists = File.Exists "/usr/bin/taskset"
        let perWorker = max 1 (int (ceil (float (count + s.Prefetch) / float count)))
        let events = ConcurrentQueue<WorkerEvent>()
        // Made once the first worker is starting (making it starts NetMQ, which takes a while).
        let doorbellCell = lazy (new NetMQQueue<bool>())
        let mutable rung = 0
        // Set when the loop has ended, before the doorbell is disposed: a closed NetMQQueue spins on Enqueue.
        let mutable closed = false
        let post e =
            events.Enqueue e
            if Interlocked.Exchange(&rung, 1) = 0 then
                lock doorbellCell (fun () -> if not closed then doorbellCell.Value.Enqueue true)
        let slots =
            Array.init count (fun r ->
                { Rank = r; Generation = 0; Process = null; Conn = null
                  Outstanding = List(); Functions = HashSet(); Groups = Dictionary(); Up = false
                  StartFailures = 0; StartErr = Text.StringBuilder(); Retiring = false })
        // Workers connect to this local socket; the poller reads their results directly (no reader thread and no
        // hand-off per result), and their standard output and error stay free for what tasks print.
        let socketName = "parsl-net-worker-" + s.ManagerId + "-" + string Environment.ProcessId
        let mutable stopping = false
        let mutable exitCode = 0

        let startWorker (slot: WorkerSlot) =
            let cores = Policies.coresFor affinity Environment.ProcessorCount count slot.Rank
            let program, args =
                match cores, s.WorkerCommand with
                | [], p :: a -> p, a
                | cs, p :: a when tasksetExists -> "/usr/bin/taskset", "-c" :: String.Join(",", cs) :: p :: a
                | _, p :: a -> p, a
                | _, [] -> failwith "empty worker command"
            let psi = ProcessStartInfo(program)
            for a in args @ [ "--worker"; string slot.Rank; "--generation"; string (slot.Generation + 1); "--connect"; socketName ] do
                psi.ArgumentList.Add a
            psi.UseShellExecute <- false
            // Read by a pump that passes it on to this manager's stderr (the block's error file, as before) and keeps
            // the first lines of a start, which say why a worker could not start.
            psi.RedirectStandardError <- true
            let env = psi.Environment
            // A killed worker would leave the runtime's debugger and diagnostics pipes in /tmp; unless the user
            // chose otherwise, workers open none.
            if isNull (Environment.GetEnvironmentVariable "DOTNET_EnableDiagnostics") then env["DOTNET_EnableDiagnostics"] <- "0"
            env["PARSL_WORKER_RANK"] <- string slot.Rank
            env["PARSL_WORKER_COUNT"] <- string count
            env["PARSL_WORKER_POOL_ID"] <- s.ManagerId
            env["PARSL_WORKER_BLOCK_ID"] <- s.BlockId
            match Policies.acceleratorFor s.Accelerators slot.Rank with
            | Some a ->
                env["CUDA_VISIBLE_DEVICES"] <- a
                env["ROCR_VISIBLE_DEVICES"] <- a
                env["ZE_AFFINITY_MASK"] <- a
                env["ZE_ENABLE_PCI_ID_DEVICE_ORDER"] <- "1"
            | None -> ()
            if not cores.IsEmpty then
                let list = String.Join(",", cores)
                env["OMP_NUM_THREADS"] <- string cores.Length
                env["GOMP_CPU_AFFINITY"] <- list
                env["KMP_AFFINITY"] <- sprintf "explicit,proclist=[%s]" list
            let p = Process.Start psi
            slot.Generation <- slot.Generation + 1
            slot.Process <- p
            slot.Functions.Clear()
            slot.Up <- false
            slot.Retiring <- false
            lock slot.StartErr (fun () -> slot.StartErr.Clear() |> ignore)
            let gen = slot.Generation
            let pump =
                Thread(
                    (fun () ->
                        let buffer = Array.zeroCreate<byte> 8192
                        use err = Console.OpenStandardError()
                        let source = p.StandardError.BaseStream
                        let mutable n = source.Read(buffer, 0, buffer.Length)
                        while n > 0 do
                            (try err.Write(buffer, 0, n); err.Flush() with _ -> ())
                            lock slot.StartErr (fun () ->
                                if slot.Generation = gen && not slot.Up && slot.StartErr.Length < 2048 then
                                    slot.StartErr.Append(Text.Encoding.UTF8.GetString(buffer, 0, min n (2048 - slot.StartErr.Length))) |> ignore)
                            n <- source.Read(buffer, 0, buffer.Length)),
                    IsBackground = true,
                    Name = "worker-" + string slot.Rank + "-stderr")
            pump.Start()
            // Blocks until the worker exits: no CPU per task.
            let waiter =
                Thread(
                    (fun () ->
                        p.WaitForExit()
                        post (Exited(slot.Rank, gen, p.ExitCode))),
                    IsBackground = true,
                    Name = "worker-" + string slot.Rank + "-waiter")
            waiter.Start()
            log ("worker " + string slot.Rank + " started as pid " + string p.Id)

        // The first worker starts at once: a process start is the longest step before the first result, and it
        // overlaps with the connection and registration below. The others start once it has returned its first
        // results (or died, or a moment passed): started together, their start-up competes for the cores with
        // the first task (measured on 2 cores: first result 0.25 s later).
        let mutable restStarted = slots.Length = 1
        let startRest () =
            if not restStarted then
                restStarted <- true
                for slot in slots do
                    if isNull slot.Process then startWorker slot
        startWorker slots[0]
        // Listening after the first worker is on its way (a process start takes far longer; it retries meanwhile).
        let listener = LocalSocket.listen socketName (count + 8)
        let doorbell = doorbellCell.Value
        let restTimer = new NetMQTimer(TimeSpan.FromMilliseconds 300.0)
        restTimer.Enable <- false
        // The manager's state is shared by its poller thread and, on a local connection, the threads that read the
        // interchange's and the workers' connections: each handler runs under this lock.
        let gate = obj ()
        restTimer.Elapsed.Add(fun _ ->
            lock gate (fun () ->
                restTimer.Enable <- false
                startRest ()))
        let warm =
            Thread((fun () -> if not (Serialization.precompiled ()) then Serialization.warmUp (Serialization.options (fun _ -> false))), IsBackground = true, Name = "warm-up")
        warm.Start()
        // The client writes its keys just after launching this block: wait for them (each file appears whole).
        let readKey (dir: string) (name: string) =
            let path = Path.Combine(dir, name)
            let deadline = DateTime.UtcNow.AddSeconds 30.0
            while not (File.Exists path) && DateTime.UtcNow < deadline do
                Thread.Sleep 2
            if not (File.Exists path) then
                failwithf "the client's key %s did not appear within 30 s; the client that launched this block has gone or cannot write there" path
            File.ReadAllLines path
        let clientKey = s.CertDir |> Option.map (fun dir -> readKey dir "client.key")
        // On the interchange's own host, a local socket: the kernel hands each message straight to the thread that
        // reads it (TCP through NetMQ goes through two more threads on each side). Anywhere else, TCP (with CURVE).
        let local =
            match s.LocalSocket with
            | None -> None
            | Some name ->
                match (try Some(LocalSocket.connect name) with :? System.Net.Sockets.SocketException -> None) with
                | None -> None
                | Some conn when snd (LocalSocket.peer conn) <> LocalSocket.uid.Value ->
                    // Another user's socket under that name is not our interchange.
                    conn.Dispose()
                    None
                | Some conn ->
                    let link = Link conn
                    // The hello: the client's secret key, which only a manager launched by the client has.
                    link.Send(Encoding.UTF8.GetBytes(match clientKey with Some k -> k[1].Trim() | None -> ""))
                    Some link
        let dealer =
            match local with
            | Some _ -> None
            | None ->
                let dealer = new DealerSocket()
                dealer.Options.Identity <- Encoding.UTF8.GetBytes s.ManagerId
                dealer.Options.Linger <- TimeSpan.FromSeconds 1.0
                dealer.Options.SendHighWatermark <- 0
                dealer.Options.ReceiveHighWatermark <- 0
                match s.CertDir, clientKey with
                | Some dir, Some client when s.Curve ->
                    let server = (Array.head (readKey dir "server.key")).Trim()
                    dealer.Options.CurveServerKey <- NetMQCertificate.FromPublicKey(server).PublicKey
                    dealer.Options.CurveCertificate <- NetMQCertificate(client[1].Trim(), client[0].Trim())
                | _ -> ()
                dealer.Connect s.Address
                Some dealer
        let sendBytes (bytes: byte[]) =
            match local, dealer with
            | Some link, _ -> link.Send bytes
            | None, Some d -> d.TrySendFrame bytes |> ignore
            | None, None -> ()
        // The interchange refuses (disconnects) a message longer than its bound: a batch that long goes out one result
        // at a time, and a result that alone is too long fails its task, saying why.
        let limit = s.MaxMessageSize
        let rec sendMsg (m: ToInterchange) =
            let bytes = Protocol.encodeToInterchange m
            match m with
            | Results rs when bytes.Length > limit ->
                match rs with
                | [ r ] ->
                    let why =
                        "the result is " + string bytes.Length + " bytes, more than the interchange accepts (HighThroughputExecutor.MaxMessageSize = "
                        + string limit + "); return less, or raise MaxMessageSize"
                    sendBytes (Protocol.encodeToInterchange (Results [ { Key = r.Key; Outcome = Unserializable why } ]))
                | rs ->
                    for r in rs do
                        sendMsg (Results [ r ])
            | _ -> sendBytes bytes

        // Function definitions ready for workers, and those waiting for assemblies from the interchange.
        let ready = Dictionary<int, byte[]>()
        let waiting = Dictionary<int, AssemblyRef list * byte[]>()
        let resolved = Dictionary<string, string>() // hash -> verified local path
        let requested = HashSet<string>()
        let verified = Dictionary<string, string>() // path -> hash
        let held = List<WireTask>()
        let pending = LinkedList<WireTask>()
        let outbox = List<WireResult>()
        let cancelled = HashSet<int64>()
        let cancelledOutcome k =
            let id, _ = Protocol.ofKey k
            { Key = k; Outcome = Raised("System.OperationCanceledException", sprintf "Task %d was cancelled" id, "", []) }

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
                let cached = Path.Combine(s.CacheDir, r.Hash + ".dll")
                let found =
                    if s.SharedFileSystem && File.Exists r.Path && hashOf r.Path = r.Hash then Some r.Path
                    elif File.Exists cached && hashOf cached = r.Hash then Some cached
                    else None
                found |> Option.iter (fun p -> resolved[r.Hash] <- p)
                found

        let tryComplete (fid: int) =
            match waiting.TryGetValue fid with
            | true, (refs, body) ->
                let local = refs |> List.map (fun r -> r, localCopy r)
                let missing = local |> List.filter (snd >> Option.isNone) |> List.map fst
                if missing.IsEmpty then
                    waiting.Remove fid |> ignore
                    ready[fid] <- Serialization.rewriteDefinition (local |> List.map (fun (r, p) -> { r with Path = p.Value })) body
                    for t in List.ofSeq held do
                        match t.Body with
                        | Call(f, _, _, _) when f = fid ->
                            held.Remove t |> ignore
                            pending.AddLast t |> ignore
                        | _ -> ()
                else
                    for r in missing do
                        if requested.Add r.Hash then sendMsg (NeedAssembly r.Hash)
            | _ -> ()

        let accept (t: WireTask) =
            match t.Body with
            | Call(fid, def, args, wall) ->
                if not (isNull def) && not (ready.ContainsKey fid) && not (waiting.ContainsKey fid) then
                    waiting[fid] <- Serialization.decodeDefinition def
                    tryComplete fid
                let t = { t with Body = Call(fid, null, args, wall) }
                if ready.ContainsKey fid then pending.AddLast t |> ignore else held.Add t
            | Command _ -> pending.AddLast t |> ignore

        let dispatch () =
            if pending.Count > 0 then
                for slot in slots do
                    if pending.Count > 0 && not (isNull slot.Conn) && not slot.Retiring && slot.Outstanding.Count < perWorker then
                        let n = min (perWorker - slot.Outstanding.Count) pending.Count
                        let batch = List<WireTask>(n)
                        for _ in 1..n do
                            let t = pending.First.Value
                            pending.RemoveFirst()
                            let t =
                                match t.Body with
                                | Call(fid, _, args, wall) when slot.Functions.Add fid -> { t with Body = Call(fid, ready[fid], args, wall) }
                                | _ -> t
                            slot.Outstanding.Add t
                            batch.Add t
                        // If the worker is dying, its exit is reported by its waiter and the tries are handled there.
                        slot.Conn.Send(Protocol.encodeToWorker (Run(List.ofSeq batch)))

        let stopWorkers () =
            // A worker exits when its connection ends.
            for slot in slots do
                if not (isNull slot.Conn) then slot.Conn.ShutdownSend()
            let deadline = DateTime.UtcNow.AddSeconds 1.0
            for slot in slots do
                if not (isNull slot.Process) then
                    let left = max 0 (int (deadline - DateTime.UtcNow).TotalMilliseconds)
                    if not (slot.Process.WaitForExit left) then
                        try slot.Process.Kill true with _ -> ()

        let poller = new NetMQPoller()
        let stop code =
            if not stopping then
                stopping <- true
                exitCode <- code
                poller.StopAsync()

        let started = DateTime.UtcNow
        let mutable lastHeard = started
        let mutable lastSent = started
        let mutable draining = false

        // Over TCP with a secret nothing but the handshake goes out until the proof has (a heartbeat in between would
        // be dropped as a stranger's message).
        let mutable proving = local.IsNone && s.Authenticate && clientKey.IsSome
        let registration =
            Register
                { ProtocolVersion = Protocol.Version
                  ParslVersion = defaultArg s.ParslVersion (Protocol.parslVersion ())
                  RuntimeVersion = Protocol.runtimeVersion ()
                  ManagerId = s.ManagerId
                  BlockId = s.BlockId
                  Hostname = host
                  WorkerCount = count
                  PrefetchCapacity = s.Prefetch
                  Pid = Environment.ProcessId }

        let onInterchangeFrame (frame: byte[]) =
            if not stopping then
                lastHeard <- DateTime.UtcNow
                match (try Some(Protocol.decodeToManager frame) with _ -> None) with
                | None -> log "ignored a malformed message"
                | Some Accepted -> log "registered"
                | Some(Refused reason) ->
                    log (sprintf "refused by the interchange: %s" reason)
                    stop 3
                | Some HeartbeatReply -> ()
                | Some(Challenge nonce) ->
                    // Over TCP: prove the run's secret (never sent itself) for this nonce and identity, then register.
                    match clientKey, dealer with
                    | Some k, Some d when s.Authenticate && not (isNull nonce) ->
                        sendBytes (Handshake.proof (Handshake.key (k[1].Trim())) nonce d.Options.Identity)
                        proving <- false
                        sendMsg registration
                    | _ -> log "ignored a challenge it cannot answer" 
                | Some(Tasks ts) ->
                    for t in ts do
                        accept t
                | Some(Assembly(h, bytes)) ->
                    if isNull bytes then
                        // The client cannot supply it: fail the tries that need it.
                        for fid in List.ofSeq waiting.Keys do
                            let refs, _ = waiting[fid]
                            if refs |> List.exists (fun r -> r.Hash = h) then
                                waiting.Remove fid |> ignore
                                for t in List.ofSeq held do
                                    match t.Body with
                                    | Call(f, _, _, _) when f = fid ->
                                        held.Remove t |> ignore
                                        outbox.Add { Key = t.Key; Outcome = Unserializable(sprintf "assembly %s is not available to workers" h) }
                                    | _ -> ()
                    else
                        Directory.CreateDirectory s.CacheDir |> ignore
                        let target = Path.Combine(s.CacheDir, h + ".dll")
                        let tmp = target + "." + s.ManagerId + ".tmp"
                        File.WriteAllBytes(tmp, bytes)
                        File.Move(tmp, target, true)
                        resolved[h] <- target
                        for fid in List.ofSeq waiting.Keys do
                            tryComplete fid
                | Some(CancelTry k) ->
                    match pending |> Seq.tryFind (fun t -> t.Key = k) with
                    | Some t ->
                        pending.Remove t |> ignore
                        outbox.Add(cancelledOutcome k)
                    | None ->
                        match held |> Seq.tryFind (fun t -> t.Key = k) with
                        | Some t ->
                            held.Remove t |> ignore
                            outbox.Add(cancelledOutcome k)
                        | None ->
                            match slots |> Array.tryFind (fun w -> w.Outstanding.Exists(fun t -> t.Key = k)) with
                            | Some w ->
                                cancelled.Add k |> ignore
                                // Running now: only killing the worker stops it (it is restarted).
                                if w.Outstanding[0].Key = k then
                                    log (sprintf "killing worker %d to cancel a running try" w.Rank)
                                    try w.Process.Kill true with _ -> ()
                            | None -> ()
                | Some Drained ->
                    log "drained"
                    stop 0
                | Some Shutdown ->
                    log "told to shut down"
                    stop 0

        let flushOutbox () =
            if not stopping then
                dispatch ()
                if outbox.Count > 0 then
                    sendMsg (Results(List.ofSeq outbox))
                    outbox.Clear()

        match local, dealer with
        | Some link, _ ->
            link.StartReader(
                "interchange-reader",
                fun () ->
                    lock gate (fun () ->
                        if not (link.ReadAvailable onInterchangeFrame) then
                            link.Close()
                            if not stopping then
                                log "the interchange closed its connection; exiting"
                                stop 2
                        flushOutbox ())
            )
        | None, Some d ->
            d.ReceiveReady.Add(fun _ ->
                lock gate (fun () ->
                    let mutable frame: byte[] = null
                    while not stopping && d.TryReceiveFrameBytes(&frame) do
                        onInterchangeFrame frame
                    flushOutbox ()))
            poller.Add d
        | None, None -> ()

        let onResults (slot: WorkerSlot) (rs: WireResult list) =
            startRest ()
            for r in rs do
                let i = slot.Outstanding.FindIndex(fun t -> t.Key = r.Key)
                if i >= 0 then slot.Outstanding.RemoveAt i
                outbox.Add(if cancelled.Count > 0 && cancelled.Remove r.Key then cancelledOutcome r.Key else r)

        /// Tries a worker was given but had not started, back to the front of the queue for other workers.
        let requeueUnstarted (slot: WorkerSlot) (from: int) =
            for t in Seq.rev (Seq.skip from slot.Outstanding) do
                let t =
                    match t.Body with
                    | Call(fid, _, args, wall) -> { t with Body = Call(fid, null, args, wall) }
                    | _ -> t
                pending.AddFirst t |> ignore
            slot.Outstanding.RemoveRange(from, slot.Outstanding.Count - from)

        let onWorkerFrame (slot: WorkerSlot) (frame: byte[]) =
            match Protocol.decodeFromWorker frame with
            | GroupStarted(k, pgid) -> slot.Groups[k] <- pgid
            | Done rs ->
                for r in rs do
                    slot.Groups.Remove r.Key |> ignore
                // A function app past its walltime: the worker ends itself after this result. The tries queued behind
                // it go to other workers now, and it gets no more.
                let timedOut =
                    rs |> List.exists (fun r ->
                        match r.Outcome with
                        | Raised(t, _, _, _) when t = typeof<Parsl.AppTimeout>.FullName ->
                            slot.Outstanding.Exists(fun o -> o.Key = r.Key && (match o.Body with Call _ -> true | Command _ -> false))
                        | _ -> false)
                onResults slot rs
                if timedOut && not slot.Retiring then
                    slot.Retiring <- true
                    requeueUnstarted slot 0
                    log (sprintf "worker %d ran a function app past its walltime; replacing it" slot.Rank)
                    try slot.Process.Kill true with _ -> ()

        let closeConn (slot: WorkerSlot) =
            if not (isNull slot.Conn) then
                // Over TCP the poller reads the workers; on a local connection each has a reader thread.
                if local.IsNone then poller.Remove slot.Conn.Socket
                slot.Conn.Close()
                slot.Conn <- null

        let onWorkerReadable (slot: WorkerSlot) (conn: System.Net.Sockets.Socket) =
            if not (isNull slot.Conn) && obj.ReferenceEquals(conn, slot.Conn.Socket) then
                if not (slot.Conn.ReadAvailable(onWorkerFrame slot)) then closeConn slot
                flushOutbox ()

        listener.Blocking <- true
        // Who is at the other end of a local connection, from the kernel (SO_PEERCRED), not from what it says: only
        // the worker process this manager started (or a process it started, for a wrapping WorkerCommand) is let in,
        // so another user on the node cannot pose as a worker and read tasks.
        let onHello (l: System.Net.Sockets.Socket) =
            let conn = l.Accept()
            let peer, _ = LocalSocket.peer conn
            // The hello: "rank generation pid", sent at once by a worker that connects. Read only from processes this
            // manager started: a stranger is dropped before it can hold the loop up.
            let owner = slots |> Array.tryFind (fun w -> not (isNull w.Process) && LocalSocket.startedBy w.Process.Id peer)
            conn.ReceiveTimeout <- 5000
            let hello =
                if owner.IsNone then None
                else
                    try
                        use st = new System.Net.Sockets.NetworkStream(conn, false)
                        Frames.read st |> Option.map Text.Encoding.UTF8.GetString
                    with _ -> None
            conn.ReceiveTimeout <- 0
            // The hello must name the slot whose process is connecting, in its current start.
            lock gate (fun () ->
                match owner, hello |> Option.map (fun h -> h.Split ' ') with
                | Some slot, Some [| rank; gen; _ |] when string slot.Rank = rank && string slot.Generation = gen && isNull slot.Conn ->
                    let link = Link conn
                    slot.Conn <- link
                    lock slot.StartErr (fun () -> slot.Up <- true)
                    slot.StartFailures <- 0
                    // On a local connection to the interchange, results go out from the thread that read them (one
                    // wake-up per result batch); over TCP the dealer belongs to the poller, so the poller reads workers.
                    if local.IsSome then
                        link.StartReader("worker-" + string slot.Rank + "-reader", fun () -> lock gate (fun () -> onWorkerReadable slot conn))
                    else
                        poller.Add(conn, Action<System.Net.Sockets.Socket>(onWorkerReadable slot))
                    flushOutbox ()
                    restTimer.Enable <- true
                | _ ->
                    log (sprintf "refused a local connection from pid %d that is not a current worker (%A)" peer hello)
                    conn.Dispose())
        poller.Add(listener, Action<System.Net.Sockets.Socket>(onHello))

        /// Kills the process groups of the shell apps a worker was running (they are in groups of their own, so the
        /// worker's death does not reach them). A group is killed once: its id could be reused after it is gone.
        let killGroups (slot: WorkerSlot) =
            for KeyValue(k, pgid) in List.ofSeq slot.Groups do
                log (sprintf "killing process group %d of try %d, left by worker %d" pgid k slot.Rank)
                Parsl.Node.Runtime.Native.killGroup pgid
            slot.Groups.Clear()

        // Workers that cannot start (a WorkerCommand they cannot run with, a broken runtime) are restarted after
        // 0.1, 0.2, 0.4, 0.8 s; the fifth failure in a row fails the block, saying why (was: a restart loop of
        // thousands a second that never failed the task).
        let maxStartFailures = 5
        let backoff (failures: int) = TimeSpan.FromMilliseconds(100.0 * Math.Pow(2.0, float (failures - 1)) |> min 5000.0)
        let timers = List<Timer>()

        /// The block cannot run tries: every try it holds fails with `BadStateException` saying why, the reason goes
        /// to the block's error file, and the manager exits (its block fails, and the executor judges it).
        let failBlock (reason: string) =
            log reason
            let bad k = { Key = k; Outcome = Raised(typeof<Parsl.BadStateException>.FullName, reason, "", []) }
            for t in pending do
                outbox.Add(bad t.Key)
            pending.Clear()
            for t in held do
                outbox.Add(bad t.Key)
            held.Clear()
            for slot in slots do
                for t in slot.Outstanding do
                    outbox.Add(bad t.Key)
                slot.Outstanding.Clear()
            if outbox.Count > 0 then
                sendMsg (Results(List.ofSeq outbox))
                outbox.Clear()
            stop 4

        let onEvents () =
            let mutable e = Unchecked.defaultof<WorkerEvent>
            while events.TryDequeue(&e) do
                match e with
                | RestartDue(rank, gen) ->
                    let slot = slots[rank]
                    if not stopping && gen = slot.Generation && not (isNull slot.Process) && slot.Process.HasExited then
                        slot.Process.Dispose()
                        startWorker slot
                | Exited(rank, gen, code) ->
                    // A first worker that died before it was up must not hold the others back.
                    startRest ()
                    let slot = slots[rank]
                    if gen = slot.Generation then
                        // Results it sent before it died count: read to the end of its connection first.
                        if not (isNull slot.Conn) then
                            slot.Conn.ReadToEnd(onWorkerFrame slot, TimeSpan.FromSeconds 1.0)
                            closeConn slot
                        killGroups slot
                        if not stopping then
                            if slot.Outstanding.Count > 0 then
                                let lost = slot.Outstanding[0]
                                outbox.Add(
                                    if cancelled.Remove lost.Key then cancelledOutcome lost.Key
                                    else { Key = lost.Key; Outcome = WorkerDied(rank, host) })
                                // The rest never started: give them to other workers.
                                requeueUnstarted slot 1
                                slot.Outstanding.Clear()
                            if slot.Up then
                                log (sprintf "worker %d exited with code %d; restarting it" rank code)
                                slot.Process.Dispose()
                                startWorker slot
                            else
                                slot.StartFailures <- slot.StartFailures + 1
                                let err = lock slot.StartErr (fun () -> slot.StartErr.ToString().Trim())
                                if slot.StartFailures >= maxStartFailures then
                                    failBlock (
                                        sprintf "worker %d could not start: it exited with code %d before connecting, %d times in a row (worker command: %s)%s"
                                            rank code slot.StartFailures (String.Join(" ", s.WorkerCommand))
                                            (if err = "" then "; it wrote nothing to stderr" else "; its stderr:\n" + err))
                                else
                                    let wait = backoff slot.StartFailures
                                    log (sprintf "worker %d exited with code %d before connecting; restarting it in %g s" rank code wait.TotalSeconds)
                                    let t = new Timer((fun _ -> post (RestartDue(rank, gen))), null, wait, Timeout.InfiniteTimeSpan)
                                    timers.Add t
            flushOutbox ()

        doorbell.ReceiveReady.Add(fun _ ->
            let mutable b = false
            while doorbell.TryDequeue(&b, TimeSpan.Zero) do
                ()
            Volatile.Write(&rung, 0)
            lock gate onEvents)

        let tickMs = s.HeartbeatPeriod.TotalMilliseconds / 2.0 |> max 10.0 |> min 1000.0
        let tick = new NetMQTimer(TimeSpan.FromMilliseconds tickMs)
        tick.Elapsed.Add(fun _ ->
            lock gate (fun () ->
                let t = DateTime.UtcNow
                if t - lastHeard > s.HeartbeatThreshold then
                    log "heard nothing from the interchange within the heartbeat threshold; exiting"
                    stop 2
                else
                    if t - lastSent >= s.HeartbeatPeriod && not proving then
                        sendMsg Heartbeat
                        lastSent <- t
                    match s.DrainPeriod with
                    | Some d when not draining && t - started > d ->
                        draining <- true
                        log "draining"
                        sendMsg Drain
                    | _ -> ()))

        poller.Add doorbell
        poller.Add restTimer
        poller.Add tick
        // Over TCP with a secret the registration follows the proof (see `Challenge` above).
        if proving then sendBytes (Handshake.hello ())
        else sendMsg registration
        log ((if local.IsSome then "connected to the local socket of " else "connecting to ") + s.Address + " with " + string count + " workers (block " + s.BlockId + ")")
        // Asked to stop (a block cancelled by its provider, Ctrl-C): stop as on Shutdown, so that the workers and their
        // shell apps go too, instead of the runtime's default of exiting at once.
        let onSignal (ctx: Runtime.InteropServices.PosixSignalContext) =
            ctx.Cancel <- true
            lock gate (fun () ->
                log (sprintf "received %O; stopping" ctx.Signal)
                // At once: whoever sent the signal may follow it with SIGKILL (a provider's cancel does, 2 s later).
                for slot in slots do
                    killGroups slot
                stop (128 + (if ctx.Signal = Runtime.InteropServices.PosixSignal.SIGINT then 2 else 15)))
        use _term = Runtime.InteropServices.PosixSignalRegistration.Create(Runtime.InteropServices.PosixSignal.SIGTERM, onSignal)
        use _int = Runtime.InteropServices.PosixSignalRegistration.Create(Runtime.InteropServices.PosixSignal.SIGINT, onSignal)
        try
            poller.Run()
        finally
            // Whatever ends the manager, no shell app it was running outlives it; first, before anything that may take
            // a while (a SIGKILL may follow).
            lock gate (fun () ->
                for slot in slots do
                    killGroups slot
                for t in timers do
                    t.Dispose())
            stopWorkers ()
            warm.Join()
            lock doorbellCell (fun () -> closed <- true)
            poller.Dispose()
            lock gate (fun () ->
                for slot in slots do
                    if not (isNull slot.Conn) then slot.Conn.Close())
            listener.Dispose()
            local |> Option.iter (fun l -> l.Close())
            dealer |> Option.iter (fun d -> d.Dispose())
            doorbell.Dispose()
            NetMQConfig.Cleanup(false)
        exitCode
