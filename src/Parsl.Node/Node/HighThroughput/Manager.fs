namespace Parsl.Node.HighThroughput

open System
open System.Collections.Concurrent
open System.Collections.Generic
open System.Diagnostics
open System.IO
open System.Text
open System.Net.Sockets
open System.Runtime.InteropServices
open System.Threading
open NetMQ
open NetMQ.Sockets


// The manager: one owner, no lock. Every piece of its state (slots, queues, function definitions) is touched only
// by the handlers of one InlineOwner mailbox: whichever thread posts while the owner is idle runs the drain itself
// (so a result read from a worker sends that worker's next task and the result, without waking another thread);
// a thread that posts while another drains just leaves its message to that drain. Threads never block inside a
// handler: process starts and kills, and file reads and writes, are messages to the io helper (ManagerIo.fs).
//
//   thread                   posts                                 how
//   interchange-reader (1)   FromInterchange batches, closed       hot: drains inline     (local socket)
//   poller (main thread)     dealer frames, Tick; drains on doorbell  hot                 (TCP: and reads workers)
//   worker-N-reader (1/wkr)  WorkerHello, FromWorker, closed       hot                    (local socket)
//   worker-acceptor (1)      Connected (peer pid and parents)      cold: queue + doorbell
//   manager-io (1)           WorkerStarted, Located, Stored        cold
//   worker-N-waiter/-stderr  WorkerExited                          cold   (started and joined by manager-io)
//   timers, signal handler   RestartDue, ExitGrace, StartRest, Signalled     cold
//
//   readers/poller ──hot──▶ ┌──────── InlineOwner (CAS owner flag) ────────┐ ──IoRequest──▶ manager-io
//   others ──cold──▶ doorbell│ handle m …; afterDrain: dispatch + results   │ ◀──IoReply(cold)──┘
//                  ──▶ poller└──────────────────────────────────────────────┘ ──▶ workers, interchange
//
// Over TCP the dealer socket is the poller's: every post from another thread is then cold, so handlers run on the
// poller thread only. At the end the main thread seals the owner (waits out a drain, then holds it) and cleans up.

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


type private WorkerSlot =
    { Rank: int
      mutable Generation: int
      /// The current start's process: null until the IO helper says it started.
      mutable Process: Process
      /// A start was asked of the IO helper and not yet reported.
      mutable Starting: bool
      /// The current start's exit has been handled (or it never started).
      mutable Exited: bool
      /// The current start exited (code, the first of its stderr) while its connection was open: handled once the
      /// connection's reader has seen its end (results it sent before it died count), or after a grace period.
      mutable ExitPending: (int * string) option
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
      /// Being replaced: a function app ran past its walltime and the worker ends itself; no new tries.
      mutable Retiring: bool }

/// Everything the manager's owner handles. Reader threads and the poller decode and post these; nothing else
/// touches the manager's state.
type private ManagerMsg =
    /// What one read of the interchange's connection brought, decoded (None: a message that did not decode).
    | FromInterchange of ToManager option list
    | InterchangeClosed
    /// A local connection was accepted; its peer's pid and that process's ancestors, nearest first (from /proc).
    | Connected of conn: Socket * lineage: int list
    /// The first frame on a worker's connection: "rank generation pid".
    | WorkerHello of rank: int * link: Link * hello: string
    | FromWorker of rank: int * link: Link * messages: FromWorker list
    /// The connection ended (or sent what did not decode); everything read from it was posted before.
    | WorkerClosed of rank: int * link: Link
    | Io of IoReply
    /// A worker that failed at start waited out its back-off: start it again (if nothing else did meanwhile).
    | RestartDue of rank: int * generation: int
    /// A worker exited but its connection did not end within the grace period: handle the exit anyway.
    | ExitGrace of rank: int * generation: int
    | StartRest
    | Tick
    | Signalled of PosixSignal

/// Reads one worker connection: its first frame is the hello, the rest are decoded and posted a read at a time
/// (a batch per read, as they came). Run by a reader thread of its own (local interchange) or by the poller (TCP).
[<Sealed>]
type private WorkerReader(rank: int, link: Link, post: ManagerMsg -> unit) =
    let mutable helloSeen = false
    let batch = List<FromWorker>()

    /// Reads what has arrived and posts it; false (after posting `WorkerClosed`) once the connection has ended.
    member _.ReadOnce() : bool =
        let mutable hello = null
        let mutable corrupt = false
        let open' =
            link.ReadAvailable(fun frame ->
                if not helloSeen then
                    helloSeen <- true
                    hello <- Text.Encoding.UTF8.GetString frame
                elif not corrupt then
                    match (try Some(Protocol.decodeFromWorker frame) with _ -> None) with
                    | Some m -> batch.Add m
                    | None -> corrupt <- true)
        if not (isNull hello) then post (WorkerHello(rank, link, hello))
        if batch.Count > 0 then
            post (FromWorker(rank, link, List.ofSeq batch))
            batch.Clear()
        if open' && not corrupt then true
        else
            link.Close()
            post (WorkerClosed(rank, link))
            false

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
        // MPI: in MPI mode (set by the MPIExecutor in this process's environment) tries take nodes of the block first.
        let mpi =
            match Parsl.Executors.Mpi.MpiTaskScheduler.FromEnvironment log with
            | Ok m -> m
            | Error why ->
                log why
                failwith why
        // After the MPI probes above (their processes are .NET's to reap), before any worker starts.
        Orphans.adopt log
        let affinity = match Policies.parseAffinity s.CpuAffinity with Ok a -> a | Error _ -> NoAffinity
        let tasksetExists = File.Exists "/usr/bin/taskset"
        let perWorker = max 1 (int (ceil (float (count + s.Prefetch) / float count)))
        let slots =
            Array.init count (fun r ->
                { Rank = r; Generation = 0; Process = null; Starting = false; Exited = true; ExitPending = None; Conn = null
                  Outstanding = List(); Functions = HashSet(); Groups = Dictionary(); Up = false
                  StartFailures = 0; Retiring = false })
        // Workers connect to this local socket; their standard output and error stay free for what tasks print.
        let socketName = "parsl-net-worker-" + s.ManagerId + "-" + string Environment.ProcessId
        let mutable stopping = false
        let mutable exitCode = 0

        // ---- posting: hot (drain here when the owner is idle) and cold (ring the poller, which drains) ----
        // The handlers are defined below (they close over everything); the io helper may post before, cold, which
        // only queues: nothing drains before the handlers are in place.
        let mutable handler: ManagerMsg -> unit = ignore
        let mutable afterDrain: unit -> unit = ignore
        let mutable onFault: exn -> unit = ignore
        let owner = InlineOwner<ManagerMsg>((fun m -> handler m), (fun () -> afterDrain ()), (fun e -> onFault e))
        // Made once the first worker is starting (making it starts NetMQ, which takes a while).
        let doorbellCell = lazy (new NetMQQueue<bool>())
        let mutable rung = 0
        // Set when the loop has ended, before the doorbell is disposed: a closed NetMQQueue spins on Enqueue.
        let mutable closed = false
        /// From a thread that may run handlers: a reader of a local connection, or the poller.
        let postHot (m: ManagerMsg) = owner.Post m
        /// From a thread that must not (it may be inside a blocking call, or over TCP the dealer is the poller's): the
        /// io helper, process waiters, timers, the acceptor, signal handlers.
        let postCold (m: ManagerMsg) =
            owner.Enqueue m
            if Interlocked.Exchange(&rung, 1) = 0 then
                lock doorbellCell (fun () -> if not closed then doorbellCell.Value.Enqueue true)
        let io = ManagerIo(s.CacheDir, s.SharedFileSystem, s.ManagerId, log, Io >> postCold)

        let startSpec (rank: int) (generation: int) : WorkerStart =
            let cores = Policies.coresFor affinity Environment.ProcessorCount count rank
            let program, args =
                match cores, s.WorkerCommand with
                | [], p :: a -> p, a
                | cs, p :: a when tasksetExists -> "/usr/bin/taskset", "-c" :: String.Join(",", cs) :: p :: a
                | _, p :: a -> p, a
                | _, [] -> failwith "empty worker command"
            let env = List<string * string>()
            // A killed worker would leave the runtime's debugger and diagnostics pipes in /tmp; unless the user
            // chose otherwise, workers open none.
            if isNull (Environment.GetEnvironmentVariable "DOTNET_EnableDiagnostics") then env.Add("DOTNET_EnableDiagnostics", "0")
            env.Add("PARSL_WORKER_RANK", string rank)
            env.Add("PARSL_WORKER_COUNT", string count)
            env.Add("PARSL_WORKER_POOL_ID", s.ManagerId)
            env.Add("PARSL_WORKER_BLOCK_ID", s.BlockId)
            match Policies.acceleratorFor s.Accelerators rank with
            | Some a ->
                for k in [ "CUDA_VISIBLE_DEVICES"; "ROCR_VISIBLE_DEVICES"; "ZE_AFFINITY_MASK" ] do
                    env.Add(k, a)
                env.Add("ZE_ENABLE_PCI_ID_DEVICE_ORDER", "1")
            | None -> ()
            if not cores.IsEmpty then
                let list = String.Join(",", cores)
                env.Add("OMP_NUM_THREADS", string cores.Length)
                env.Add("GOMP_CPU_AFFINITY", list)
                env.Add("KMP_AFFINITY", "explicit,proclist=[" + list + "]")
            { Rank = rank; Generation = generation; Program = program
              Arguments = args @ [ "--worker"; string rank; "--generation"; string generation; "--connect"; socketName ]
              Environment = List.ofSeq env }

        /// A new start of the slot's worker, by the io helper (reported by `WorkerStarted`).
        let requestStart (slot: WorkerSlot) =
            slot.Generation <- slot.Generation + 1
            slot.Process <- null
            slot.Starting <- true
            slot.Exited <- false
            slot.ExitPending <- None
            slot.Functions.Clear()
            slot.Up <- false
            slot.Retiring <- false
            io.Post(StartWorker(startSpec slot.Rank slot.Generation))

        // The first worker starts at once: a process start is the longest step before the first result, and it
        // overlaps with the connection and registration below (on the io thread). The others start once it has
        // returned its first results (or died, or a moment passed): started together, their start-up competes for the
        // cores with the first task (measured on 2 cores: first result 0.25 s later).
        let mutable restStarted = slots.Length = 1
        let mutable restTimed = false
        let startRest () =
            if not restStarted then
                restStarted <- true
                for slot in slots do
                    if slot.Generation = 0 then requestStart slot
        io.Start()
        requestStart slots[0]
        // Listening after the first worker is on its way (a process start takes far longer; it retries meanwhile).
        let listener = LocalSocket.listen socketName (count + 8)
        let doorbell = doorbellCell.Value
        let timers = List<Timer>()
        /// Posts `m` after `delay` (a timer's thread posts it cold); the timer is disposed when the manager ends.
        let after (delay: TimeSpan) (m: ManagerMsg) =
            timers.Add(new Timer((fun _ -> postCold m), null, delay, Timeout.InfiniteTimeSpan))
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
        // Over TCP the dealer is the poller's: handlers then run only on the poller thread (every post from another
        // thread is cold), so they may send on it.
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

        // ---- the owner's state (touched only by handlers, and by the cleanup once the owner is sealed) ----
        // Function definitions ready for workers, and those waiting for assemblies (located by the io helper).
        let ready = Dictionary<int, byte[]>()
        let waiting = Dictionary<int, AssemblyRef list * byte[]>()
        let requested = HashSet<string>()
        let held = List<WireTask>()
        let pending = LinkedList<WireTask>()
        let outbox = List<WireResult>()
        let cancelled = HashSet<int64>()
        // Local connections whose peer descends from no worker started yet, while a start is in flight (the io
        // helper's report may come after the worker has connected): looked at again when a start is reported.
        let strays = List<Socket * int list>()
        // Links accepted from a worker process and not yet its slot's connection (waiting for the hello).
        let greeting = List<Link>()
        // Reader threads of local connections, joined at the end.
        let readers = List<Thread>()
        let cancelledOutcome k =
            let id, _ = Protocol.ofKey k
            { Key = k; Outcome = Raised("System.OperationCanceledException", sprintf "Task %d was cancelled" id, "", []) }

        let releaseHeld (fid: int) =
            for t in List.ofSeq held do
                match t.Body with
                | Call(f, _, _, _) when f = fid ->
                    held.Remove t |> ignore
                    pending.AddLast t |> ignore
                | _ -> ()

        /// The tries waiting for an assembly that cannot be had fail, saying why.
        let failWaitingOn (hash: string) (why: string) =
            for fid in List.ofSeq waiting.Keys do
                let refs, _ = waiting[fid]
                if refs |> List.exists (fun r -> r.Hash = hash) then
                    waiting.Remove fid |> ignore
                    for t in List.ofSeq held do
                        match t.Body with
                        | Call(f, _, _, _) when f = fid ->
                            held.Remove t |> ignore
                            outbox.Add { Key = t.Key; Outcome = Unserializable why }
                        | _ -> ()

        let onLocated (fid: int) (found: (AssemblyRef * string option) list) =
            if waiting.ContainsKey fid then
                let missing = found |> List.filter (snd >> Option.isNone) |> List.map fst
                if missing.IsEmpty then
                    let _, body = waiting[fid]
                    waiting.Remove fid |> ignore
                    ready[fid] <- Serialization.rewriteDefinition (found |> List.map (fun (r, p) -> { r with Path = p.Value })) body
                    releaseHeld fid
                else
                    for r in missing do
                        if requested.Add r.Hash then sendMsg (NeedAssembly r.Hash)

        let enqueue (t: WireTask) =
            match t.Body with
            | Call(fid, _, _, _) when not (ready.ContainsKey fid) -> held.Add t
            | _ -> pending.AddLast t |> ignore

        let accept (t: WireTask) =
            let t =
                match t.Body with
                | Call(fid, def, args, wall) ->
                    if not (isNull def) && not (ready.ContainsKey fid) && not (waiting.ContainsKey fid) then
                        let refs, body = Serialization.decodeDefinition def
                        waiting[fid] <- (refs, body)
                        io.Post(Locate(fid, refs))
                    { t with Body = Call(fid, null, args, wall) }
                | Command _ -> t
            // MPI: the try waits for nodes, is refused (more than the block has), or runs with its nodes.
            match mpi with
            | Some m ->
                let runnable, refused = m.Accept t
                outbox.AddRange refused
                List.iter enqueue runnable
            | None -> enqueue t

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

        let onInterchange (message: ToManager option) =
            if not stopping then
                lastHeard <- DateTime.UtcNow
                match message with
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
                    // The client cannot supply it: fail the tries that need it. Otherwise the io helper stores it.
                    if isNull bytes then failWaitingOn h (sprintf "assembly %s is not available to workers" h)
                    else io.Post(Store(h, bytes))
                | Some(CancelTry k) when mpi.IsSome && mpi.Value.IsWaiting k ->
                    // MPI: waiting for nodes, held by no worker; its release (from the outbox) withdraws it.
                    outbox.Add(cancelledOutcome k)
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
                                if w.Outstanding[0].Key = k && not (isNull w.Process) then
                                    log (sprintf "killing worker %d to cancel a running try" w.Rank)
                                    io.Post(KillWorker w.Process)
                            | None -> ()
                | Some Drained ->
                    log "drained"
                    stop 0
                | Some Shutdown ->
                    log "told to shut down"
                    stop 0

        /// After every drain: hand out what is queued, and send the results gathered, as one batch.
        let flushOutbox () =
            if not stopping then
                // MPI: every try that ends passes through the outbox (a result, a lost worker, a cancel): its nodes
                // return, and tries that now fit are queued for the workers.
                match mpi with
                | Some m ->
                    for r in outbox do
                        List.iter enqueue (m.Release r.Key)
                | None -> ()
                dispatch ()
                if outbox.Count > 0 then
                    sendMsg (Results(List.ofSeq outbox))
                    outbox.Clear()

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

        let onWorkerMessage (slot: WorkerSlot) (m: FromWorker) =
            match m with
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
                    if not (isNull slot.Process) then io.Post(KillWorker slot.Process)

        /// Over TCP the poller reads the workers (so it must stop polling a link before it is closed); on a local
        /// connection each has a reader thread, which ends when the link is closed.
        let dropLink (link: Link) =
            if local.IsNone then (try poller.Remove link.Socket with _ -> ())
            link.Close()

        let closeConn (slot: WorkerSlot) =
            if not (isNull slot.Conn) then
                dropLink slot.Conn
                slot.Conn <- null

        /// Reads a worker's connection from now on: a thread of its own on a local connection to the interchange
        /// (results go out from the thread that read them: one wake-up per result batch); over TCP the dealer belongs
        /// to the poller, so the poller reads workers.
        let startReading (rank: int) (link: Link) =
            let reader = WorkerReader(rank, link, postHot)
            if local.IsSome then
                let t =
                    Thread(
                        (fun () ->
                            let mutable go = true
                            while go do
                                // Closing the link shuts the socket down first, which ends this wait.
                                let ready = (try link.Socket.Poll(-1, SelectMode.SelectRead) with _ -> false)
                                go <- (if ready then reader.ReadOnce() else (link.Close(); postHot (WorkerClosed(rank, link)); false))),
                        IsBackground = true,
                        Name = "worker-" + string rank + "-reader")
                readers.Add t
                t.Start()
            else
                poller.Add(link.Socket, Action<Socket>(fun _ -> reader.ReadOnce() |> ignore))

        /// Who is at the other end of a local connection, from the kernel (SO_PEERCRED, read by the acceptor), not from
        /// what it says: only a worker process this manager started (or a process it started, for a wrapping
        /// WorkerCommand) is read from, so another user on the node cannot pose as a worker and read tasks.
        let onConnected (conn: Socket) (lineage: int list) =
            match slots |> Array.tryFind (fun w -> not (isNull w.Process) && List.contains w.Process.Id lineage) with
            | Some slot ->
                let link = Link conn
                greeting.Add link
                startReading slot.Rank link
            | None when slots |> Array.exists (fun w -> w.Starting) -> strays.Add((conn, lineage))
            | None ->
                log (sprintf "refused a local connection from pid %d that is not a current worker" (match lineage with p :: _ -> p | [] -> -1))
                conn.Dispose()

        // The hello must name the slot whose process is connecting, in its current start.
        let onHello (slot: WorkerSlot) (link: Link) (hello: string) =
            greeting.Remove link |> ignore
            match hello.Split ' ' with
            | [| rank; gen; _ |] when string slot.Rank = rank && string slot.Generation = gen && isNull slot.Conn && not slot.Exited ->
                slot.Conn <- link
                slot.Up <- true
                slot.StartFailures <- 0
                if not restStarted && not restTimed then
                    restTimed <- true
                    after (TimeSpan.FromMilliseconds 300.0) StartRest
            | _ ->
                log (sprintf "refused a local connection that is not a current worker (%s)" hello)
                dropLink link

        /// Kills the process groups of the shell apps a worker was running (they are in groups of their own, so the
        /// worker's death does not reach them). A group is killed once: its id could be reused after it is gone.
        let killGroups (slot: WorkerSlot) =
            if slot.Groups.Count > 0 then
                io.Post(KillGroups(slot.Rank, [ for KeyValue(k, pgid) in slot.Groups -> k, pgid ]))
                slot.Groups.Clear()

        // Workers that cannot start (a WorkerCommand they cannot run with, a broken runtime) are restarted after
        // 0.1, 0.2, 0.4, 0.8 s; the fifth failure in a row fails the block, saying why (was: a restart loop of
        // thousands a second that never failed the task).
        let maxStartFailures = 5
        let backoff (failures: int) = TimeSpan.FromMilliseconds(100.0 * Math.Pow(2.0, float (failures - 1)) |> min 5000.0)

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

        /// A start that ended before its worker said hello: try again after a back-off, or fail the block.
        let failedStart (slot: WorkerSlot) (what: string) (err: string) =
            slot.StartFailures <- slot.StartFailures + 1
            if slot.StartFailures >= maxStartFailures then
                failBlock (
                    sprintf "worker %d could not start: it %s, %d times in a row (worker command: %s)%s"
                        slot.Rank what slot.StartFailures (String.Join(" ", s.WorkerCommand))
                        (if err = "" then "; it wrote nothing to stderr" else "; its stderr:\n" + err))
            else
                let wait = backoff slot.StartFailures
                log (sprintf "worker %d %s; restarting it in %g s" slot.Rank what wait.TotalSeconds)
                after wait (RestartDue(slot.Rank, slot.Generation))

        let finishExit (slot: WorkerSlot) =
            match slot.ExitPending with
            | None -> ()
            | Some(code, err) ->
                slot.ExitPending <- None
                slot.Exited <- true
                closeConn slot
                killGroups slot
                // What it left outside its reported groups (re-parented to this subreaper), before its next start.
                io.Post(KillOrphans slot.Rank)
                if not stopping then
                    if slot.Outstanding.Count > 0 then
                        let lost = slot.Outstanding[0]
                        outbox.Add(
                            if cancelled.Remove lost.Key then cancelledOutcome lost.Key
                            else { Key = lost.Key; Outcome = WorkerDied(slot.Rank, host) })
                        // The rest never started: give them to other workers.
                        requeueUnstarted slot 1
                        slot.Outstanding.Clear()
                    if slot.Up then
                        log (sprintf "worker %d exited with code %d; restarting it" slot.Rank code)
                        requestStart slot
                    else failedStart slot (sprintf "exited with code %d before connecting" code) err

        let onIo (r: IoReply) =
            match r with
            | WorkerStarted(rank, gen, p) ->
                let slot = slots[rank]
                if gen = slot.Generation then
                    slot.Process <- p
                    slot.Starting <- false
                    if strays.Count > 0 then
                        let again = List.ofSeq strays
                        strays.Clear()
                        for conn, lineage in again do
                            onConnected conn lineage
            | WorkerStartFailed(rank, gen, why) ->
                let slot = slots[rank]
                if gen = slot.Generation then
                    slot.Starting <- false
                    slot.Exited <- true
                    startRest ()
                    if not stopping then failedStart slot ("could not be started (" + why + ")") ""
            | WorkerExited(rank, gen, code, err) ->
                // A first worker that died before it was up must not hold the others back.
                startRest ()
                let slot = slots[rank]
                if gen = slot.Generation && not slot.Exited && slot.ExitPending.IsNone then
                    slot.ExitPending <- Some(code, err)
                    // Results it sent before it died count: its reader reads to the end of the connection first (the
                    // end comes at once from a process that has exited, unless something it started holds it open).
                    if isNull slot.Conn then finishExit slot
                    else after (TimeSpan.FromSeconds 1.0) (ExitGrace(rank, gen))
            | Located(fid, found) -> onLocated fid found
            | Stored(h, Ok _) ->
                for KeyValue(fid, (refs, _)) in List.ofSeq waiting do
                    if refs |> List.exists (fun r -> r.Hash = h) then io.Post(Locate(fid, refs))
            | Stored(h, Error why) -> failWaitingOn h (sprintf "assembly %s could not be stored on the node: %s" h why)

        let onTick () =
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
                | _ -> ()

        let handle (m: ManagerMsg) =
            match m with
            | FromInterchange ms ->
                for x in ms do
                    onInterchange x
            | InterchangeClosed ->
                if not stopping then
                    log "the interchange closed its connection; exiting"
                    stop 2
            | Connected(conn, lineage) -> if stopping then conn.Dispose() else onConnected conn lineage
            | WorkerHello(rank, link, hello) -> onHello slots[rank] link hello
            | FromWorker(rank, link, ms) ->
                let slot = slots[rank]
                if obj.ReferenceEquals(link, slot.Conn) then
                    for x in ms do
                        onWorkerMessage slot x
                else
                    // Read after its worker's exit was handled (its connection outlived the grace period): the tries
                    // have failed already, but a shell app it started must not outlive it.
                    let late = [ for x in ms do match x with GroupStarted(k, pgid) -> yield k, pgid | Done _ -> () ]
                    if not late.IsEmpty then io.Post(KillGroups(rank, late))
            | WorkerClosed(rank, link) ->
                let slot = slots[rank]
                if obj.ReferenceEquals(link, slot.Conn) then
                    closeConn slot
                    finishExit slot
                elif greeting.Remove link then dropLink link
            | Io r -> onIo r
            | RestartDue(rank, gen) ->
                let slot = slots[rank]
                if not stopping && gen = slot.Generation && slot.Exited then requestStart slot
            | ExitGrace(rank, gen) ->
                let slot = slots[rank]
                if gen = slot.Generation then finishExit slot
            | StartRest -> startRest ()
            | Tick -> onTick ()
            | Signalled signal ->
                log (sprintf "received %O; stopping" signal)
                // At once: whoever sent the signal may follow it with SIGKILL (a provider's cancel does, 2 s later).
                for slot in slots do
                    killGroups slot
                stop (128 + (if signal = PosixSignal.SIGINT then 2 else 15))

        let fault (e: exn) =
            log ("internal error, stopping: " + e.ToString())
            stop 1
        handler <- handle
        afterDrain <- flushOutbox
        onFault <- fault

        // ---- the threads that read and post ----
        match local, dealer with
        | Some link, _ ->
            let batch = List<ToManager option>()
            let reader =
                Thread(
                    (fun () ->
                        let mutable go = true
                        while go do
                            let ready = (try link.Socket.Poll(-1, SelectMode.SelectRead) with _ -> false)
                            let open' = ready && link.ReadAvailable(fun f -> batch.Add(try Some(Protocol.decodeToManager f) with _ -> None))
                            if batch.Count > 0 then
                                postHot (FromInterchange(List.ofSeq batch))
                                batch.Clear()
                            if not open' then
                                postHot InterchangeClosed
                                go <- false),
                    IsBackground = true,
                    Name = "interchange-reader")
            readers.Add reader
            reader.Start()
        | None, Some d ->
            let batch = List<ToManager option>()
            d.ReceiveReady.Add(fun _ ->
                let mutable frame: byte[] = null
                while d.TryReceiveFrameBytes(&frame) do
                    batch.Add(try Some(Protocol.decodeToManager frame) with _ -> None)
                if batch.Count > 0 then
                    postHot (FromInterchange(List.ofSeq batch))
                    batch.Clear())
            poller.Add d
        | None, None -> ()

        // Accepts workers' connections, and reads who is at the other end (SO_PEERCRED, then /proc for its parents):
        // blocking calls and file reads, off the owner's path.
        listener.Blocking <- true
        let mutable accepting = true
        let acceptor =
            Thread(
                (fun () ->
                    while Volatile.Read(&accepting) do
                        match (try Ok(listener.Accept()) with e -> Error e) with
                        | Ok conn when Volatile.Read(&accepting) -> postCold (Connected(conn, LocalSocket.lineage (fst (LocalSocket.peer conn))))
                        | Ok conn -> conn.Dispose()
                        | Error(:? ObjectDisposedException) -> Volatile.Write(&accepting, false)
                        // A failure to accept one (no descriptors left, say) is not the end of accepting.
                        | Error _ -> Thread.Sleep 1),
                IsBackground = true,
                Name = "worker-acceptor")
        acceptor.Start()

        doorbell.ReceiveReady.Add(fun _ ->
            let mutable b = false
            while doorbell.TryDequeue(&b, TimeSpan.Zero) do
                ()
            // A full fence: a cold post after this rings again; one before it has queued what this drain takes.
            Interlocked.Exchange(&rung, 0) |> ignore
            owner.TryDrain() |> ignore)

        let tickMs = s.HeartbeatPeriod.TotalMilliseconds / 2.0 |> max 10.0 |> min 1000.0
        let tick = new NetMQTimer(TimeSpan.FromMilliseconds tickMs)
        tick.Elapsed.Add(fun _ -> postHot Tick)

        poller.Add doorbell
        poller.Add tick
        // Over TCP with a secret the registration follows the proof (see `Challenge` above). Sent before the poller
        // runs, from the thread that becomes the poller.
        if proving then sendBytes (Handshake.hello ())
        else sendMsg registration
        log ((if local.IsSome then "connected to the local socket of " else "connecting to ") + s.Address + " with " + string count + " workers (block " + s.BlockId + ")")
        // Asked to stop (a block cancelled by its provider, Ctrl-C): stop as on Shutdown, so that the workers and their
        // shell apps go too, instead of the runtime's default of exiting at once.
        let onSignal (ctx: PosixSignalContext) =
            ctx.Cancel <- true
            postCold (Signalled ctx.Signal)
        use _term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, onSignal)
        use _int = PosixSignalRegistration.Create(PosixSignal.SIGINT, onSignal)
        // An adopted process that exited is reaped (.NET reaps only the children it started: the workers).
        use _chld = PosixSignalRegistration.Create(PosixSignal.SIGCHLD, fun _ -> io.RequestReap())
        try
            // Anything posted before the owner existed (nothing should be) is handled now.
            owner.TryDrain() |> ignore
            poller.Run()
        finally
            // From here this thread owns the manager's state: no handler runs again.
            owner.Seal()
            // Whatever ends the manager, no shell app it was running outlives it; first, before anything that may take
            // a while (a SIGKILL may follow). Directly: the io helper may be busy.
            for slot in slots do
                for KeyValue(k, pgid) in slot.Groups do
                    log (sprintf "killing process group %d of try %d, left by worker %d" pgid k slot.Rank)
                    Parsl.Node.Runtime.Native.killGroup pgid
                slot.Groups.Clear()
            for t in timers do
                t.Dispose()
            // A worker exits when its connection ends; the io helper waits a moment for each, then kills it.
            for slot in slots do
                if not (isNull slot.Conn) then slot.Conn.ShutdownSend()
            io.Finish(TimeSpan.FromSeconds 1.0)
            warm.Join()
            lock doorbellCell (fun () -> closed <- true)
            poller.Dispose()
            for slot in slots do
                if not (isNull slot.Conn) then slot.Conn.Close()
            for link in greeting do
                link.Close()
            for conn, _ in strays do
                conn.Dispose()
            let mutable left = Unchecked.defaultof<ManagerMsg>
            while owner.TryTakeLeft(&left) do
                match left with
                | Connected(conn, _) -> conn.Dispose()
                | _ -> ()
            // The acceptor: a connection of our own ends its wait in Accept.
            Volatile.Write(&accepting, false)
            (try (LocalSocket.connect socketName).Dispose() with _ -> ())
            acceptor.Join()
            listener.Dispose()
            local |> Option.iter (fun l -> l.Close())
            for t in readers do
                t.Join()
            dealer |> Option.iter (fun d -> d.Dispose())
            doorbell.Dispose()
            NetMQConfig.Cleanup(false)
        exitCode
