namespace Parsl.Executors.TaskVine

open System
open System.Collections.Generic
open System.IO
open System.Net
open System.Net.Sockets
open System.Threading
open System.Threading.Channels
open System.Threading.Tasks
open Parsl
open Parsl.Executors.WorkerLink
open Parsl.Node.HighThroughput
open Parsl.Node

/// A file sent into the worker's cache before the task runs.
type VineInput =
    { File: VineFile
      /// The file on this machine.
      LocalPath: string
      /// The mode it gets on the worker.
      Mode: int }

/// Where a fetched output goes on this machine.
type VineOutput =
    { File: VineFile
      Path: string
      /// Append to `Path` (a shell app's plain stdout path) instead of replacing it.
      Append: bool }

/// How a task ended on its worker.
type VineOutcome =
    { Code: int
      ExitCode: int
      Output: byte[]
      Host: string }

/// One task for the manager: its description (the manager fills in the id), resources, files, and what to call when
/// it ends (on the manager's loop: keep it short).
type VineTask =
    { Key: int64
      Spec: VineTaskSpec
      Request: Parsl.Executors.WorkQueue.ResourceRequest
      Inputs: VineInput list
      Outputs: VineOutput list
      /// The same task as a call to the worker's library (serverless mode), when the manager runs one there.
      ViaLibrary: (VineTaskSpec * VineInput list) option
      Complete: Result<VineOutcome, exn> -> unit }

/// A connected worker, as `WorkersAsync` reports it.
type VineWorkerInfo =
    { Id: int
      Host: string
      Version: string
      Cores: int64
      /// The worker's peer-transfer port (it listens on all interfaces).
      TransferPort: int
      /// Whether our .NET library runs there (serverless mode).
      Library: bool
      Running: int
      /// Bytes of files this manager sent to it (`put`).
      BytesSent: int64
      /// Bytes it was told to fetch from other workers' transfer servers (`puturl`, peer transfers).
      PeerBytes: int64 }

/// What the manager needs.
type VineManagerSettings =
    { Label: string
      Address: string
      Port: int
      Password: string option
      KeepalivePeriod: TimeSpan
      KeepaliveTimeout: TimeSpan
      /// Dispatches per task before a lost worker's task fails with `WorkerLost`.
      MaxRetries: int
      /// Where fetched files land before they are moved to their destinations.
      TransferDir: string
      /// The library task started on each worker as it joins (serverless mode): its description and inputs.
      Library: (VineTaskSpec * VineInput list) option
      /// A cached file another worker holds is fetched from that worker's transfer server, not sent from here.
      PeerTransfers: bool
      Log: Serilog.ILogger }

/// Requests to the manager's loop.
type VineManagerRequest =
    | Joined of worker: int * link: LineLink * hello: VineLine
    | Said of worker: int * line: VineLine * payload: byte[]
    /// A reply to `get` ended: the top-level name, and whether it arrived.
    | Fetched of worker: int * name: string * ok: bool
    | Left of worker: int * reason: string
    | Rejected of remote: string * reason: string
    | SubmitTask of VineTask
    | CancelTask of key: int64
    | Tick
    | QueryWorkers of TaskCompletionSource<VineWorkerInfo list>
    | StopManager of TaskCompletionSource<unit>

/// The handle of a running manager.
[<Sealed>]
type VineManagerHandle internal (channel: Channel<VineManagerRequest>, port: int, completion: Task, rejected: unit -> int) =
    /// Sends a request. Never blocks.
    member _.Post r = channel.Writer.TryWrite r |> ignore
    /// The port workers connect to.
    member _.Port = port
    /// Ends when the loop and every connection ended.
    member _.Completion = completion
    /// Connections refused so far (wrong or missing password, unknown protocol).
    member _.RejectedCount = rejected ()

/// The TaskVine manager (CCTools' `vine_manager.c`, the part Parsl drives): accepts `vine_worker`s, authenticates
/// them, places tasks by resources and priority, puts each cached file into a worker once (`put` at workflow level,
/// remembered from the worker's `cache-update`), and handles each task the moment the worker pushes `complete`: no
/// polling. One actor: the loop owns every worker and task; each connection's reader only parses and posts.
///
///   worker ──auth, taskvine 13, resources … end──▶ reader ──Joined/Said──▶ loop
///   loop ──put (once per worker), task … end──▶ worker ──cache-update, complete──▶ loop
///   loop ──get <output>──▶ worker ──file …──▶ reader (to disk) ──Fetched──▶ loop ──kill, unlink──▶ worker
[<RequireQualifiedAccess>]
module VineManager =
    type private Worker =
        { Id: int
          Link: LineLink
          Host: string
          Version: string
          mutable Lines: (string * int64) list
          mutable InResources: bool
          mutable Total: Parsl.Executors.WorkQueue.WorkerResources
          mutable Used: Parsl.Executors.WorkQueue.WorkerResources
          mutable Ready: bool
          mutable TransferPort: int
          /// The id of our library task there (serverless mode), 0 for none.
          mutable LibraryTask: int64
          mutable BytesSent: int64
          mutable PeerBytes: int64
          /// Where the worker's peers reach its transfer server (its address as seen here).
          mutable TransferHost: string
          Running: HashSet<int64>
          /// Files the worker holds (or is receiving) at workflow level.
          Cached: HashSet<string>
          /// Files the worker said it holds (`cache-update`): only these are fetched from it by peers.
          Confirmed: HashSet<string>
          /// Outputs asked for with `get`, in order: the worker answers in order.
          Gets: Queue<struct (int64 * string)> }

    type private Entry =
        { Id: int64
          Task: VineTask
          Seq: int64
          mutable Worker: int
          mutable ViaLibrary: bool
          mutable Tries: int
          mutable Alloc: Parsl.Executors.WorkQueue.WorkerResources
          mutable Code: int
          mutable Exit: int
          mutable Output: byte[]
          mutable Pending: int }

    let private zero: Parsl.Executors.WorkQueue.WorkerResources = { Cores = 0L; Memory = 0L; Disk = 0L; Gpus = 0L }

    let private safeName = ManagerRules.safeName

    /// Reads one connection: authentication and handshake first (nothing else is parsed before them), then lines and
    /// their payloads, posted to the loop. Replies to `get` are written to disk here, as they stream in.
    // Kept apart from Work Queue's reader on purpose: TaskVine's `get` replies nest directories and a `resources`
    // block ends with `end`, so this reader tracks where it is and writes replies to disk before it posts.
    let private serve (s: VineManagerSettings) (id: int) (client: TcpClient) (post: VineManagerRequest -> unit) (abort: CancellationToken) : Task =
        task {
            let link = new LineLink(client, VineProtocol.lineMax, s.KeepaliveTimeout)
            use _ = abort.Register(fun () -> link.Abort())
            let mutable joined = false
            let reject why =
                post (Rejected(link.Remote, why))
                link.Abort()
            try
                let! ok = ManagerLink.authenticate link s.Password reject
                if ok then
                    let! first = link.ReadLineAsync()
                    let first = defaultArg first ""
                    match (try VineProtocol.parse first with _ -> Other first) with
                    | Hello(p, _, _, _, _) as h when p = VineProtocol.version ->
                        joined <- true
                        post (Joined(id, link, h))
                        let dir = Path.Combine(s.TransferDir, sprintf "w%d" id)
                        // Where a `get` reply is: the directories entered so far (empty between replies), and
                        // whether a `resources` block is open (its `end` is not a reply's).
                        let stack = Stack<string>()
                        let mutable top = ""
                        let mutable inResources = false
                        let mutable go = true
                        while go do
                            match! link.ReadLineAsync() with
                            | None ->
                                go <- false
                                post (Left(id, "the worker closed the connection"))
                            | Some line ->
                                let parsed = VineProtocol.parse line
                                let here () = if stack.Count = 0 then dir else Path.Combine(dir, stack.Peek())
                                match parsed with
                                | ResourcesBegin ->
                                    inResources <- true
                                    post (Said(id, parsed, null))
                                | End when inResources ->
                                    inResources <- false
                                    post (Said(id, parsed, null))
                                | FileData(name, size) ->
                                    if not (safeName name) then raise (InvalidDataException(sprintf "unsafe file name '%s' from the worker" name))
                                    let path = Path.Combine(here (), name)
                                    Directory.CreateDirectory(Path.GetDirectoryName path) |> ignore
                                    do!
                                        task {
                                            use f = File.Create path
                                            do! link.CopyBytesAsync(size, f)
                                        }
                                    if stack.Count = 0 then post (Fetched(id, name, true))
                                | DirData name ->
                                    if not (safeName name) then raise (InvalidDataException(sprintf "unsafe directory name '%s' from the worker" name))
                                    let rel = if stack.Count = 0 then (top <- name; name) else Path.Combine(stack.Peek(), name)
                                    Directory.CreateDirectory(Path.Combine(dir, rel)) |> ignore
                                    stack.Push rel
                                | End when stack.Count > 0 ->
                                    stack.Pop() |> ignore
                                    if stack.Count = 0 then post (Fetched(id, top, true))
                                | ErrorReply(name, _) when stack.Count = 0 -> post (Fetched(id, name, false))
                                | _ ->
                                    let n = VineProtocol.payloadLength parsed
                                    if n > 1024L * 1024L then raise (InvalidDataException(sprintf "a message of %d bytes from the worker" n))
                                    let! payload = if n > 0L then link.ReadBytesAsync(int n) else Task.FromResult [||]
                                    post (Said(id, parsed, payload))
                    | Hello(p, _, _, _, _) -> reject (sprintf "the worker speaks TaskVine protocol %d; this manager speaks %d" p VineProtocol.version)
                    | _ when first = LinkAuth.ident ->
                        reject "the worker wants a password but this executor has none (set PasswordFile, or start the worker without --password)"
                    | _ -> reject "the peer is not a TaskVine worker"
            with e ->
                if joined then post (Left(id, e.Message))
                else reject e.Message
        }

    /// Starts the manager: binds `Address:Port` (0 = any free port) and returns at once.
    let start (s: VineManagerSettings) : VineManagerHandle =
        let channel = Channel.CreateUnbounded<VineManagerRequest>(UnboundedChannelOptions(SingleReader = true))
        let post r = channel.Writer.TryWrite r |> ignore
        let mutable rejected = 0
        let net =
            ManagerListener.Start(
                s.Address,
                s.Port,
                (fun id c abort -> serve s id c post abort),
                ManagerRules.tickPeriod s.KeepalivePeriod,
                fun () -> post Tick
            )
        let port = net.Port

        let workers = Dictionary<int, Worker>()
        let entries = Dictionary<int64, Entry>()
        let byKey = Dictionary<int64, int64>()
        let pending = PendingQueue()
        let mutable nextTask = 0L
        let mutable seq = 0L

        let enqueue (e: Entry) = pending.Add(e.Task.Request.Priority, e.Seq, e.Id)

        let finish (e: Entry) (outcome: Result<VineOutcome, exn>) =
            entries.Remove e.Id |> ignore
            byKey.Remove e.Task.Key |> ignore
            try e.Task.Complete outcome with ex -> s.Log.Error(ex, "{Label}: completing task {Key} failed", s.Label, e.Task.Key)

        let mutable transfers = 0L
        /// Brings an input into the worker's cache: workflow-level files once per worker (from a peer that holds
        /// it, with peer transfers on, else from here); task-level ones with every task that names them.
        let put (w: Worker) (i: VineInput) =
            let level = i.File.Level
            if level = CacheLevel.TaskLevel || not (w.Cached.Contains i.File.CacheName) then
                w.Cached.Add i.File.CacheName |> ignore
                let size = FileInfo(i.LocalPath).Length
                let peer =
                    if s.PeerTransfers && level <> CacheLevel.TaskLevel then
                        workers.Values |> Seq.tryFind (fun p -> p.Id <> w.Id && p.TransferPort > 0 && p.Confirmed.Contains i.File.CacheName)
                    else None
                match peer with
                | Some p ->
                    w.PeerBytes <- w.PeerBytes + size
                    transfers <- transfers + 1L
                    let url = sprintf "worker://%s:%d/%s" p.TransferHost p.TransferPort i.File.CacheName
                    w.Link.SendLine(
                        sprintf "puturl %s %s %d %d 0%s peer-%d"
                            (VineProtocol.encodeName url) (VineProtocol.encodeName i.File.CacheName) (int level) size (Convert.ToString(i.Mode, 8)) transfers)
                | None ->
                    w.BytesSent <- w.BytesSent + size
                    w.Link.Send(FileBody(Text.Encoding.UTF8.GetBytes(VineProtocol.putHeader i.File.CacheName level size i.Mode), i.LocalPath))

        /// Frees the task's place on its worker and its sandbox and task-level files there.
        let release (w: Worker) (e: Entry) =
            if w.Running.Remove e.Id then
                w.Used <- Parsl.Executors.WorkQueue.WqProtocol.add -1L w.Used e.Alloc
                w.Link.SendLine(sprintf "kill %d" e.Id)
                let inputs = match e.Task.ViaLibrary with Some(_, i) when e.ViaLibrary -> i | _ -> e.Task.Inputs
                for i in inputs do
                    if i.File.Level = CacheLevel.TaskLevel then w.Link.SendLine("unlink " + VineProtocol.encodeName i.File.CacheName)
                for o in e.Task.Outputs do
                    if o.File.Level = CacheLevel.TaskLevel then w.Link.SendLine("unlink " + VineProtocol.encodeName o.File.CacheName)

        let send (w: Worker) (e: Entry) =
            let spec, inputs =
                match e.Task.ViaLibrary with
                | Some(spec, inputs) when w.LibraryTask > 0L ->
                    e.ViaLibrary <- true
                    spec, inputs
                | _ ->
                    e.ViaLibrary <- false
                    e.Task.Spec, e.Task.Inputs
            for i in inputs do
                put w i
            // The worker is told the task's allocation: it enforces disk and wall time, and counts cores and GPUs.
            let a = e.Alloc
            w.Link.Send(Bytes(VineProtocol.renderTask { spec with TaskId = e.Id; Cores = float a.Cores; Memory = a.Memory; Disk = a.Disk; Gpus = a.Gpus }))

        let startLibrary (w: Worker) =
            match s.Library with
            | Some(spec, inputs) when w.LibraryTask = 0L ->
                nextTask <- nextTask + 1L
                w.LibraryTask <- nextTask
                for i in inputs do
                    put w i
                // One slot per core: the worker hands the library that many calls at once (it queues them).
                let slots = int (max 1L w.Total.Cores)
                w.Link.Send(Bytes(VineProtocol.renderTask { spec with TaskId = nextTask; ProvidesLibrary = Some(VineProtocol.libraryName, slots) }))
                s.Log.Information("{Label}: library task {Task} sent to worker {Id}", s.Label, nextTask, w.Id)
            | _ -> ()

        let schedule () =
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
                                    let need = Parsl.Executors.WorkQueue.WqProtocol.allocation e.Task.Request w.Total
                                    if Parsl.Executors.WorkQueue.WqProtocol.fitsNow need w.Total w.Used then Some(w, need) else None)
                            if candidates.Length > 0 then
                                // Prefer the worker that already holds most of the task's cached inputs, then the least busy.
                                let holds (w: Worker) = e.Task.Inputs |> List.sumBy (fun i -> if w.Cached.Contains i.File.CacheName then 1 else 0)
                                let w, need = candidates |> Array.sortBy (fun (w, _) -> -(holds w), w.Running.Count) |> Array.head
                                e.Worker <- w.Id
                                e.Alloc <- need
                                e.Tries <- e.Tries + 1
                                w.Used <- Parsl.Executors.WorkQueue.WqProtocol.add 1L w.Used need
                                w.Running.Add e.Id |> ignore
                                send w e
                                true
                            else false),
                        full
                    )

        let lose (id: int) (reason: string) =
            match workers.TryGetValue id with
            | true, w ->
                workers.Remove id |> ignore
                w.Link.Abort()
                s.Log.Warning("{Label}: worker {Id} on {Host} lost: {Reason}", s.Label, id, w.Host, reason)
                for tid in List.ofSeq w.Running do
                    match entries.TryGetValue tid with
                    | true, e ->
                        e.Worker <- 0
                        e.Pending <- 0
                        if e.Tries < s.MaxRetries then enqueue e
                        else finish e (Error(WorkerLost(id, w.Host)))
                    | _ -> ()
            | _ -> ()

        let complete (w: Worker) (e: Entry) =
            release w e
            finish e (Ok { Code = e.Code; ExitCode = e.Exit; Output = e.Output; Host = w.Host })

        // Unlike Work Queue's, on purpose: a `get` that failed was already logged by `fetched`, and nothing here
        // reports missing outputs (TaskVineExecutor checks the destinations itself).
        let moveFetched (w: Worker) (e: Entry) =
            let dir = Path.Combine(s.TransferDir, sprintf "w%d" w.Id)
            for o in e.Task.Outputs do
                let src = Path.Combine(dir, o.File.CacheName)
                try
                    match Path.GetDirectoryName o.Path with
                    | null | "" -> ()
                    | d -> Directory.CreateDirectory d |> ignore
                    if File.Exists src then
                        if o.Append then
                            do
                                use dst = new FileStream(o.Path, FileMode.Append)
                                use f = File.OpenRead src
                                f.CopyTo dst
                            File.Delete src
                        else File.Move(src, o.Path, true)
                    elif Directory.Exists src then
                        if Directory.Exists o.Path then Directory.Delete(o.Path, true)
                        Directory.Move(src, o.Path)
                with ex -> s.Log.Error(ex, "{Label}: could not store output {Path}", s.Label, o.Path)

        let said (w: Worker) (line: VineLine) (payload: byte[]) =
            match line with
            | ResourcesBegin ->
                w.InResources <- true
                w.Lines <- []
            | Resource(name, total) when w.InResources -> w.Lines <- w.Lines @ [ name, total ]
            | End when w.InResources ->
                w.InResources <- false
                w.Total <- Parsl.Executors.WorkQueue.WqProtocol.resources w.Lines
                if not w.Ready then
                    w.Ready <- true
                    s.Log.Information("{Label}: worker {Id} ready: {Cores} cores, {Memory} MB, {Disk} MB disk", s.Label, w.Id, w.Total.Cores, w.Total.Memory, w.Total.Disk)
                    startLibrary w
            | TransferPort(host, p) ->
                w.TransferPort <- p
                host |> Option.iter (fun h -> w.TransferHost <- h)
            | CacheUpdate(name, _, _) ->
                w.Cached.Add name |> ignore
                w.Confirmed.Add name |> ignore
            | CacheInvalid(name, _) ->
                w.Cached.Remove name |> ignore
                w.Confirmed.Remove name |> ignore
                s.Log.Warning("{Label}: worker {Id} could not cache {Name}: {Message}", s.Label, w.Id, name, Text.Encoding.UTF8.GetString payload)
            | Complete(code, exitCode, _, _, _, _, taskId) when taskId = w.LibraryTask ->
                // The library ended (it should not): calls now run as ordinary tasks there.
                s.Log.Warning("{Label}: the library on worker {Id} ended (result {Code}, exit {Exit}): {Output}", s.Label, w.Id, code, exitCode, Text.Encoding.UTF8.GetString payload)
                w.LibraryTask <- -1L
            | Complete(code, exitCode, _, _, _, _, taskId) ->
                match entries.TryGetValue taskId with
                | true, e when e.Worker = w.Id ->
                    e.Code <- code
                    e.Exit <- exitCode
                    e.Output <- payload
                    let wanted = if code = 0 then e.Task.Outputs else []
                    if wanted.IsEmpty then complete w e
                    else
                        e.Pending <- wanted.Length
                        for o in wanted do
                            w.Gets.Enqueue(struct (e.Id, o.File.CacheName))
                            w.Link.SendLine("get " + VineProtocol.encodeName o.File.CacheName)
                | _ -> ()
            | _ -> ()

        let fetched (w: Worker) (name: string) (ok: bool) =
            if w.Gets.Count > 0 then
                let struct (tid, wanted) = w.Gets.Dequeue()
                if wanted <> name then s.Log.Warning("{Label}: worker {Id} sent {Name} for a get of {Wanted}", s.Label, w.Id, name, wanted)
                match entries.TryGetValue tid with
                | true, e when e.Worker = w.Id ->
                    if not ok then s.Log.Debug("{Label}: output {Name} missing on worker {Id}", s.Label, name, w.Id)
                    e.Pending <- e.Pending - 1
                    if e.Pending = 0 then
                        moveFetched w e
                        complete w e
                | _ -> ()

        let stopAll (reply: TaskCompletionSource<unit>) =
            task {
                net.Stop()
                do! ManagerLink.closeAll [ for w in workers.Values -> w.Link ]
                net.AbortConnections()
                workers.Clear()
                for e in List.ofSeq entries.Values do
                    finish e (Error(KernelShutdownError(TaskId(fst (Parsl.Node.HighThroughput.Protocol.ofKey e.Task.Key)))))
                do! net.DrainAsync()
                reply.TrySetResult() |> ignore
            }

        let loop =
            Task.Run(fun () ->
                task {
                    let mutable go = true
                    while go do
                        let! more = channel.Reader.WaitToReadAsync()
                        if not more then go <- false
                        else
                            let mutable r = Unchecked.defaultof<VineManagerRequest>
                            while go && channel.Reader.TryRead(&r) do
                                try
                                    match r with
                                    | Joined(id, link, Hello(_, host, _, _, version)) ->
                                        workers[id] <-
                                            { Id = id
                                              Link = link
                                              Host = host
                                              Version = version
                                              Lines = []
                                              InResources = false
                                              Total = zero
                                              Used = zero
                                              Ready = false
                                              TransferPort = 0
                                              LibraryTask = 0L
                                              BytesSent = 0L
                                              PeerBytes = 0L
                                              TransferHost = (match link.Remote.LastIndexOf ':' with -1 -> link.Remote | i -> link.Remote.Substring(0, i))
                                              Running = HashSet()
                                              Cached = HashSet()
                                              Confirmed = HashSet()
                                              Gets = Queue() }
                                        s.Log.Information("{Label}: worker {Id} joined from {Host} ({Remote}), TaskVine {Version}", s.Label, id, host, link.Remote, version)
                                    | Joined(_, link, _) -> link.Abort()
                                    | Said(id, line, payload) ->
                                        match workers.TryGetValue id with
                                        | true, w -> said w line payload
                                        | _ -> ()
                                    | Fetched(id, name, ok) ->
                                        match workers.TryGetValue id with
                                        | true, w -> fetched w name ok
                                        | _ -> ()
                                    | Left(id, reason) -> lose id reason
                                    | Rejected(remote, reason) ->
                                        Interlocked.Increment &rejected |> ignore
                                        s.Log.Warning("{Label}: refused the connection from {Remote}: {Reason}", s.Label, remote, reason)
                                    | SubmitTask t ->
                                        nextTask <- nextTask + 1L
                                        seq <- seq + 1L
                                        let e =
                                            { Id = nextTask
                                              Task = t
                                              Seq = seq
                                              Worker = 0
                                              ViaLibrary = false
                                              Tries = 0
                                              Alloc = zero
                                              Code = 0
                                              Exit = 0
                                              Output = [||]
                                              Pending = 0 }
                                        entries[e.Id] <- e
                                        byKey[t.Key] <- e.Id
                                        enqueue e
                                    | CancelTask key ->
                                        match byKey.TryGetValue key with
                                        | true, tid ->
                                            let e = entries[tid]
                                            pending.Remove(e.Task.Request.Priority, e.Seq)
                                            match workers.TryGetValue e.Worker with
                                            | true, w -> release w e
                                            | _ -> ()
                                            finish e (Error(OperationCanceledException(sprintf "task %d was cancelled" key)))
                                        | _ -> ()
                                    | Tick ->
                                        let now = Environment.TickCount64
                                        for w in List.ofSeq workers.Values do
                                            match ManagerRules.keepalive s.KeepalivePeriod s.KeepaliveTimeout w.Link.LastHeard w.Link.LastSent now with
                                            | LoseWorker reason -> lose w.Id reason
                                            | SendCheck -> w.Link.SendLine "check"
                                            | Quiet -> ()
                                    | QueryWorkers reply ->
                                        reply.TrySetResult
                                            [ for w in workers.Values ->
                                                { Id = w.Id
                                                  Host = w.Host
                                                  Version = w.Version
                                                  Cores = w.Total.Cores
                                                  TransferPort = w.TransferPort
                                                  Library = w.LibraryTask > 0L
                                                  Running = w.Running.Count
                                                  BytesSent = w.BytesSent
                                                  PeerBytes = w.PeerBytes } ]
                                        |> ignore
                                    | StopManager reply ->
                                        go <- false
                                        do! stopAll reply
                                    schedule ()
                                with ex -> s.Log.Error(ex, "{Label}: manager loop error", s.Label)
                    // Requests still queued after the stop are answered, so no caller waits forever.
                    let mutable r = Unchecked.defaultof<VineManagerRequest>
                    while channel.Reader.TryRead(&r) do
                        match r with
                        | QueryWorkers q -> q.TrySetResult [] |> ignore
                        | StopManager q -> q.TrySetResult() |> ignore
                        | SubmitTask t ->
                            try t.Complete(Error(KernelShutdownError(TaskId(fst (Parsl.Node.HighThroughput.Protocol.ofKey t.Key)))))
                            with _ -> ()
                        | Joined(_, l, _) -> l.Abort()
                        | _ -> ()
                }
                :> Task)

        VineManagerHandle(channel, port, loop, fun () -> rejected)
