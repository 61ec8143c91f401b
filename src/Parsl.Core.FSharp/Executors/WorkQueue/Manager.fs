namespace Parsl.Executors.WorkQueue

open System
open System.Collections.Generic
open System.IO
open System.Net
open System.Net.Sockets
open System.Security.Cryptography
open System.Threading
open System.Threading.Channels
open System.Threading.Tasks
open Parsl
open Parsl.Executors.WorkerLink
open Parsl.Node

/// A file sent to the worker before the task runs.
type InputSource =
    { File: TaskFile
      /// The file on this machine.
      LocalPath: string
      /// The mode it gets on the worker (octal 0755 for programs).
      Mode: int }

/// Where a fetched output goes on this machine.
type OutputDest =
    { File: TaskFile
      Path: string
      /// Append to `Path` (a shell app's plain stdout path) instead of replacing it.
      Append: bool }

/// How a task ended on its worker: the result code, the command's exit code and output, and the outputs that
/// did not come back.
type WqOutcome =
    { Code: int
      ExitCode: int
      Output: byte[]
      Missing: string list
      Host: string }

/// One task for the manager: its description (the manager fills in the id), resources, files, and what to call
/// when it ends (on the manager's loop: keep it short).
type WqTask =
    { Key: int64
      Spec: TaskSpec
      Request: ResourceRequest
      Inputs: InputSource list
      Outputs: OutputDest list
      /// The same task for a worker running our long-lived runner (its description and inputs), when it has one.
      Coprocess: (TaskSpec * InputSource list) option
      Complete: Result<WqOutcome, exn> -> unit }

/// A connected worker, as `WorkersAsync` reports it.
type WqWorkerInfo =
    { Id: int
      Host: string
      Protocol: int
      Version: string
      Cores: int64
      /// Whether it runs our long-lived .NET runner (a coprocess), so function apps skip a `dotnet` start.
      LongLivedRunner: bool
      Running: int }

/// What the manager needs.
type WqManagerSettings =
    { Label: string
      Address: string
      Port: int
      Password: string option
      KeepalivePeriod: TimeSpan
      KeepaliveTimeout: TimeSpan
      /// Dispatches per task before a lost worker's task fails with `WorkerLost` (Work Queue's `max_retries`).
      MaxRetries: int
      /// Where fetched files land before they are moved to their destinations.
      TransferDir: string
      Log: Serilog.ILogger }

/// Requests to the manager's loop.
type WqManagerRequest =
    | Joined of worker: int * link: LineLink * hello: WorkerLine
    | Said of worker: int * line: WorkerLine * payload: byte[]
    | Left of worker: int * reason: string
    | Rejected of remote: string * reason: string
    | SubmitTask of WqTask
    | CancelTask of key: int64
    | Tick
    | QueryWorkers of TaskCompletionSource<WqWorkerInfo list>
    | StopManager of TaskCompletionSource<unit>

/// The handle of a running manager.
[<Sealed>]
type WqManagerHandle internal (channel: Channel<WqManagerRequest>, port: int, completion: Task, rejected: unit -> int) =
    /// Sends a request. Never blocks.
    member _.Post r = channel.Writer.TryWrite r |> ignore
    /// The port workers connect to.
    member _.Port = port
    /// Ends when the loop and every connection ended.
    member _.Completion = completion
    /// Connections refused so far (wrong or missing password, unknown protocol).
    member _.RejectedCount = rejected ()

/// The Work Queue manager (CCTools' `work_queue.c`, the part Parsl drives): accepts workers, authenticates them,
/// places tasks by resources and priority, sends files once per worker when cached, and handles each result the
/// moment the worker announces it (`available_results`), with no polling. One actor: the loop owns every worker and
/// task; each connection's reader only parses and posts.
///
///   worker ──auth, workqueue 9|11, resources──▶ reader ──Joined──▶ loop
///   loop ──put (cached once), task … end──▶ worker ──available_results──▶ loop ──send_results -1──▶ worker
///   worker ──result … end──▶ loop ──get <output>──▶ worker ──file …──▶ loop ──kill, unlink──▶ worker
[<RequireQualifiedAccess>]
module WqManager =
    type private Expect =
        | ExpectResults
        | ExpectGet of taskId: int64

    type private Worker =
        { Id: int
          Link: LineLink
          Host: string
          Protocol: int
          Version: string
          mutable Lines: (string * int64) list
          mutable Total: WorkerResources
          mutable Used: WorkerResources
          mutable Ready: bool
          mutable Coprocess: bool
          Running: HashSet<int64>
          Cached: HashSet<string>
          Expect: Queue<Expect> }

    type private Entry =
        { Id: int64
          Task: WqTask
          Seq: int64
          mutable Worker: int
          mutable Tries: int
          mutable Alloc: WorkerResources
          mutable Code: int
          mutable Exit: int
          mutable Output: byte[]
          mutable Pending: int
          Missing: List<string> }

    let private zero: WorkerResources = { Cores = 0L; Memory = 0L; Disk = 0L; Gpus = 0L }

    let private safeName = ManagerRules.safeName

    /// Reads one connection: authentication and handshake first (nothing else is parsed before them), then lines and
    /// their payloads, posted to the loop.
    let private serve (s: WqManagerSettings) (id: int) (client: TcpClient) (post: WqManagerRequest -> unit) (abort: CancellationToken) : Task =
        task {
            let link = new LineLink(client, WqProtocol.lineMax, s.KeepaliveTimeout)
            // At the very end of a shutdown every connection is cut, joined or not (one still authenticating too).
            use _ = abort.Register(fun () -> link.Abort())
            let mutable joined = false
            let reject why =
                post (Rejected(link.Remote, why))
                link.Abort()
            let read () =
                task {
                    match! link.ReadLineAsync() with
                    | Some l -> return l
                    | None -> return raise (EndOfStreamException "the worker closed the connection")
                }
            try
                let! ok = ManagerLink.authenticate link s.Password reject
                if ok then
                    let! first = read ()
                    match (try WqProtocol.parse first with _ -> Other first) with
                    | Hello(p, _, _, _, _) as h when List.contains p WqProtocol.supported ->
                        joined <- true
                        post (Joined(id, link, h))
                        let dir = Path.Combine(s.TransferDir, sprintf "w%d" id)
                        let mutable go = true
                        while go do
                            match! link.ReadLineAsync() with
                            | None ->
                                go <- false
                                post (Left(id, "the worker closed the connection"))
                            | Some line ->
                                let parsed = WqProtocol.parse line
                                match parsed with
                                | FileData(name, size) ->
                                    if not (safeName name) then raise (InvalidDataException(sprintf "unsafe file name '%s' from the worker" name))
                                    let path = Path.Combine(dir, name)
                                    Directory.CreateDirectory(Path.GetDirectoryName path) |> ignore
                                    do!
                                        task {
                                            use f = File.Create path
                                            do! link.CopyBytesAsync(size, f)
                                        }
                                    post (Said(id, parsed, null))
                                | DirData name ->
                                    if not (safeName name) then raise (InvalidDataException(sprintf "unsafe directory name '%s' from the worker" name))
                                    Directory.CreateDirectory(Path.Combine(dir, name)) |> ignore
                                    post (Said(id, parsed, null))
                                | _ ->
                                    let n = WqProtocol.payloadLength parsed
                                    // A `result` carries the task's whole output, so the bound is larger than TaskVine's (1 MiB).
                                    if n > 256L * 1024L * 1024L then raise (InvalidDataException(sprintf "a payload of %d bytes from the worker" n))
                                    let! payload = if n > 0L then link.ReadBytesAsync(int n) else Task.FromResult [||]
                                    post (Said(id, parsed, payload))
                    | Hello(p, _, _, _, _) -> reject (sprintf "the worker speaks Work Queue protocol %d; this manager speaks %A" p WqProtocol.supported)
                    | _ when first = WqProtocol.authIdent ->
                        reject "the worker wants a password but this executor has none (set PasswordFile, or start the worker without --password)"
                    | _ -> reject "the peer is not a Work Queue worker"
            with e ->
                if joined then post (Left(id, e.Message))
                else reject e.Message
        }

    /// Starts the manager: binds `Address:Port` (0 = any free port) and returns at once.
    let start (s: WqManagerSettings) : WqManagerHandle =
        let channel = Channel.CreateUnbounded<WqManagerRequest>(UnboundedChannelOptions(SingleReader = true))
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

        let finish (e: Entry) (outcome: Result<WqOutcome, exn>) =
            entries.Remove e.Id |> ignore
            byKey.Remove e.Task.Key |> ignore
            try e.Task.Complete outcome with ex -> s.Log.Error(ex, "{Label}: completing task {Key} failed", s.Label, e.Task.Key)

        /// Frees the task's place on its worker and its sandbox and uncached files there.
        let release (w: Worker) (e: Entry) =
            if w.Running.Remove e.Id then
                w.Used <- WqProtocol.add -1L w.Used e.Alloc
                w.Link.SendLine(sprintf "kill %d" e.Id)
                let inputs = match e.Task.Coprocess with Some(_, i) when w.Coprocess -> i | _ -> e.Task.Inputs
                for i in inputs do
                    if not i.File.Cached then w.Link.SendLine("unlink " + WqProtocol.encodeName i.File.CacheName)
                for o in e.Task.Outputs do
                    if not o.File.Cached then w.Link.SendLine("unlink " + WqProtocol.encodeName o.File.CacheName)

        let send (w: Worker) (e: Entry) =
            let spec, inputs =
                match e.Task.Coprocess with
                | Some(spec, inputs) when w.Coprocess -> spec, inputs
                | _ -> e.Task.Spec, e.Task.Inputs
            for i in inputs do
                if not i.File.Cached || w.Cached.Add i.File.CacheName then
                    let size = FileInfo(i.LocalPath).Length
                    w.Link.Send(FileBody(Text.Encoding.UTF8.GetBytes(WqProtocol.putHeader i.File.CacheName size i.Mode), i.LocalPath))
            w.Link.Send(Bytes(WqProtocol.renderTask { spec with TaskId = e.Id }))

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
                                    let need = WqProtocol.allocation e.Task.Request w.Total
                                    if WqProtocol.fitsNow need w.Total w.Used then Some(w, need) else None)
                            if candidates.Length > 0 then
                                let w, need = candidates |> Array.minBy (fun (w, _) -> w.Running.Count)
                                e.Worker <- w.Id
                                e.Alloc <- need
                                e.Tries <- e.Tries + 1
                                w.Used <- WqProtocol.add 1L w.Used need
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
            finish e (Ok { Code = e.Code; ExitCode = e.Exit; Output = e.Output; Missing = List.ofSeq e.Missing; Host = w.Host })

        let moveFetched (w: Worker) (e: Entry) =
            let dir = Path.Combine(s.TransferDir, sprintf "w%d" w.Id)
            for o in e.Task.Outputs do
                let src = Path.Combine(dir, o.File.CacheName)
                if File.Exists src then
                    try
                        match Path.GetDirectoryName o.Path with
                        | null | "" -> ()
                        | d -> Directory.CreateDirectory d |> ignore
                        if o.Append then
                            use dst = new FileStream(o.Path, FileMode.Append)
                            use f = File.OpenRead src
                            f.CopyTo dst
                            f.Dispose()
                            File.Delete src
                        else File.Move(src, o.Path, true)
                    with ex ->
                        e.Missing.Add o.Path
                        s.Log.Error(ex, "{Label}: could not store output {Path}", s.Label, o.Path)
                elif Directory.Exists src then
                    if Directory.Exists o.Path then Directory.Delete(o.Path, true)
                    Directory.Move(src, o.Path)

        let said (w: Worker) (line: WorkerLine) (payload: byte[]) =
            match line with
            | Resource(name, total) ->
                w.Lines <- w.Lines @ [ name, total ]
                w.Total <- WqProtocol.resources w.Lines
            | Info("end_of_resource_update", _) -> w.Ready <- true
            | Feature name when name = WqProtocol.coprocessFeature -> w.Coprocess <- true
            | AvailableResults ->
                w.Expect.Enqueue ExpectResults
                w.Link.SendLine "send_results -1"
            | Result(code, exitCode, _, _, taskId) ->
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
                            w.Expect.Enqueue(ExpectGet e.Id)
                            w.Link.SendLine(sprintf "get %s 1" (WqProtocol.encodeName o.File.CacheName))
                | _ -> ()
            | Missing(name, errno) ->
                match (if w.Expect.Count > 0 then Some(w.Expect.Peek()) else None) with
                | Some(ExpectGet tid) ->
                    match entries.TryGetValue tid with
                    | true, e ->
                        let dest = e.Task.Outputs |> List.tryFind (fun o -> o.File.CacheName = name) |> Option.map (fun o -> o.Path)
                        e.Missing.Add(defaultArg dest name)
                        s.Log.Debug("{Label}: output {Name} missing on worker (errno {Errno})", s.Label, name, errno)
                    | _ -> ()
                | _ -> ()
            | End ->
                if w.Expect.Count > 0 then
                    match w.Expect.Dequeue() with
                    | ExpectResults -> ()
                    | ExpectGet tid ->
                        match entries.TryGetValue tid with
                        | true, e when e.Worker = w.Id ->
                            e.Pending <- e.Pending - 1
                            if e.Pending = 0 then
                                moveFetched w e
                                complete w e
                        | _ -> ()
            | CacheInvalid(name, _) ->
                w.Cached.Remove name |> ignore
                s.Log.Warning("{Label}: worker {Id} could not cache {Name}: {Message}", s.Label, w.Id, name, Text.Encoding.UTF8.GetString payload)
            | Info("vacating", _) -> ()
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
                            let mutable r = Unchecked.defaultof<WqManagerRequest>
                            while go && channel.Reader.TryRead(&r) do
                                try
                                    match r with
                                    | Joined(id, link, Hello(p, host, _, _, version)) ->
                                        workers[id] <-
                                            { Id = id
                                              Link = link
                                              Host = host
                                              Protocol = p
                                              Version = version
                                              Lines = []
                                              Total = zero
                                              Used = zero
                                              Ready = false
                                              Coprocess = false
                                              Running = HashSet()
                                              Cached = HashSet()
                                              Expect = Queue() }
                                        s.Log.Information("{Label}: worker {Id} joined from {Host} ({Remote}), protocol {P}", s.Label, id, host, link.Remote, p)
                                    | Joined(_, link, _) -> link.Abort()
                                    | Said(id, line, payload) ->
                                        match workers.TryGetValue id with
                                        | true, w -> said w line payload
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
                                              Tries = 0
                                              Alloc = zero
                                              Code = 0
                                              Exit = 0
                                              Output = [||]
                                              Pending = 0
                                              Missing = List() }
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
                                                { Id = w.Id; Host = w.Host; Protocol = w.Protocol; Version = w.Version; Cores = w.Total.Cores; LongLivedRunner = w.Coprocess; Running = w.Running.Count } ]
                                        |> ignore
                                    | StopManager reply ->
                                        go <- false
                                        do! stopAll reply
                                    schedule ()
                                with ex -> s.Log.Error(ex, "{Label}: manager loop error", s.Label)
                    // Requests still queued after the stop are answered, so no caller waits forever.
                    let mutable r = Unchecked.defaultof<WqManagerRequest>
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

        WqManagerHandle(channel, port, loop, fun () -> rejected)
