// The interchange: who owns what, and which threads exist.
//
// One owner holds all the interchange's state (the queue of tries, the managers, the definitions and assemblies,
// the local links' membership). The owner is not a thread: it is whichever thread holds the owner flag of the
// interchange's mailbox (`OwnedMailbox`). Every thread below only decodes what it received and posts it; a poster
// that finds the mailbox unowned drains it inline (no wake-up: a chain's next task leaves on the kernel's thread,
// a result is handled on the thread that read it), one that finds an owner goes on and the owner handles its post.
// Nothing else touches the state, and no lock is held around a handler.
//
//   kernel thread ──Queue, Flush──┐                                      ┌──▶ Link.Send (any thread; never blocks)
//   any thread ─────Post─────────┤                                       │
//   local reader threads ────────┼─▶ mailbox ──▶ owner (flag holder) ───┼──▶ router queue ──▶ poller thread sends
//     one per admitted link:     │   (MPSC)      queue, managers,        │
//     frames decoded, posted     │               definitions, links ─────┴──▶ IO helper (a task): assembly files,
//   poller thread ───────────────┤                                                 read, posted back
//     "HTEx-Interchange": ROUTER socket and its handshake tables, local listener, connections not yet admitted,
//     heartbeat timer, doorbell (a Post or a spent budget wakes it to drain)
//   IO helper ───────────────────┘
//
// Events for the executor and replies to queries are collected by the owner and handed out after it lets go, so an
// executor's handler or a query's continuation never runs as the owner. Results are the exception: the thread that
// read a batch hands it to the executor itself once it has posted it (the owner only does the batch's bookkeeping),
// so decoding results stays on the readers however the owner flag falls. Threads: the poller thread (joined through
// `Completion`), a reader per admitted local link and the links' short-lived send flushers (each joined when the
// link is disposed, at the end), the IO helper (awaited by `Completion`).
//
// At scale (the benchmark's `scale` row: 10,000 managers): a dispatch visits only the managers with free capacity, as
// many as it fills (`ReadySet`), and the heartbeat check only the managers heard from longest ago (`heard`), so
// neither costs in proportion to the managers connected.

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
open Parsl.Runtime
open Parsl.Node.HighThroughput
open Parsl.Node
open Parsl.Node.Runtime

/// A try waiting in the interchange: its bytes were made once on the client and are forwarded as they are.
type QueuedTask =
    { Key: int64
      AppName: string
      Order: QueueOrder
      Body: WireBody
      /// MPI: the resource values the manager and worker need (see `WireTask.Resources`).
      Resources: (string * string) list }

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
      Draining: bool
      /// Connected over the interchange's local socket (same host), not TCP.
      Local: bool }

/// What the interchange tells its executor.
type InterchangeEvent =
    /// A batch of results from one manager, forwarded as bytes.
    | ResultsArrived of WireResult list
    /// A try that will never return (its manager was lost, it was cancelled, the executor stopped).
    | TryLost of key: int64 * error: exn
    /// The executor goes into a bad state (the block poller's verdict).
    | Fatal of exn
    /// An authenticated manager could not be accepted (another version): its block has failed.
    | ManagerRefused of blockId: string * error: exn

/// Requests to the interchange actor.
type InterchangeRequest =
    | Enqueue of QueuedTask
    | Define of funcId: int * definition: byte[]
    | AddAssembly of hash: string * path: string
    | CancelQueued of key: int64
    | QueryManagers of TaskCompletionSource<ManagerInfo list>
    | QueryBlocks of TaskCompletionSource<string list>
    /// The blocks whose managers have returned at least one result (a block that then ends is a lost node).
    | QueryServedBlocks of TaskCompletionSource<string list>
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
      /// A port to try first when `Port` is None (chosen before the interchange starts, so that a block could be
      /// launched already); the rest of `PortRange` if it was taken meanwhile.
      PreferredPort: int option
      /// A listening local socket that managers on this host connect to instead of TCP (None: TCP only).
      LocalListener: Net.Sockets.Socket option
      /// What a manager on the local socket must say first (the client's secret key; "" when there is none).
      LocalToken: string
      /// The run's secret a manager on TCP proves it holds before anything it sends is decoded (`Handshake`);
      /// None lets any peer register (`AllowUnauthenticatedManagers`).
      Secret: string option
      /// The largest message accepted from a peer (NetMQ's `MaxMsgSize`; the local link's largest frame).
      MaxMessageSize: int
      Log: Serilog.ILogger
      Report: InterchangeEvent -> unit }

/// A local connection that has not shown the client's key yet.
[<ReferenceEquality>]
type private PendingLocal =
    { Socket: Net.Sockets.Socket
      Pid: int
      /// The key's frame: a 4-byte length and the key.
      Buffer: byte[]
      mutable Filled: int
      Since: DateTime
      /// Its place among the pending (null once admitted or dropped).
      mutable Node: LinkedListNode<PendingLocal> }

/// How the interchange reaches a manager: through the ROUTER socket by identity, or over its local connection.
type private Peer =
    | Routed of identity: byte[]
    | Direct of Link

type private ManagerRecord =
    { Peer: Peer
      Reg: Registration
      InFlight: HashSet<int64>
      Sent: HashSet<int>
      mutable LastHeard: DateTime
      /// Its place among the managers by last heard, oldest first (null once it is forgotten).
      mutable Heard: LinkedListNode<ManagerRecord>
      mutable IdleSince: DateTime
      mutable Active: bool
      mutable Draining: bool }
    member m.Capacity = m.Reg.WorkerCount + m.Reg.PrefetchCapacity
    member m.Free = m.Capacity - m.InFlight.Count

/// The handle of a running interchange.
[<Sealed>]
type InterchangeHandle internal (port: int, post: InterchangeRequest -> unit, queue: InterchangeRequest -> unit, flush: unit -> unit, completion: Task) =
    /// The port managers connect to.
    member _.Port = port
    /// Sends a request to the actor. Thread-safe; never blocks.
    member _.Post r = post r
    /// Queues a request without waking the interchange: it is handled at the next `Flush` (or anything else
    /// the interchange does). For the kernel's thread, which flushes after each batch of its messages.
    member _.Queue r = queue r
    /// Handles the queued requests and dispatches on the calling thread when the interchange is idle: a task
    /// reaches its manager without waking the interchange's thread (one context switch less per task in a
    /// dependency chain), and a burst of submissions still leaves in batches. When another thread is handling the
    /// interchange's messages just then, it handles these too, and this returns at once.
    member _.Flush() = flush ()
    /// Ends when the actor's loop and its IO helper have ended and its socket is closed.
    member _.Completion = completion

/// What reaches the interchange's owner: the executor's requests, and what its edges received and decoded.
type private Message =
    | Request of InterchangeRequest
    /// From a manager over TCP that proved the run's secret (or any, without one): its ROUTER identity, and that
    /// identity as text (what it is known by).
    | FromRouter of identity: byte[] * mid: string * ToInterchange
    /// A local connection that showed the client's key; its reader starts after this is queued.
    | Admitted of Link
    | FromLink of Link * ToInterchange
    /// A local connection's end (the peer closed it, or sent a frame too large or malformed).
    | LinkEnded of Link
    /// The heartbeat timer: managers not heard from within the threshold are lost.
    | Tick
    /// The IO helper read an assembly a manager asked for (null: it could not).
    | AssemblyRead of peer: Peer * mid: string * hash: string * bytes: byte[]

/// Work the owner hands off so that it never waits on a disk.
type private IoRequest = ReadAssembly of peer: Peer * mid: string * hash: string * path: string

/// The interchange (Parsl's `interchange.py`), in the client process: a ROUTER socket managers connect to,
/// a priority queue of tries, dispatch of batches up to each manager's free capacity plus prefetch, and
/// results forwarded in batches. One actor: its state has one owner at a time (see the top of this file).
[<RequireQualifiedAccess>]
module Interchange =
    let private now () = DateTime.UtcNow

    /// Local connections waiting to show the key, at most (a manager shows it at once; 1,000 idle connections
    /// made 1,035 threads when each had a reader thread from the start).
    let private maxPendingLocal = 64

    /// How long a local connection may take to show the key.
    let private pendingLocalTimeout = TimeSpan.FromSeconds 10.0

    /// Messages one drain handles before it hands the rest to the poller thread: the kernel's thread or a reader
    /// that found the mailbox idle goes back to its own work soon, however many others post meanwhile.
    let private budget = 1024

    /// Challenges outstanding at once, at most (the oldest is forgotten first): a bound on what peers that have not
    /// proven the secret make the interchange keep (~150 bytes each). Above the number of managers that may say hello
    /// together: at 1,024, the 1,025th hello among 10,000 managers starting at once would push out the first one's
    /// challenge before its proof arrived, and that manager's proof would be dropped (it would never register).
    let private maxChallenged = 65_536

    /// Binds the socket and starts the loop.
    let start (s: InterchangeSettings) : InterchangeHandle =
        let router = new RouterSocket()
        router.Options.Linger <- TimeSpan.FromSeconds 1.0
        router.Options.SendHighWatermark <- 0
        router.Options.ReceiveHighWatermark <- 0
        // Checked by NetMQ's decoder on the frame header, before it allocates: a peer claiming a 1 GiB frame is
        // disconnected instead of costing a gigabyte (one socket option bounds every peer, proven or not).
        router.Options.MaxMsgSize <- int64 s.MaxMessageSize
        // Connections waiting to be accepted (NetMQ's default is 100): when thousands of managers start together, the
        // interchange's one IO thread accepts and does CURVE handshakes more slowly than they connect, and a SYN that
        // finds the queue full is dropped and retried after 1, 3, 7, 15 … s (seen with 10,000 simulated managers: the
        // kernel counted hundreds of thousands of dropped SYNs). The kernel caps it at `net.core.somaxconn`.
        router.Options.Backlog <- 4096
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
                let start = match s.PreferredPort with Some p when p >= lo && p < hi -> p | _ -> Random.Shared.Next(lo, hi)
                let rec attempt i =
                    if i >= hi - lo then
                        router.Dispose()
                        raise (ExecutorError("HighThroughputExecutor", sprintf "no free port in WorkerPortRange (%d, %d) on %s; widen the range" lo hi s.Address, null))
                    let p = lo + (start - lo + i) % (hi - lo)
                    match (try router.Bind(sprintf "%s:%d" endpoint p); true with :? NetMQException -> false) with
                    | true ->
                        if i > 0 && s.PreferredPort.IsSome then
                            s.Log.Warning("Interchange: port {Preferred} was taken before it could be bound; managers started already reach this interchange only over its local socket (it listens on {Port})", s.PreferredPort.Value, p)
                        p
                    | false -> attempt (i + 1)
                attempt 0

        // ── Shared by every thread: the mailbox, the doorbell that wakes the poller thread, the router's out-queue.
        let mailbox = OwnedMailbox<Message>()
        let doorbell = new NetMQQueue<bool>()
        let mutable rung = 0
        // Set (under `gate`) when the poller's loop has ended, before the doorbell is disposed: a NetMQQueue that is
        // closed does not throw on Enqueue, it spins forever (found by a test whose block poller asked for blocks
        // while the executor was shutting down). From then on every message is answered as after a Stop.
        let mutable closed = false
        let gate = obj ()
        let mutable loopThread = -1
        // Messages for managers over TCP made on another thread: NetMQ sockets belong to their poller's thread.
        let routerOut = ConcurrentQueue<NetMQMessage>()
        let poller = new NetMQPoller()
        let pollerEnded = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
        let io = Channels.Channel.CreateUnbounded<IoRequest>(Channels.UnboundedChannelOptions(SingleReader = true))

        // ── The owner's state: touched only by the thread holding the mailbox's owner flag.
        // Tries with a priority wait in a heap; those without (the common case) in a FIFO, which costs no comparisons
        // (measured: the heap's sift-down was the largest item on the interchange's side of the no-op row). Parsl's order
        // is kept: every prioritised try goes before every unprioritised one, and the FIFO is the arrival order.
        let prioritised = PriorityQueue<QueuedTask, QueueOrder>()
        let fifo = Queue<QueuedTask>()
        let queued () = prioritised.Count + fifo.Count
        let enqueueTry (t: QueuedTask) = if t.Order.Priority.IsSome then prioritised.Enqueue(t, t.Order) else fifo.Enqueue t
        let dequeueTry () = if prioritised.Count > 0 then prioritised.Dequeue() else fifo.Dequeue()
        let cancelled = HashSet<int64>()
        let definitions = Dictionary<int, byte[]>()
        let assemblies = Dictionary<string, string>()
        let managers = Dictionary<string, ManagerRecord>()
        // The managers that can take tries now (active, not draining, with free capacity): dispatch visits only these,
        // and only as many as it fills. Kept in step by `touch` wherever one of the three changes.
        let ready = ReadySet<string>()
        // Every manager, the one heard from longest ago first: a message moves its manager to the back, so the
        // heartbeat check looks only at the front (was: every manager, every tick).
        let heard = LinkedList<ManagerRecord>()
        let blocksSeen = List<string>()
        let blocksServed = HashSet<string>()
        let links = HashSet<Link>()
        let random = Random()
        let mutable stopped = false
        let mutable failWith: (int64 -> exn) option = None
        // What must happen once the owner lets go: events for the executor, replies to queries.
        let afterwards = List<unit -> unit>()
        let report (e: InterchangeEvent) = afterwards.Add(fun () -> s.Report e)
        let reply (q: TaskCompletionSource<'T>) (v: 'T) = afterwards.Add(fun () -> q.TrySetResult v |> ignore)

        let ring () =
            if Interlocked.Exchange(&rung, 1) = 0 then
                lock gate (fun () -> if not closed then doorbell.Enqueue true)

        // The replies without fields, encoded once (a heartbeat reply per manager per period adds up at 10,000 managers).
        let heartbeatReply = Protocol.encodeToManager HeartbeatReply
        let encode (m: ToManager) =
            match m with
            | HeartbeatReply -> heartbeatReply
            | m -> Protocol.encodeToManager m
        let send (peer: Peer) (m: ToManager) =
            match peer with
            | Routed identity ->
                let msg = NetMQMessage(2)
                msg.Append identity
                msg.Append(encode m)
                if Environment.CurrentManagedThreadId = loopThread then router.TrySendMultipartMessage msg |> ignore
                else
                    routerOut.Enqueue msg
                    ring ()
            | Direct link -> link.Send(encode m)

        /// Puts a manager in or out of `ready` after its capacity, activity or draining changed.
        let touch (m: ManagerRecord) =
            let mid = m.Reg.ManagerId
            match managers.TryGetValue mid with
            | true, current when obj.ReferenceEquals(current, m) && m.Active && not m.Draining && m.Free > 0 -> ready.Add mid
            | true, current when not (obj.ReferenceEquals(current, m)) -> ()
            | _ -> ready.Remove mid

        /// A manager no longer served (lost, drained, let go): out of every index.
        let forget (m: ManagerRecord) =
            let mid = m.Reg.ManagerId
            match managers.TryGetValue mid with
            | true, current when obj.ReferenceEquals(current, m) ->
                managers.Remove mid |> ignore
                ready.Remove mid
            | _ -> ()
            if not (isNull m.Heard) then
                heard.Remove m.Heard
                m.Heard <- null

        /// Sends up to `n` queued tries to `m` in one batch.
        let sendBatch (m: ManagerRecord) (n: int) =
            let batch = List<WireTask>(n)
            while batch.Count < n && queued () > 0 do
                let t = dequeueTry ()
                if cancelled.Count > 0 && cancelled.Remove t.Key then
                    report(TryLost(t.Key, OperationCanceledException(sprintf "Task %d was cancelled" (fst (Protocol.ofKey t.Key)))))
                else
                    let body =
                        match t.Body with
                        | Call(fid, _, args, wall) when m.Sent.Add fid -> Call(fid, definitions[fid], args, wall)
                        | b -> b
                    m.InFlight.Add t.Key |> ignore
                    batch.Add { Key = t.Key; AppName = t.AppName; Body = body; Resources = t.Resources }
            if batch.Count > 0 then send m.Peer (Tasks(List.ofSeq batch))

        let full = List<ManagerRecord>()
        let dispatch () =
            if queued () > 0 && ready.Count > 0 then
                match s.Selector with
                | RandomSelector ->
                    // Managers in random order, each filled up to its free capacity, until the queue is empty: Parsl's
                    // random selector, at the cost of the managers filled.
                    ready.Visit(
                        (fun lo hi -> random.Next(lo, hi)),
                        fun mid ->
                            let m = managers[mid]
                            sendBatch m (min m.Free (queued ()))
                            if m.Free <= 0 then full.Add m
                            queued () > 0)
                | BlockIdSelector ->
                    let views =
                        ready.Members
                        |> Seq.map (fun mid ->
                            let m = managers[mid]
                            { ManagerView.ManagerId = m.Reg.ManagerId
                              BlockId = m.Reg.BlockId
                              FreeCapacity = m.Free
                              Draining = m.Draining
                              Active = m.Active })
                        |> Array.ofSeq
                    for mid, n in Policies.dispatch (Policies.selectManagers s.Selector id views) (queued ()) do
                        let m = managers[mid]
                        sendBatch m n
                        if m.Free <= 0 then full.Add m
                for m in full do
                    touch m
                full.Clear()

        let failQueued (f: int64 -> exn) =
            while queued () > 0 do
                let t = dequeueTry ()
                report(TryLost(t.Key, (if cancelled.Remove t.Key then OperationCanceledException("cancelled") :> exn else f t.Key)))

        let removeManager (m: ManagerRecord) (error: int64 -> exn) =
            forget m
            for k in m.InFlight do
                report(TryLost(k, error k))
            m.InFlight.Clear()

        let handleRequest r =
            match r with
            | Enqueue t ->
                match failWith with
                | Some f -> report(TryLost(t.Key, f t.Key))
                | None -> enqueueTry t
            | Define(id, def) -> definitions[id] <- def
            | AddAssembly(h, p) -> assemblies[h] <- p
            | CancelQueued k ->
                match managers.Values |> Seq.tryFind (fun m -> m.InFlight.Contains k) with
                | Some m -> send m.Peer (CancelTry k)
                | None -> cancelled.Add k |> ignore
            | QueryManagers q ->
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
                      Draining = m.Draining
                      Local = (match m.Peer with Direct _ -> true | Routed _ -> false) })
                |> List.ofSeq
                |> reply q
            | QueryBlocks q -> reply q (List.ofSeq blocksSeen)
            | QueryServedBlocks q -> reply q (List.ofSeq blocksServed)
            | HoldBlocks(ids, q) ->
                for m in List.ofSeq managers.Values do
                    if List.contains m.Reg.BlockId ids then
                        m.Active <- false
                        // An idle manager of a block being scaled in is let go at once, cleanly.
                        if m.InFlight.Count = 0 then
                            send m.Peer Shutdown
                            forget m
                        else touch m
                reply q ()
            | FailAll f ->
                failWith <- Some f
                failQueued f
                for m in List.ofSeq managers.Values do
                    for k in m.InFlight do
                        report(TryLost(k, f k))
                    m.InFlight.Clear()
                    touch m
            | Raise e -> report e
            | DropQueued f ->
                failWith <- Some f
                failQueued f
            | Stop(f, q) ->
                failWith <- Some f
                failQueued f
                for m in List.ofSeq managers.Values do
                    send m.Peer Shutdown
                    removeManager m f
                stopped <- true
                io.Writer.TryComplete() |> ignore
                poller.StopAsync()
                reply q ()

        let register (identity: Peer) (g: Registration) =
            let expected = Protocol.parslVersion ()
            let rt = Protocol.runtimeVersion ()
            if g.ProtocolVersion <> Protocol.Version || g.ParslVersion <> expected || g.RuntimeVersion <> rt then
                let reason =
                    sprintf "Manager %s on host %s runs Parsl.NET %s (protocol %d, .NET %s) but the client runs Parsl.NET %s (protocol %d, .NET %s); install the same Parsl.Workers version as the application"
                        g.ManagerId g.Hostname g.ParslVersion g.ProtocolVersion g.RuntimeVersion expected Protocol.Version rt
                s.Log.Error("Interchange: refused manager: {Reason}", reason)
                send identity (Refused reason)
                // Only this manager's block has failed (the block error handler decides about the executor); only
                // a manager that proved the run's secret gets this far.
                report(ManagerRefused(g.BlockId, VersionMismatch reason))
            else
                let t = now ()
                // The same id again (a manager that reconnected): the old record's tries stay with it, as before.
                match managers.TryGetValue g.ManagerId with
                | true, old -> forget old
                | _ -> ()
                let m =
                    { Peer = identity
                      Reg = g
                      InFlight = HashSet()
                      Sent = HashSet()
                      LastHeard = t
                      Heard = null
                      IdleSince = t
                      Active = true
                      Draining = false }
                managers[g.ManagerId] <- m
                m.Heard <- heard.AddLast m
                touch m
                if not (blocksSeen.Contains g.BlockId) then blocksSeen.Add g.BlockId
                s.Log.Information(
                    "Interchange: manager {Manager} of block {Block} on {Host} registered with {Workers} workers",
                    g.ManagerId, g.BlockId, g.Hostname, g.WorkerCount)
                send identity Accepted

        /// A message from a manager: `mid` is its ROUTER identity, or what it registered as on a local connection.
        let handleManager (identity: Peer) (mid: string) (msg: ToInterchange) =
            match msg with
            | Register g ->
                match identity with
                | Routed _ -> register identity { g with ManagerId = mid }
                | Direct link ->
                    link.Name <- g.ManagerId
                    register identity g
            | msg ->
                match managers.TryGetValue mid with
                | false, _ ->
                    // A manager we declared lost (or never knew) must not keep waiting for work.
                    send identity Shutdown
                | true, m ->
                    m.LastHeard <- now ()
                    if not (isNull m.Heard) && not (obj.ReferenceEquals(m.Heard, heard.Last)) then
                        heard.Remove m.Heard
                        heard.AddLast m.Heard
                    match msg with
                    | Heartbeat -> send identity HeartbeatReply
                    | Results rs ->
                        // A block that ran a try (whatever the try's outcome) works; a worker's death or the
                        // manager's own verdict that it cannot run tries says nothing of the kind.
                        let ran (r: WireResult) =
                            match r.Outcome with
                            | WorkerDied _ -> false
                            | Raised(t, _, _, _) -> t <> typeof<BadStateException>.FullName
                            | _ -> true
                        if rs |> List.exists ran then blocksServed.Add m.Reg.BlockId |> ignore
                        for r in rs do
                            m.InFlight.Remove r.Key |> ignore
                        if m.InFlight.Count = 0 then m.IdleSince <- now ()
                        // The results themselves went to the executor from the thread that read them (`handOut`).
                        if m.Draining && m.InFlight.Count = 0 then
                            send identity Drained
                            forget m
                        else touch m
                    | NeedAssembly h ->
                        match assemblies.TryGetValue h with
                        // Read by the IO helper, which posts the bytes back (`AssemblyRead`).
                        | true, path -> io.Writer.TryWrite(ReadAssembly(identity, mid, h, path)) |> ignore
                        | _ -> send identity (Assembly(h, null))
                    | Drain ->
                        m.Draining <- true
                        if m.InFlight.Count = 0 then
                            send identity Drained
                            forget m
                        else touch m
                    | Register _ -> ()

        /// The managers not heard from within the threshold are lost: only those at the front of `heard` are looked at.
        let expire () =
            let t = now ()
            let mutable node = heard.First
            while not (isNull node) && t - node.Value.LastHeard > s.HeartbeatThreshold do
                let m = node.Value
                node <- node.Next
                s.Log.Warning("Interchange: manager {Manager} on {Host} missed its heartbeats; its tasks are lost", m.Reg.ManagerId, m.Reg.Hostname)
                removeManager m (fun _ -> ManagerLost(m.Reg.ManagerId, m.Reg.Hostname))

        let handleRunning (msg: Message) =
            match msg with
            | Request r -> handleRequest r
            | FromRouter(identity, mid, m) -> handleManager (Routed identity) mid m
            | Admitted link -> links.Add link |> ignore
            | FromLink(link, m) -> if links.Contains link then handleManager (Direct link) link.Name m
            | LinkEnded link ->
                if links.Remove link then
                    match managers.TryGetValue link.Name with
                    | true, m when (match m.Peer with Direct l -> obj.ReferenceEquals(l, link) | Routed _ -> false) ->
                        // Known at once here (over TCP only the heartbeat threshold tells).
                        s.Log.Warning("Interchange: manager {Manager} on {Host} closed its connection; its tasks are lost", m.Reg.ManagerId, m.Reg.Hostname)
                        removeManager m (fun _ -> ManagerLost(m.Reg.ManagerId, m.Reg.Hostname))
                    | _ -> ()
            | Tick -> expire ()
            | AssemblyRead(peer, mid, h, bytes) ->
                // Only to a manager still known (one lost meanwhile is not waiting for it).
                if managers.ContainsKey mid then send peer (Assembly(h, bytes))

        /// After a Stop, or once the loop has ended: requests are answered, so no future and no caller waits forever.
        let handleStopped (msg: Message) =
            match msg with
            | Request r ->
                match r with
                | Enqueue t ->
                    let f = defaultArg failWith (fun k -> KernelShutdownError(TaskId(fst (Protocol.ofKey k))) :> exn)
                    report(TryLost(t.Key, f t.Key))
                | QueryManagers q -> reply q []
                | QueryBlocks q
                | QueryServedBlocks q -> reply q []
                | HoldBlocks(_, q) -> reply q ()
                | Stop(_, q) -> reply q ()
                | _ -> ()
            | _ -> ()

        let handle (msg: Message) =
            if stopped || Volatile.Read(&closed) then handleStopped msg
            else
                try
                    handleRunning msg
                with e -> s.Log.Error(e, "Interchange: handling a message failed")
        let settle () =
            if not stopped && not (Volatile.Read(&closed)) then
                (try dispatch () with e -> s.Log.Error(e, "Interchange: dispatch failed"))
            if afterwards.Count = 0 then null
            else
                let a = afterwards.ToArray()
                afterwards.Clear()
                a
        let released (actions: (unit -> unit)[]) =
            if not (isNull actions) then
                for a in actions do
                    try a () with e -> s.Log.Error(e, "Interchange: handing out an event failed")

        // ── Results, from the thread that read them: the executor decodes them there (`Report` is thread-safe and
        // reports each try once, whatever else reports it), so decoding a batch never falls to whichever thread owns the
        // mailbox just then. Measured: when the kernel's thread was the owner during a burst (its `Flush`), the
        // readers' batches were decoded on it, and the no-op row lost about a tenth of its rate to it.
        let handOut (results: List<WireResult list>) =
            for rs in results do
                try s.Report(ResultsArrived rs) with e -> s.Log.Error(e, "Interchange: handing out results failed")
            results.Clear()

        // ── Posting, from any thread.
        /// Handles what is queued if no other thread is doing so; the rest of a spent budget goes to the poller thread.
        let drainHere () =
            if mailbox.Drain(handle, settle, released, budget) then
                ring ()
                // Past the end nobody answers the doorbell: this thread finishes the work.
                if Volatile.Read(&closed) then
                    while mailbox.Drain(handle, settle, released, budget) do
                        ()
        let deliver (m: Message) =
            mailbox.Enqueue m
            drainHere ()
        let post (r: InterchangeRequest) =
            mailbox.Enqueue(Request r)
            if Volatile.Read(&closed) then drainHere () else ring ()
        let queueRequest (r: InterchangeRequest) =
            mailbox.Enqueue(Request r)
            if Volatile.Read(&closed) then drainHere ()
        let flush () =
            if not mailbox.IsEmpty then drainHere ()

        // ── The IO helper: assembly files, read off the owner's path.
        let ioLoop =
            task {
                do! Task.Yield()
                let mutable r = Unchecked.defaultof<IoRequest>
                while! io.Reader.WaitToReadAsync() do
                    while io.Reader.TryRead(&r) do
                        let (ReadAssembly(peer, mid, h, path)) = r
                        let! bytes =
                            task {
                                try
                                    return! IO.File.ReadAllBytesAsync path
                                with e ->
                                    s.Log.Warning("Interchange: could not read assembly {Path} for manager {Manager}: {Error}", path, mid, e.Message)
                                    return null
                            }
                        deliver (AssemblyRead(peer, mid, h, bytes))
            }

        // ── The poller thread: the ROUTER socket, the handshake, local connections until admitted, the timer.
        let sendRouted () =
            let mutable msg: NetMQMessage = null
            while routerOut.TryDequeue(&msg) do
                router.TrySendMultipartMessage msg |> ignore

        // Over TCP, the ROUTER identities that have proven the secret (in base 64: lossless, unlike the UTF-8 `mid`), and
        // the challenges sent to those that said hello (at most `maxChallenged`: the oldest is forgotten first). The poller
        // thread's own: nothing from a peer reaches the owner before the peer has proven the secret.
        let proven = HashSet<string>()
        let challenged = Dictionary<string, byte[]>()
        let challengeOrder = Queue<string>()
        let hmacKey = s.Secret |> Option.map Handshake.key
        let mutable dropped = 0L
        let mutable lastDropLog = DateTime.MinValue
        let dropStranger (mid: string) (why: string) =
            dropped <- dropped + 1L
            let t = now ()
            // One line per few seconds, however many a flood sends.
            if t - lastDropLog > TimeSpan.FromSeconds 5.0 then
                lastDropLog <- t
                s.Log.Warning(
                    "Interchange: dropped a message from a peer that has not proven the run's secret ({Why}; {Dropped} dropped so far; latest identity {Identity})",
                    why, dropped, mid.Substring(0, min 24 mid.Length))
        /// A message from an identity that has not proven the secret: only the two handshake frames, compared as bytes.
        let handshake (identity: byte[]) (mid: string) (msg: NetMQMessage) =
            let key = hmacKey.Value
            let frame = msg[msg.FrameCount - 1]
            if msg.FrameCount <> 2 || frame.MessageSize > Handshake.MaxFrame then dropStranger mid "not a handshake frame"
            else
                let bytes = ReadOnlySpan<byte>(frame.Buffer, 0, frame.MessageSize)
                if Handshake.isHello bytes then
                    let nonce = Security.Cryptography.RandomNumberGenerator.GetBytes Handshake.NonceSize
                    if not (challenged.ContainsKey mid) then
                        challengeOrder.Enqueue mid
                        if challengeOrder.Count > maxChallenged then challenged.Remove(challengeOrder.Dequeue()) |> ignore
                    challenged[mid] <- nonce
                    send (Routed identity) (Challenge nonce)
                else
                    match challenged.TryGetValue mid with
                    | true, nonce when bytes.Length = Handshake.MaxFrame ->
                        challenged.Remove mid |> ignore
                        if Handshake.verify key nonce identity bytes then
                            proven.Add mid |> ignore
                            s.Log.Debug("Interchange: a peer proved the run's secret")
                        else
                            s.Log.Warning("Interchange: a peer answered the challenge without the run's secret; ignored")
                    | _ -> dropStranger mid "no handshake"
        let decode (from: string) (payload: byte[]) =
            match (try Ok(Protocol.decodeToInterchange payload) with e -> Error e) with
            | Ok m -> Some m
            | Error e ->
                s.Log.Warning("Interchange: ignored a malformed message from {Manager}: {Error}", from, e.Message)
                None

        let routedResults = List<WireResult list>()
        router.ReceiveReady.Add(fun _ ->
            let mutable msg: NetMQMessage = null
            let mutable n = 0
            while n < 1000 && router.TryReceiveMultipartMessage(&msg) do
                n <- n + 1
                if msg.FrameCount >= 2 then
                    let identity = msg[0].ToByteArray()
                    if hmacKey.IsNone || proven.Contains(Convert.ToBase64String identity) then
                        let mid = Encoding.UTF8.GetString identity
                        match decode mid (msg[msg.FrameCount - 1].ToByteArray()) with
                        | Some m ->
                            mailbox.Enqueue(FromRouter(identity, mid, m))
                            match m with
                            | Results rs -> routedResults.Add rs
                            | _ -> ()
                        | None -> ()
                    else handshake identity (Convert.ToBase64String identity) msg
            drainHere ()
            sendRouted ()
            handOut routedResults)
        doorbell.ReceiveReady.Add(fun _ ->
            let mutable b = false
            while doorbell.TryDequeue(&b, TimeSpan.Zero) do
                ()
            Volatile.Write(&rung, 0)
            drainHere ()
            sendRouted ())
        let tick =
            let ms = s.HeartbeatThreshold.TotalMilliseconds / 4.0 |> max 10.0 |> min 1000.0
            new NetMQTimer(TimeSpan.FromMilliseconds ms)
        // Set below, once the local connections' handlers exist.
        let mutable housekeeping = ignore
        tick.Elapsed.Add(fun _ ->
            housekeeping ()
            deliver Tick
            sendRouted ())

        // Managers on this host: a local socket each. Every link admitted, for the poller thread to dispose (close, and
        // join its reader) at the end; links whose reader has ended are disposed as new ones come.
        let created = List<Link>()
        /// A local link's reader thread: decodes the frames that have arrived, and posts them.
        let onLocalReadable (link: Link) =
            let results = List<WireResult list>()
            fun () ->
                let open' =
                    link.ReadAvailable(fun frame ->
                        match decode "a manager on this host" frame with
                        | Some m ->
                            mailbox.Enqueue(FromLink(link, m))
                            match m with
                            | Results rs -> results.Add rs
                            | _ -> ()
                        | None -> ())
                if not open' then
                    link.Close()
                    mailbox.Enqueue(LinkEnded link)
                drainHere ()
                handOut results
        // Local connections that have not shown the key yet: read by this loop's poller (no thread of their own), at
        // most `maxPendingLocal` at once (a new one pushes out the oldest), each for at most `pendingLocalTimeout`.
        // Only the key's frame is read from them (4 + key length bytes), so nothing else is allocated for.
        let token = Encoding.UTF8.GetBytes s.LocalToken
        let pendingLocal = LinkedList<PendingLocal>()
        let mutable refusedLocal = 0L
        let mutable lastRefusedLog = DateTime.MinValue
        let dropPending (p: PendingLocal) (why: string) =
            if not (isNull p.Node) then
                pendingLocal.Remove p.Node
                p.Node <- null
                (try poller.Remove p.Socket with _ -> ())
                p.Socket.Dispose()
                refusedLocal <- refusedLocal + 1L
                // One line per few seconds, however many connections a process makes.
                let t = now ()
                if t - lastRefusedLog > TimeSpan.FromSeconds 5.0 then
                    lastRefusedLog <- t
                    s.Log.Warning("Interchange: refused a local connection from pid {Pid}: {Why} ({Refused} refused so far)", p.Pid, why, refusedLocal)
        let admit (p: PendingLocal) =
            pendingLocal.Remove p.Node
            p.Node <- null
            poller.Remove p.Socket
            for l in created.FindAll(fun l -> l.ReaderEnded) do
                created.Remove l |> ignore
                l.CloseAndJoin()
            let link = Link p.Socket
            created.Add link
            link.MaxFrame <- s.MaxMessageSize
            // Queued before its reader starts, so the owner knows the link before any of its frames.
            mailbox.Enqueue(Admitted link)
            // Trusted from here on: a thread of its own reads it as soon as the kernel has the bytes.
            link.StartReader("HTEx-Interchange-local", onLocalReadable link)
        let onPendingReadable (p: PendingLocal) (_: Net.Sockets.Socket) =
            if not (isNull p.Node) then
                let mutable err = Net.Sockets.SocketError.Success
                let n = (try p.Socket.Receive(p.Buffer, p.Filled, p.Buffer.Length - p.Filled, Net.Sockets.SocketFlags.None, &err) with _ -> 0)
                if n <= 0 then
                    if err <> Net.Sockets.SocketError.WouldBlock then dropPending p "it closed before showing the client's key"
                else
                    p.Filled <- p.Filled + n
                    if p.Filled >= 4 && BitConverter.ToInt32(p.Buffer, 0) <> token.Length then dropPending p "its first frame is not the client's key"
                    elif p.Filled = p.Buffer.Length then
                        if Security.Cryptography.CryptographicOperations.FixedTimeEquals(ReadOnlySpan(p.Buffer, 4, token.Length), ReadOnlySpan token) then admit p
                        else dropPending p "without the client's key"
        let expirePending () =
            let t = now ()
            let mutable node = pendingLocal.First
            while not (isNull node) && t - node.Value.Since > pendingLocalTimeout do
                let next = node.Next
                dropPending node.Value "it did not show the client's key in time"
                node <- next
        let onLocalConnect (l: Net.Sockets.Socket) =
            let conn = l.Accept()
            let pid, uid = LocalSocket.peer conn
            if uid <> LocalSocket.uid.Value then
                s.Log.Warning("Interchange: refused a local connection from pid {Pid} of another user ({Uid})", pid, uid)
                conn.Dispose()
            else
                conn.Blocking <- false
                if pendingLocal.Count >= maxPendingLocal then dropPending pendingLocal.First.Value "too many connections waiting to show the key"
                let p = { Socket = conn; Pid = pid; Buffer = Array.zeroCreate (4 + token.Length); Filled = 0; Since = now (); Node = null }
                p.Node <- pendingLocal.AddLast p
                poller.Add(conn, Action<Net.Sockets.Socket>(onPendingReadable p))
        housekeeping <- expirePending
        let listener =
            s.LocalListener
            |> Option.map (fun l ->
                poller.Add(l, Action<Net.Sockets.Socket>(onLocalConnect))
                l)
        poller.Add router
        poller.Add doorbell
        poller.Add tick
        let thread =
            Thread(
                (fun () ->
                    try
                        try
                            loopThread <- Environment.CurrentManagedThreadId
                            poller.Run()
                        with e -> s.Log.Error(e, "Interchange loop failed")
                    finally
                        // Shutdowns for managers over TCP queued by a Stop handled on another thread.
                        sendRouted ()
                        // Messages that arrived after Stop, and any that come later: answered, never left waiting.
                        lock gate (fun () -> closed <- true)
                        io.Writer.TryComplete() |> ignore
                        while mailbox.Drain(handle, settle, released, budget) do
                            ()
                        poller.Dispose()
                        for link in created do
                            link.CloseAndJoin()
                        for p in List.ofSeq pendingLocal do
                            p.Socket.Dispose()
                        listener |> Option.iter (fun l -> l.Dispose())
                        router.Dispose()
                        doorbell.Dispose()
                        pollerEnded.TrySetResult() |> ignore),
                IsBackground = true,
                Name = "HTEx-Interchange")
        thread.Start()
        let completion =
            task {
                do! pollerEnded.Task
                do! ioLoop
            }
        InterchangeHandle(port, post, queueRequest, flush, completion)
