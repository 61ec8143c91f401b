namespace Parsl.Executors.TaskVine

open System
open System.Collections.Generic
open System.IO
open Parsl
open Parsl.Executors.WorkerLink
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

/// What the manager needs: what every CCTools-style manager needs, and TaskVine's own.
type VineManagerSettings =
    { Link: LinkSettings
      /// The library task started on each worker as it joins (serverless mode): its description and inputs.
      Library: (VineTaskSpec * VineInput list) option
      /// A cached file another worker holds is fetched from that worker's transfer server, not sent from here.
      PeerTransfers: bool }

/// Requests to the manager's loop.
type VineManagerRequest = LinkRequest<VineLine, VineTask, VineWorkerInfo>

/// The handle of a running manager.
type VineManagerHandle = LinkManagerHandle<VineLine, VineTask, VineWorkerInfo>

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
    /// What a TaskVine worker has besides what every worker has.
    type private Own =
        { /// A `resources` block is open (its `end` is not a reply's).
          mutable InResources: bool
          mutable TransferPort: int
          /// The id of our library task there (serverless mode), 0 for none, -1 once it ended.
          mutable LibraryTask: int64
          mutable BytesSent: int64
          mutable PeerBytes: int64
          /// Where the worker's peers reach its transfer server (its address as seen here).
          mutable TransferHost: string
          /// Files the worker said it holds (`cache-update`): only these are fetched from it by peers.
          Confirmed: HashSet<string>
          /// Outputs asked for with `get`, in order: the worker answers in order.
          Gets: Queue<struct (int64 * string)> }

    type private Worker = LinkWorker<Own>
    type private Entry = LinkEntry<VineTask>

    [<Sealed>]
    type private Manager(v: VineManagerSettings) =
        inherit LinkManager<VineLine, VineTask, VineOutcome, Own, VineWorkerInfo>(v.Link)
        let s = v.Link

        let mutable transfers = 0L

        // Unlike Work Queue's, on purpose: a `get` that failed was already logged by `Fetched`, and nothing here
        // reports missing outputs (TaskVineExecutor checks the destinations itself).
        let moveFetched (w: Worker) (e: Entry) =
            let dir = Path.Combine(s.TransferDir, sprintf "w%d" w.Id)
            for o in e.Task.Outputs do
                try LinkReader.storeOutput (Path.Combine(dir, o.File.CacheName)) o.Path o.Append
                with ex -> s.Log.Error(ex, "{Label}: could not store output {Path}", s.Label, o.Path)

        member private this.Ended(w: Worker, e: Entry) =
            this.Complete(w, e, { Code = e.Code; ExitCode = e.Exit; Output = e.Output; Host = w.Host })

        /// Brings an input into the worker's cache: workflow-level files once per worker (from a peer that holds
        /// it, with peer transfers on, else from here); task-level ones with every task that names them.
        member private this.Put(w: Worker, i: VineInput) =
            let level = i.File.Level
            if level = CacheLevel.TaskLevel || not (w.Cached.Contains i.File.CacheName) then
                w.Cached.Add i.File.CacheName |> ignore
                let size = FileInfo(i.LocalPath).Length
                let peer =
                    if v.PeerTransfers && level <> CacheLevel.TaskLevel then
                        this.Workers |> Seq.tryFind (fun p -> p.Id <> w.Id && p.Own.TransferPort > 0 && p.Own.Confirmed.Contains i.File.CacheName)
                    else None
                match peer with
                | Some p ->
                    w.Own.PeerBytes <- w.Own.PeerBytes + size
                    transfers <- transfers + 1L
                    let url = sprintf "worker://%s:%d/%s" p.Own.TransferHost p.Own.TransferPort i.File.CacheName
                    w.Link.SendLine(
                        sprintf "puturl %s %s %d %d 0%s peer-%d"
                            (VineProtocol.encodeName url) (VineProtocol.encodeName i.File.CacheName) (int level) size (Convert.ToString(i.Mode, 8)) transfers)
                | None ->
                    w.Own.BytesSent <- w.Own.BytesSent + size
                    w.Link.Send(FileBody(Text.Encoding.UTF8.GetBytes(VineProtocol.putHeader i.File.CacheName level size i.Mode), i.LocalPath))

        member private this.StartLibrary(w: Worker) =
            match v.Library with
            | Some(spec, inputs) when w.Own.LibraryTask = 0L ->
                let id = this.NextId()
                w.Own.LibraryTask <- id
                for i in inputs do
                    this.Put(w, i)
                // One slot per core: the worker hands the library that many calls at once (it queues them).
                let slots = int (max 1L w.Total.Cores)
                w.Link.Send(Bytes(VineProtocol.renderTask { spec with TaskId = id; ProvidesLibrary = Some(VineProtocol.libraryName, slots) }))
                s.Log.Information("{Label}: library task {Task} sent to worker {Id}", s.Label, id, w.Id)
            | _ -> ()

        /// Reads one connection: lines and their payloads, posted to the loop. Replies to `get` are written to disk
        /// here, as they stream in.
        // Apart from Work Queue's on purpose: TaskVine's `get` replies nest directories and a `resources` block ends
        // with `end`, so this reader tracks where it is and writes replies to disk before it posts.
        override this.Serve(id, client, abort) =
            let link = new LineLink(client, VineProtocol.lineMax, s.KeepaliveTimeout)
            let dir = Path.Combine(s.TransferDir, sprintf "w%d" id)
            let hello first =
                match (try VineProtocol.parse first with _ -> Other first) with
                | Hello(p, _, _, _, _) as h when p = VineProtocol.version -> Ok h
                | Hello(p, _, _, _, _) -> Error(sprintf "the worker speaks TaskVine protocol %d; this manager speaks %d" p VineProtocol.version)
                | _ when first = LinkAuth.ident -> Error LinkReader.noPassword
                | _ -> Error "the peer is not a TaskVine worker"
            // Where a `get` reply is: the directories entered so far (empty between replies), and whether a
            // `resources` block is open (its `end` is not a reply's).
            let stack = Stack<string>()
            let mutable top = ""
            let mutable inResources = false
            let next () =
                task {
                    match! link.ReadLineAsync() with
                    | None -> return false
                    | Some line ->
                        let parsed = VineProtocol.parse line
                        match parsed with
                        | ResourcesBegin ->
                            inResources <- true
                            this.Post(Said(id, parsed, null))
                        | End when inResources ->
                            inResources <- false
                            this.Post(Said(id, parsed, null))
                        | FileData(name, size) ->
                            do! LinkReader.receiveFile link (if stack.Count = 0 then dir else Path.Combine(dir, stack.Peek())) name size
                            if stack.Count = 0 then this.Post(Fetched(id, name, true))
                        | DirData name ->
                            let rel = if stack.Count = 0 then (top <- name; name) else Path.Combine(stack.Peek(), name)
                            LinkReader.receiveDir dir name rel
                            stack.Push rel
                        | End when stack.Count > 0 ->
                            stack.Pop() |> ignore
                            if stack.Count = 0 then this.Post(Fetched(id, top, true))
                        | ErrorReply(name, _) when stack.Count = 0 -> this.Post(Fetched(id, name, false))
                        | _ ->
                            let! payload = LinkReader.payload link (VineProtocol.payloadLength parsed) (1024L * 1024L)
                            this.Post(Said(id, parsed, payload))
                        return true
                }
            LinkReader.serve link id s.Password abort this.Post hello next

        override _.Join(id, link, hello) =
            match hello with
            | Hello(_, host, _, _, version) ->
                s.Log.Information("{Label}: worker {Id} joined from {Host} ({Remote}), TaskVine {Version}", s.Label, id, host, link.Remote, version)
                Some(
                    host,
                    version,
                    { InResources = false
                      TransferPort = 0
                      LibraryTask = 0L
                      BytesSent = 0L
                      PeerBytes = 0L
                      TransferHost = (match link.Remote.LastIndexOf ':' with -1 -> link.Remote | i -> link.Remote.Substring(0, i))
                      Confirmed = HashSet()
                      Gets = Queue() }
                )
            | _ -> None

        override this.Send(w, e) =
            e.ViaRunner <- e.Task.ViaLibrary.IsSome && w.Own.LibraryTask > 0L
            let spec, inputs =
                match e.Task.ViaLibrary with
                | Some(spec, inputs) when e.ViaRunner -> spec, inputs
                | _ -> e.Task.Spec, e.Task.Inputs
            for i in inputs do
                this.Put(w, i)
            // The worker is told the task's allocation: it enforces disk and wall time, and counts cores and GPUs.
            let a = e.Alloc
            w.Link.Send(Bytes(VineProtocol.renderTask { spec with TaskId = e.Id; Cores = float a.Cores; Memory = a.Memory; Disk = a.Disk; Gpus = a.Gpus }))

        override _.Unlink(w, e) =
            let inputs = match e.Task.ViaLibrary with Some(_, i) when e.ViaRunner -> i | _ -> e.Task.Inputs
            for i in inputs do
                if i.File.Level = CacheLevel.TaskLevel then w.Link.SendLine("unlink " + VineProtocol.encodeName i.File.CacheName)
            for o in e.Task.Outputs do
                if o.File.Level = CacheLevel.TaskLevel then w.Link.SendLine("unlink " + VineProtocol.encodeName o.File.CacheName)

        // Prefer the worker that already holds most of the task's cached inputs (then the least busy).
        override _.Holds(w, e) = e.Task.Inputs |> List.sumBy (fun i -> if w.Cached.Contains i.File.CacheName then 1 else 0)

        override this.Said(w, line, payload) =
            match line with
            | ResourcesBegin ->
                w.Own.InResources <- true
                w.Lines <- []
            | Resource(name, total) when w.Own.InResources -> w.Lines <- w.Lines @ [ name, total ]
            | End when w.Own.InResources ->
                w.Own.InResources <- false
                w.Total <- Parsl.Executors.WorkQueue.WqProtocol.resources w.Lines
                if not w.Ready then
                    w.Ready <- true
                    s.Log.Information("{Label}: worker {Id} ready: {Cores} cores, {Memory} MB, {Disk} MB disk", s.Label, w.Id, w.Total.Cores, w.Total.Memory, w.Total.Disk)
                    this.StartLibrary w
            | TransferPort(host, p) ->
                w.Own.TransferPort <- p
                host |> Option.iter (fun h -> w.Own.TransferHost <- h)
            | CacheUpdate(name, _, _) ->
                w.Cached.Add name |> ignore
                w.Own.Confirmed.Add name |> ignore
            | CacheInvalid(name, _) ->
                w.Cached.Remove name |> ignore
                w.Own.Confirmed.Remove name |> ignore
                s.Log.Warning("{Label}: worker {Id} could not cache {Name}: {Message}", s.Label, w.Id, name, Text.Encoding.UTF8.GetString payload)
            | Complete(code, exitCode, _, _, _, _, taskId) when taskId = w.Own.LibraryTask ->
                // The library ended (it should not): calls now run as ordinary tasks there.
                s.Log.Warning("{Label}: the library on worker {Id} ended (result {Code}, exit {Exit}): {Output}", s.Label, w.Id, code, exitCode, Text.Encoding.UTF8.GetString payload)
                w.Own.LibraryTask <- -1L
            | Complete(code, exitCode, _, _, _, _, taskId) ->
                match this.TryEntry taskId with
                | Some e when e.Worker = w.Id ->
                    e.Code <- code
                    e.Exit <- exitCode
                    e.Output <- payload
                    let wanted = if code = 0 then e.Task.Outputs else []
                    if wanted.IsEmpty then this.Ended(w, e)
                    else
                        e.Pending <- wanted.Length
                        for o in wanted do
                            w.Own.Gets.Enqueue(struct (e.Id, o.File.CacheName))
                            w.Link.SendLine("get " + VineProtocol.encodeName o.File.CacheName)
                | _ -> ()
            | _ -> ()

        override this.Fetched(w, name, ok) =
            if w.Own.Gets.Count > 0 then
                let struct (tid, wanted) = w.Own.Gets.Dequeue()
                if wanted <> name then s.Log.Warning("{Label}: worker {Id} sent {Name} for a get of {Wanted}", s.Label, w.Id, name, wanted)
                match this.TryEntry tid with
                | Some e when e.Worker = w.Id ->
                    if not ok then s.Log.Debug("{Label}: output {Name} missing on worker {Id}", s.Label, name, w.Id)
                    e.Pending <- e.Pending - 1
                    if e.Pending = 0 then
                        moveFetched w e
                        this.Ended(w, e)
                | _ -> ()

        override _.Info w =
            { Id = w.Id
              Host = w.Host
              Version = w.Version
              Cores = w.Total.Cores
              TransferPort = w.Own.TransferPort
              Library = w.Own.LibraryTask > 0L
              Running = w.Running.Count
              BytesSent = w.Own.BytesSent
              PeerBytes = w.Own.PeerBytes }

        override _.Key t = t.Key
        override _.Request t = t.Request
        override _.Deliver(t, outcome) = t.Complete outcome

    /// Starts the manager: binds `Address:Port` (0 = any free port) and returns at once.
    let start (s: VineManagerSettings) : VineManagerHandle = Manager(s).Start()
