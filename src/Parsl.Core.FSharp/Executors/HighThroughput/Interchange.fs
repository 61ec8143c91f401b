namespace Parsl.Executors.HighThroughput

open System
open System.Collections.Concurrent
open System.Collections.Generic
open System.Text
open System.Threading
open System.Threading.Tasks
open NetMQ
open NetMQ.Sockets
open Parsl

/// A try waiting in the interchange: its bytes were made once on the client and are forwarded as they are.
type QueuedTask =
    { Key: int64
      AppName: string
      Order: QueueOrder
      Body: WireBody }

/// A connected manager, as Parsl's `MANAGERS` command reports it.
type ManagerInfo =
    { ManagerId: string
      BlockId: string
      Hostname: string
      /// The manager's process id on its host.
      Pid: int
      WorkerCount: int
      /// Tries sent to it and not yet returned.
      TasksInFlight: int
      /// How long it has had no task (zero while it has some).
      IdleFor: TimeSpan
      /// False once its block is being scaled in.
      Active: bool
      Draining: bool }

/// What the interchange tells its executor.
type InterchangeEvent =
    /// A batch of results from one manager, forwarded as bytes.
    | ResultsArrived of WireResult list
    /// A try that will never return (its manager was lost, it was cancelled, the executor stopped).
    | TryLost of key: int64 * error: exn
    /// A manager could not be accepted (another version): the executor goes into a bad state.
    | Fatal of exn

/// Requests to the interchange actor.
type InterchangeRequest =
    | Enqueue of QueuedTask
    | Define of funcId: int * definition: byte[]
    | AddAssembly of hash: string * path: string
    | CancelQueued of key: int64
    | QueryManagers of TaskCompletionSource<ManagerInfo list>
    | QueryBlocks of TaskCompletionSource<string list>
    | HoldBlocks of blockIds: string list * TaskCompletionSource<unit>
    | FailAll of (int64 -> exn)
    /// Fails every try not yet sent to a manager (and every later one); tries on managers go on.
    | DropQueued of (int64 -> exn)
    /// Hands an event to the executor from the interchange's thread (the block poller's bad-state verdict).
    | Raise of InterchangeEvent
    | Stop of failWith: (int64 -> exn) * TaskCompletionSource<unit>

/// How the interchange is set up.
type InterchangeSettings =
    { Address: string
      Port: int option
      PortRange: int * int
      HeartbeatThreshold: TimeSpan
      Selector: ManagerSelector
      /// The server's CURVE key pair (None: plain TCP).
      Curve: NetMQCertificate option
      Log: Serilog.ILogger
      Report: InterchangeEvent -> unit }

type private ManagerRecord =
    { Identity: byte[]
      Reg: Registration
      InFlight: HashSet<int64>
      Sent: HashSet<int>
      mutable LastHeard: DateTime
      mutable IdleSince: DateTime
      mutable Active: bool
      mutable Draining: bool }
    member m.Capacity = m.Reg.WorkerCount + m.Reg.PrefetchCapacity
    member m.Free = m.Capacity - m.InFlight.Count

/// The handle of a running interchange.
[<Sealed>]
type InterchangeHandle internal (port: int, post: InterchangeRequest -> unit, completion: Task) =
    /// The port managers connect to.
    member _.Port = port
    /// Sends a request to the actor. Thread-safe; never blocks.
    member _.Post r = post r
    /// Ends when the actor's loop has ended and its socket is closed.
    member _.Completion = completion

/// The interchange (Parsl's `interchange.py`), in the client process: a ROUTER socket managers connect to,
/// a priority queue of tries, dispatch of batches up to each manager's free capacity plus prefetch, and
/// results forwarded in batches. One actor: a NetMQ poller thread owns the socket and all state.
[<RequireQualifiedAccess>]
module Interchange =
    let private now () = DateTime.UtcNow

    /// Binds the socket and starts the loop.
    let start (s: InterchangeSettings) : InterchangeHandle =
        let router = new RouterSocket()
        router.Options.Linger <- TimeSpan.FromSeconds 1.0
        router.Options.SendHighWatermark <- 0
        router.Options.ReceiveHighWatermark <- 0
        match s.Curve with
        | Some cert ->
            router.Options.CurveServer <- true
            router.Options.CurveCertificate <- cert
        | None -> ()
        let endpoint = sprintf "tcp://%s" s.Address
        let port =
            match s.Port with
            | Some p ->
                router.Bind(sprintf "%s:%d" endpoint p)
                p
            | None ->
                let lo, hi = s.PortRange
                let start = Random.Shared.Next(lo, hi)
                let rec attempt i =
                    if i >= hi - lo then
                        router.Dispose()
                        raise (ExecutorError("HighThroughputExecutor", sprintf "no free port in WorkerPortRange (%d, %d) on %s; widen the range" lo hi s.Address, null))
                    let p = lo + (start - lo + i) % (hi - lo)
                    match (try router.Bind(sprintf "%s:%d" endpoint p); true with :? NetMQException -> false) with
                    | true -> p
                    | false -> attempt (i + 1)
                attempt 0
        let requests = ConcurrentQueue<InterchangeRequest>()
        let doorbell = new NetMQQueue<bool>()
        let mutable rung = 0
        // Set (under `gate`) when the loop has ended, before the doorbell is disposed: a NetMQQueue that is closed
        // does not throw on Enqueue, it spins forever (found by a test whose block poller asked for blocks while
        // the executor was shutting down).
        let mutable closed = false
        let gate = obj ()
        let queue = PriorityQueue<QueuedTask, QueueOrder>()
        let cancelled = HashSet<int64>()
        let definitions = Dictionary<int, byte[]>()
        let assemblies = Dictionary<string, string>()
        let managers = Dictionary<string, ManagerRecord>()
        let blocksSeen = List<string>()
        let random = Random()
        let mutable stopped = false
        let mutable failWith: (int64 -> exn) option = None

        /// Answers requests left after the loop ended, so no future and no caller waits forever.
        let drainStopped () =
            let f = defaultArg failWith (fun k -> KernelShutdownError(TaskId(fst (Protocol.ofKey k))) :> exn)
            let mutable r = Unchecked.defaultof<InterchangeRequest>
            while requests.TryDequeue(&r) do
                match r with
                | Enqueue t -> s.Report(TryLost(t.Key, f t.Key))
                | QueryManagers reply -> reply.TrySetResult [] |> ignore
                | QueryBlocks reply -> reply.TrySetResult [] |> ignore
                | HoldBlocks(_, reply) -> reply.TrySetResult() |> ignore
                | Stop(_, reply) -> reply.TrySetResult() |> ignore
                | _ -> ()

        let post (r: InterchangeRequest) =
            requests.Enqueue r
            if Volatile.Read(&closed) then drainStopped ()
            elif Interlocked.Exchange(&rung, 1) = 0 then
                lock gate (fun () -> if not closed then doorbell.Enqueue true)
                if Volatile.Read(&closed) then drainStopped ()
        let poller = new NetMQPoller()
        let completion = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)

        let send (identity: byte[]) (m: ToManager) =
            let msg = NetMQMessage(2)
            msg.Append identity
            msg.Append(Protocol.encodeToManager m)
            router.TrySendMultipartMessage msg |> ignore

        let dispatch () =
            if queue.Count > 0 && managers.Count > 0 then
                let views =
                    managers.Values
                    |> Seq.map (fun m ->
                        { ManagerView.ManagerId = m.Reg.ManagerId
                          BlockId = m.Reg.BlockId
                          FreeCapacity = m.Free
                          Draining = m.Draining
                          Active = m.Active })
                let shuffle (xs: ManagerView[]) =
                    let a = Array.copy xs
                    random.Shuffle a
                    a
                let ordered = Policies.selectManagers s.Selector shuffle views
                for mid, n in Policies.dispatch ordered queue.Count do
                    let m = managers[mid]
                    let batch = List<WireTask>(n)
                    while batch.Count < n && queue.Count > 0 do
                        let t = queue.Dequeue()
                        if cancelled.Count > 0 && cancelled.Remove t.Key then
                            s.Report(TryLost(t.Key, OperationCanceledException(sprintf "Task %d was cancelled" (fst (Protocol.ofKey t.Key)))))
                        else
                            let body =
                                match t.Body with
                                | Call(fid, _, args) when m.Sent.Add fid -> Call(fid, definitions[fid], args)
                                | b -> b
                            m.InFlight.Add t.Key |> ignore
                            batch.Add { Key = t.Key; AppName = t.AppName; Body = body }
                    if batch.Count > 0 then send m.Identity (Tasks(List.ofSeq batch))

        let failQueued (f: int64 -> exn) =
            while queue.Count > 0 do
                let t = queue.Dequeue()
                s.Report(TryLost(t.Key, (if cancelled.Remove t.Key then OperationCanceledException("cancelled") :> exn else f t.Key)))

        let removeManager (m: ManagerRecord) (error: int64 -> exn) =
            managers.Remove m.Reg.ManagerId |> ignore
            for k in m.InFlight do
                s.Report(TryLost(k, error k))
            m.InFlight.Clear()

        let handleRequest r =
            match r with
            | Enqueue t ->
                match failWith with
                | Some f -> s.Report(TryLost(t.Key, f t.Key))
                | None -> queue.Enqueue(t, t.Order)
            | Define(id, def) -> definitions[id] <- def
            | AddAssembly(h, p) -> assemblies[h] <- p
            | CancelQueued k ->
                match managers.Values |> Seq.tryFind (fun m -> m.InFlight.Contains k) with
                | Some m -> send m.Identity (CancelTry k)
                | None -> cancelled.Add k |> ignore
            | QueryManagers reply ->
                let t = now ()
                managers.Values
                |> Seq.map (fun m ->
                    { ManagerId = m.Reg.ManagerId
                      BlockId = m.Reg.BlockId
                      Hostname = m.Reg.Hostname
                      Pid = m.Reg.Pid
                      WorkerCount = m.Reg.WorkerCount
                      TasksInFlight = m.InFlight.Count
                      IdleFor = (if m.InFlight.Count > 0 then TimeSpan.Zero else t - m.IdleSince)
                      Active = m.Active
                      Draining = m.Draining })
                |> List.ofSeq
                |> reply.TrySetResult
                |> ignore
            | QueryBlocks reply -> reply.TrySetResult(List.ofSeq blocksSeen) |> ignore
            | HoldBlocks(ids, reply) ->
                for m in List.ofSeq managers.Values do
                    if List.contains m.Reg.BlockId ids then
                        m.Active <- false
                        // An idle manager of a block being scaled in is let go at once, cleanly.
                        if m.InFlight.Count = 0 then
                            send m.Identity Shutdown
                            managers.Remove m.Reg.ManagerId |> ignore
                reply.TrySetResult() |> ignore
            | FailAll f ->
                failWith <- Some f
                failQueued f
                for m in List.ofSeq managers.Values do
                    for k in m.InFlight do
                        s.Report(TryLost(k, f k))
                    m.InFlight.Clear()
            | Raise e -> s.Report e
            | DropQueued f ->
                failWith <- Some f
                failQueued f
            | Stop(f, reply) ->
                failWith <- Some f
                failQueued f
                for m in List.ofSeq managers.Values do
                    send m.Identity Shutdown
                    removeManager m f
                stopped <- true
                poller.StopAsync()
                reply.TrySetResult() |> ignore

        let register (identity: byte[]) (g: Registration) =
            let expected = Protocol.parslVersion ()
            let rt = Protocol.runtimeVersion ()
            if g.ProtocolVersion <> Protocol.Version || g.ParslVersion <> expected || g.RuntimeVersion <> rt then
                let reason =
                    sprintf "Manager %s on host %s runs Parsl.NET %s (protocol %d, .NET %s) but the client runs Parsl.NET %s (protocol %d, .NET %s); install the same Parsl.Workers version as the application"
                        g.ManagerId g.Hostname g.ParslVersion g.ProtocolVersion g.RuntimeVersion expected Protocol.Version rt
                s.Log.Error("Interchange: refused manager: {Reason}", reason)
                send identity (Refused reason)
                s.Report(Fatal(VersionMismatch reason))
            else
                let t = now ()
                managers[g.ManagerId] <-
                    { Identity = identity
                      Reg = g
                      InFlight = HashSet()
                      Sent = HashSet()
                      LastHeard = t
                      IdleSince = t
                      Active = true
                      Draining = false }
                if not (blocksSeen.Contains g.BlockId) then blocksSeen.Add g.BlockId
                s.Log.Information(
                    "Interchange: manager {Manager} of block {Block} on {Host} registered with {Workers} workers",
                    g.ManagerId, g.BlockId, g.Hostname, g.WorkerCount)
                send identity Accepted

        let handleMessage (identity: byte[]) (payload: byte[]) =
            let mid = Encoding.UTF8.GetString identity
            match (try Ok(Protocol.decodeToInterchange payload) with e -> Error e) with
            | Error e -> s.Log.Warning("Interchange: ignored a malformed message from {Manager}: {Error}", mid, e.Message)
            | Ok(Register g) -> register identity { g with ManagerId = mid }
            | Ok msg ->
                match managers.TryGetValue mid with
                | false, _ ->
                    // A manager we declared lost (or never knew) must not keep waiting for work.
                    send identity Shutdown
                | true, m ->
                    m.LastHeard <- now ()
                    match msg with
                    | Heartbeat -> send identity HeartbeatReply
                    | Results rs ->
                        for r in rs do
                            m.InFlight.Remove r.Key |> ignore
                        if m.InFlight.Count = 0 then m.IdleSince <- now ()
                        s.Report(ResultsArrived rs)
                        if m.Draining && m.InFlight.Count = 0 then
                            send identity Drained
                            managers.Remove mid |> ignore
                    | NeedAssembly h ->
                        match assemblies.TryGetValue h with
                        | true, path -> send identity (Assembly(h, IO.File.ReadAllBytes path))
                        | _ -> send identity (Assembly(h, null))
                    | Drain ->
                        m.Draining <- true
                        if m.InFlight.Count = 0 then
                            send identity Drained
                            managers.Remove mid |> ignore
                    | Register _ -> ()

        let expire () =
            let t = now ()
            for m in List.ofSeq managers.Values do
                if t - m.LastHeard > s.HeartbeatThreshold then
                    s.Log.Warning("Interchange: manager {Manager} on {Host} missed its heartbeats; its tasks are lost", m.Reg.ManagerId, m.Reg.Hostname)
                    removeManager m (fun _ -> ManagerLost(m.Reg.ManagerId, m.Reg.Hostname))

        router.ReceiveReady.Add(fun _ ->
            let mutable msg: NetMQMessage = null
            let mutable n = 0
            while n < 1000 && router.TryReceiveMultipartMessage(&msg) do
                n <- n + 1
                if msg.FrameCount >= 2 then handleMessage (msg[0].ToByteArray()) (msg[msg.FrameCount - 1].ToByteArray())
            if not stopped then dispatch ())
        doorbell.ReceiveReady.Add(fun _ ->
            let mutable b = false
            while doorbell.TryDequeue(&b, TimeSpan.Zero) do
                ()
            Volatile.Write(&rung, 0)
            let mutable r = Unchecked.defaultof<InterchangeRequest>
            while not stopped && requests.TryDequeue(&r) do
                handleRequest r
            if not stopped then dispatch ())
        let tick =
            let ms = s.HeartbeatThreshold.TotalMilliseconds / 4.0 |> max 10.0 |> min 1000.0
            new NetMQTimer(TimeSpan.FromMilliseconds ms)
        tick.Elapsed.Add(fun _ ->
            if not stopped then
                expire ()
                dispatch ())
        poller.Add router
        poller.Add doorbell
        poller.Add tick
        let thread =
            Thread(
                (fun () ->
                    try
                        try
                            poller.Run()
                        with e -> s.Log.Error(e, "Interchange loop failed")
                    finally
                        // Requests that arrived after Stop, and any that come later: answered, never left waiting.
                        lock gate (fun () -> closed <- true)
                        drainStopped ()
                        poller.Dispose()
                        router.Dispose()
                        doorbell.Dispose()
                        completion.TrySetResult() |> ignore),
                IsBackground = true,
                Name = "HTEx-Interchange")
        thread.Start()
        InterchangeHandle(port, post, completion.Task)
