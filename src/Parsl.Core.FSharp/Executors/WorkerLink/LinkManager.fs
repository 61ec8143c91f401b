namespace Parsl.Executors.WorkerLink

open System
open System.Collections.Generic
open System.IO
open System.Net.Sockets
open System.Threading
open System.Threading.Channels
open System.Threading.Tasks
open Parsl
open Parsl.Executors.WorkQueue

/// What every CCTools-style manager needs.
type LinkSettings =
    { Label: string
      /// The address to bind (`*` or `0.0.0.0`: every interface).
      Address: string
      /// 0: any free port.
      Port: int
      /// The password workers must prove they know; None lets any worker join.
      Password: string option
      KeepalivePeriod: TimeSpan
      KeepaliveTimeout: TimeSpan
      /// Dispatches per task before a lost worker's task fails with `WorkerLost` (CCTools' `max_retries`).
      MaxRetries: int
      /// Where fetched files land before they are moved to their destinations.
      TransferDir: string
      Log: Serilog.ILogger }

/// A connected worker as a CCTools-style manager's loop holds it: what every such worker has (resources, running
/// tasks, cached files), and the protocol's own state in `Own`. Owned by the loop (not thread-safe).
type LinkWorker<'Own> =
    { Id: int
      Link: LineLink
      Host: string
      Version: string
      /// The `resource` lines reported so far, in order.
      mutable Lines: (string * int64) list
      mutable Total: WorkerResources
      mutable Used: WorkerResources
      /// Its resources are known: tasks may be placed there.
      mutable Ready: bool
      Running: HashSet<int64>
      /// Files the worker holds (or is receiving) in its cache.
      Cached: HashSet<string>
      Own: 'Own }

/// A task as a manager's loop holds it, from submission to its end. Owned by the loop (not thread-safe).
type LinkEntry<'Task> =
    { /// The id the workers know it by.
      Id: int64
      Task: 'Task
      /// The executor's key (task id and try).
      Key: int64
      Request: ResourceRequest
      /// Submission order, the tie-breaker between equal priorities.
      Seq: int64
      /// Where it runs (0: nowhere).
      mutable Worker: int
      /// Dispatches so far.
      mutable Tries: int
      mutable Alloc: WorkerResources
      /// It was sent in the form for the worker's long-lived runner (Work Queue coprocess, TaskVine library).
      mutable ViaRunner: bool
      mutable Code: int
      mutable Exit: int
      mutable Output: byte[]
      /// Outputs asked for with `get` and not yet answered.
      mutable Pending: int
      /// Outputs that did not come back (Work Queue reports them; TaskVine's executor checks destinations itself).
      Missing: List<string> }

/// Requests to a CCTools-style manager's loop. `Fetched` is posted only by readers that write `get` replies to disk
/// themselves (TaskVine's).
type LinkRequest<'Line, 'Task, 'Info> =
    | Joined of worker: int * link: LineLink * hello: 'Line
    | Said of worker: int * line: 'Line * payload: byte[]
    /// A reply to `get` ended: the top-level name, and whether it arrived.
    | Fetched of worker: int * name: string * ok: bool
    | Left of worker: int * reason: string
    | Rejected of remote: string * reason: string
    | SubmitTask of 'Task
    | CancelTask of key: int64
    | Tick
    | QueryWorkers of TaskCompletionSource<'Info list>
    | StopManager of TaskCompletionSource<unit>

/// The handle of a running manager.
[<Sealed>]
type LinkManagerHandle<'Line, 'Task, 'Info> internal (channel: Channel<LinkRequest<'Line, 'Task, 'Info>>, port: int, completion: Task, rejected: unit -> int) =
    /// Sends a request. Never blocks.
    member _.Post r = channel.Writer.TryWrite r |> ignore
    /// The port workers connect to.
    member _.Port = port
    /// Ends when the loop and every connection ended.
    member _.Completion = completion
    /// Connections refused so far (wrong or missing password, unknown protocol).
    member _.RejectedCount = rejected ()

/// The connection reader's frame the two managers share.
[<RequireQualifiedAccess>]
module LinkReader =
    /// Reads one connection: the password (when there is one) and the hello first, nothing else parsed before them;
    /// `hello` takes the first line to the hello of a worker this manager speaks with, or to why it is refused. Once
    /// joined, `next` reads one line and posts it (false: the worker closed). Whatever fails ends the connection:
    /// `Left` once joined, `Rejected` before. `abort` cuts it, joined or not (the end of a shutdown).
    let serve
        (link: LineLink)
        (id: int)
        (password: string option)
        (abort: CancellationToken)
        (post: LinkRequest<'Line, 'Task, 'Info> -> unit)
        (hello: string -> Result<'Line, string>)
        (next: unit -> Task<bool>)
        : Task =
        task {
            use _ = abort.Register(fun () -> link.Abort())
            let mutable joined = false
            let reject why =
                post (Rejected(link.Remote, why))
                link.Abort()
            try
                let! ok = ManagerLink.authenticate link password reject
                if ok then
                    match! link.ReadLineAsync() with
                    | None -> reject "the worker closed the connection"
                    | Some first ->
                        match hello first with
                        | Error why -> reject why
                        | Ok h ->
                            joined <- true
                            post (Joined(id, link, h))
                            let mutable go = true
                            while go do
                                let! more = next ()
                                if not more then
                                    go <- false
                                    post (Left(id, "the worker closed the connection"))
            with e ->
                if joined then post (Left(id, e.Message))
                else reject e.Message
        }

    /// The refusal of a worker that sent the password challenge to a manager that has no password.
    let noPassword =
        "the worker wants a password but this executor has none (set PasswordFile, or start the worker without --password)"

    /// Receives a file the worker sends (`file NAME SIZE` and its bytes) into `dir`; a name that is absolute or climbs
    /// out with `..` ends the connection.
    let receiveFile (link: LineLink) (dir: string) (name: string) (size: int64) : Task =
        task {
            if not (ManagerRules.safeName name) then raise (InvalidDataException(sprintf "unsafe file name '%s' from the worker" name))
            let path = Path.Combine(dir, name)
            Directory.CreateDirectory(Path.GetDirectoryName path) |> ignore
            use f = File.Create path
            do! link.CopyBytesAsync(size, f)
        }

    /// Makes a directory the worker sends (`dir NAME`) under `root`, at `rel` (its path there); an unsafe name ends the
    /// connection.
    let receiveDir (root: string) (name: string) (rel: string) =
        if not (ManagerRules.safeName name) then raise (InvalidDataException(sprintf "unsafe directory name '%s' from the worker" name))
        Directory.CreateDirectory(Path.Combine(root, rel)) |> ignore

    /// Reads a message's payload of `n` bytes, refused above `most` (a peer cannot make us allocate without bound).
    let payload (link: LineLink) (n: int64) (most: int64) : Task<byte[]> =
        if n > most then raise (InvalidDataException(sprintf "a payload of %d bytes from the worker" n))
        if n > 0L then link.ReadBytesAsync(int n) else Task.FromResult [||]

    /// Moves a fetched output (a file or a directory) from `src` to its destination, appending a file to it when
    /// `append`; nothing happens when `src` is not there.
    let storeOutput (src: string) (dest: string) (append: bool) =
        match Path.GetDirectoryName dest with
        | null | "" -> ()
        | d -> Directory.CreateDirectory d |> ignore
        if File.Exists src then
            if append then
                do
                    use dst = new FileStream(dest, FileMode.Append)
                    use f = File.OpenRead src
                    f.CopyTo dst
                File.Delete src
            else File.Move(src, dest, true)
        elif Directory.Exists src then
            if Directory.Exists dest then Directory.Delete(dest, true)
            Directory.Move(src, dest)

/// What the Work Queue and TaskVine managers share: one actor whose loop owns every worker and task, places tasks
/// by resources and priority (`PendingQueue`), requeues a lost worker's tasks until `maxRetries`, cancels, keeps
/// links alive and shuts down. A protocol's manager inherits it and supplies only its own messages: the connection
/// reader (`Serve`, which parses and posts), the handshake (`Join`), what a worker says (`Said`, `Fetched`), how a
/// task and its files are sent (`Send`) and cleaned up (`Unlink`), and what `WorkersAsync` reports (`Info`).
///
///   readers ──Joined/Said/Fetched/Left──▶ ┌ loop (one thread at a time) ┐ ──task, put, get, kill──▶ workers
///   executor ──Submit/Cancel/Query/Stop──▶ │ workers, entries, pending   │ ──Deliver──▶ executor
///   ticker ──Tick──▶                       └─────────────────────────────┘
[<AbstractClass>]
type LinkManager<'Line, 'Task, 'Outcome, 'Own, 'Info>(settings: LinkSettings) =
    let label = settings.Label
    let keepalivePeriod = settings.KeepalivePeriod
    let keepaliveTimeout = settings.KeepaliveTimeout
    let maxRetries = settings.MaxRetries
    let log = settings.Log
    let channel = Channel.CreateUnbounded<LinkRequest<'Line, 'Task, 'Info>>(UnboundedChannelOptions(SingleReader = true))
    let workers = Dictionary<int, LinkWorker<'Own>>()
    let entries = Dictionary<int64, LinkEntry<'Task>>()
    let byKey = Dictionary<int64, int64>()
    let pending = PendingQueue()
    let mutable nextId = 0L
    let mutable seq = 0L
    let mutable rejected = 0

    static let zero: WorkerResources = { Cores = 0L; Memory = 0L; Disk = 0L; Gpus = 0L }

    /// Reads one connection (on its own task): handshake, then lines posted to the loop with `Post`.
    abstract Serve: id: int * client: TcpClient * abort: CancellationToken -> Task
    /// A worker's handshake: its host, version and the protocol's own state, or None to refuse it.
    abstract Join: id: int * link: LineLink * hello: 'Line -> (string * string * 'Own) option
    /// A line (and its payload) from a joined worker.
    abstract Said: worker: LinkWorker<'Own> * line: 'Line * payload: byte[] -> unit
    /// A `get` reply the reader wrote to disk ended (readers that post `Fetched` only).
    abstract Fetched: worker: LinkWorker<'Own> * name: string * ok: bool -> unit
    default _.Fetched(_, _, _) = ()
    /// Sends a task placed on the worker (`Alloc` is set), with its files.
    abstract Send: worker: LinkWorker<'Own> * entry: LinkEntry<'Task> -> unit
    /// Removes the task's files that are not cached from the worker (after `kill`).
    abstract Unlink: worker: LinkWorker<'Own> * entry: LinkEntry<'Task> -> unit
    /// How many of the task's inputs the worker holds already: the placement prefers more, then the least busy.
    abstract Holds: worker: LinkWorker<'Own> * entry: LinkEntry<'Task> -> int
    default _.Holds(_, _) = 0
    /// What `QueryWorkers` reports of a worker.
    abstract Info: LinkWorker<'Own> -> 'Info
    /// The executor's key of a task.
    abstract Key: 'Task -> int64
    /// What a task asks for.
    abstract Request: 'Task -> ResourceRequest
    /// Hands a task's end to the executor (on the loop: keep it short).
    abstract Deliver: 'Task * Result<'Outcome, exn> -> unit

    /// Sends a request to the loop. Never blocks.
    member _.Post(r: LinkRequest<'Line, 'Task, 'Info>) = channel.Writer.TryWrite r |> ignore

    /// A new task id, for tasks the manager starts itself (a library).
    member _.NextId() =
        nextId <- nextId + 1L
        nextId

    /// The joined workers.
    member _.Workers: seq<LinkWorker<'Own>> = workers.Values

    /// The task the workers know by `id`, if it is still held.
    member _.TryEntry(id: int64) =
        match entries.TryGetValue id with
        | true, e -> Some e
        | _ -> None

    /// Ends a task: forgets it, then hands the outcome to the executor.
    member this.Finish(e: LinkEntry<'Task>, outcome: Result<'Outcome, exn>) =
        entries.Remove e.Id |> ignore
        byKey.Remove e.Key |> ignore
        try this.Deliver(e.Task, outcome) with ex -> log.Error(ex, "{Label}: completing task {Key} failed", label, e.Key)

    /// Frees the task's place on its worker, and its sandbox and uncached files there.
    member this.Release(w: LinkWorker<'Own>, e: LinkEntry<'Task>) =
        if w.Running.Remove e.Id then
            w.Used <- WqProtocol.add -1L w.Used e.Alloc
            w.Link.SendLine(sprintf "kill %d" e.Id)
            this.Unlink(w, e)

    /// Ends a task that ran to its end on `w`: frees its place, then hands the outcome over.
    member this.Complete(w: LinkWorker<'Own>, e: LinkEntry<'Task>, outcome: 'Outcome) =
        this.Release(w, e)
        this.Finish(e, Ok outcome)

    member private this.Shutdown(key: int64) = KernelShutdownError(TaskId(fst (Parsl.Node.HighThroughput.Protocol.ofKey key)))

    member private _.Enqueue(e: LinkEntry<'Task>) = pending.Add(e.Request.Priority, e.Seq, e.Id)

    member private this.Schedule() =
        if pending.Count > 0 && workers.Count > 0 then
            let ready = workers.Values |> Seq.filter (fun w -> w.Ready) |> Array.ofSeq
            let full () = ready |> Array.forall (fun w -> w.Used.Cores >= w.Total.Cores)
            if ready.Length > 0 && not (full ()) then
                pending.Place(
                    (fun id ->
                        let e = entries[id]
                        let candidates =
                            ready
                            |> Array.choose (fun w ->
                                let need = WqProtocol.allocation e.Request w.Total
                                if WqProtocol.fitsNow need w.Total w.Used then Some(w, need) else None)
                        if candidates.Length > 0 then
                            let w, need = candidates |> Array.minBy (fun (w, _) -> struct (-this.Holds(w, e), w.Running.Count))
                            e.Worker <- w.Id
                            e.Alloc <- need
                            e.Tries <- e.Tries + 1
                            w.Used <- WqProtocol.add 1L w.Used need
                            w.Running.Add e.Id |> ignore
                            this.Send(w, e)
                            true
                        else false),
                    full
                )

    /// Drops a worker: its tasks go back to the queue, or fail with `WorkerLost` once they were dispatched
    /// `maxRetries` times.
    member this.Lose(id: int, reason: string) =
        match workers.TryGetValue id with
        | true, w ->
            workers.Remove id |> ignore
            w.Link.Abort()
            log.Warning("{Label}: worker {Id} on {Host} lost: {Reason}", label, id, w.Host, reason)
            for tid in List.ofSeq w.Running do
                match entries.TryGetValue tid with
                | true, e ->
                    e.Worker <- 0
                    e.Pending <- 0
                    if e.Tries < maxRetries then this.Enqueue e
                    else this.Finish(e, Error(WorkerLost(id, w.Host)))
                | _ -> ()
        | _ -> ()

    member private this.StopAll(net: ManagerListener, reply: TaskCompletionSource<unit>) =
        task {
            net.Stop()
            do! ManagerLink.closeAll [ for w in workers.Values -> w.Link ]
            net.AbortConnections()
            workers.Clear()
            for e in List.ofSeq entries.Values do
                this.Finish(e, Error(this.Shutdown e.Key))
            do! net.DrainAsync()
            reply.TrySetResult() |> ignore
        }

    member private this.Handle(net: ManagerListener, r: LinkRequest<'Line, 'Task, 'Info>) : Task =
        task {
            match r with
            | Joined(id, link, hello) ->
                match this.Join(id, link, hello) with
                | Some(host, version, own) ->
                    workers[id] <-
                        { Id = id
                          Link = link
                          Host = host
                          Version = version
                          Lines = []
                          Total = zero
                          Used = zero
                          Ready = false
                          Running = HashSet()
                          Cached = HashSet()
                          Own = own }
                | None -> link.Abort()
            | Said(id, line, payload) ->
                match workers.TryGetValue id with
                | true, w -> this.Said(w, line, payload)
                | _ -> ()
            | Fetched(id, name, ok) ->
                match workers.TryGetValue id with
                | true, w -> this.Fetched(w, name, ok)
                | _ -> ()
            | Left(id, reason) -> this.Lose(id, reason)
            | Rejected(remote, reason) ->
                Interlocked.Increment &rejected |> ignore
                log.Warning("{Label}: refused the connection from {Remote}: {Reason}", label, remote, reason)
            | SubmitTask t ->
                seq <- seq + 1L
                let e =
                    { Id = this.NextId()
                      Task = t
                      Key = this.Key t
                      Request = this.Request t
                      Seq = seq
                      Worker = 0
                      Tries = 0
                      Alloc = zero
                      ViaRunner = false
                      Code = 0
                      Exit = 0
                      Output = [||]
                      Pending = 0
                      Missing = List() }
                entries[e.Id] <- e
                byKey[e.Key] <- e.Id
                this.Enqueue e
            | CancelTask key ->
                match byKey.TryGetValue key with
                | true, tid ->
                    let e = entries[tid]
                    pending.Remove(e.Request.Priority, e.Seq)
                    match workers.TryGetValue e.Worker with
                    | true, w -> this.Release(w, e)
                    | _ -> ()
                    this.Finish(e, Error(OperationCanceledException(sprintf "task %d was cancelled" key)))
                | _ -> ()
            | Tick ->
                let now = Environment.TickCount64
                for w in List.ofSeq workers.Values do
                    match ManagerRules.keepalive keepalivePeriod keepaliveTimeout w.Link.LastHeard w.Link.LastSent now with
                    | LoseWorker reason -> this.Lose(w.Id, reason)
                    | SendCheck -> w.Link.SendLine "check"
                    | Quiet -> ()
            | QueryWorkers reply -> reply.TrySetResult [ for w in workers.Values -> this.Info w ] |> ignore
            | StopManager reply -> do! this.StopAll(net, reply)
        }

    member private this.Loop(net: ManagerListener) : Task =
        task {
            let mutable go = true
            while go do
                let! more = channel.Reader.WaitToReadAsync()
                if not more then go <- false
                else
                    let mutable r = Unchecked.defaultof<LinkRequest<'Line, 'Task, 'Info>>
                    while go && channel.Reader.TryRead(&r) do
                        try
                            match r with
                            | StopManager _ -> go <- false
                            | _ -> ()
                            do! this.Handle(net, r)
                            this.Schedule()
                        with ex -> log.Error(ex, "{Label}: manager loop error", label)
            // Requests still queued after the stop are answered, so no caller waits forever.
            let mutable r = Unchecked.defaultof<LinkRequest<'Line, 'Task, 'Info>>
            while channel.Reader.TryRead(&r) do
                match r with
                | QueryWorkers q -> q.TrySetResult [] |> ignore
                | StopManager q -> q.TrySetResult() |> ignore
                | SubmitTask t ->
                    try this.Deliver(t, Error(this.Shutdown(this.Key t))) with _ -> ()
                | Joined(_, l, _) -> l.Abort()
                | _ -> ()
        }

    /// Binds `Address:Port` (0 = any free port), starts the accept loop, the ticker and the loop, and returns at once.
    member this.Start() : LinkManagerHandle<'Line, 'Task, 'Info> =
        let net =
            ManagerListener.Start(
                settings.Address,
                settings.Port,
                (fun id c abort -> this.Serve(id, c, abort)),
                ManagerRules.tickPeriod keepalivePeriod,
                fun () -> this.Post Tick
            )
        let loop = Task.Run(fun () -> this.Loop net)
        LinkManagerHandle(channel, net.Port, loop, fun () -> Volatile.Read &rejected)
