namespace Parsl.Executors.WorkQueue

open System
open System.Collections.Generic
open System.IO
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
type WqManagerSettings = LinkSettings

/// Requests to the manager's loop.
type WqManagerRequest = LinkRequest<WorkerLine, WqTask, WqWorkerInfo>

/// The handle of a running manager.
type WqManagerHandle = LinkManagerHandle<WorkerLine, WqTask, WqWorkerInfo>

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

    /// What a Work Queue worker has besides what every worker has.
    type private Own =
        { Protocol: int
          /// It runs our long-lived .NET runner (a coprocess).
          mutable Coprocess: bool
          /// The replies owed, in order: the worker answers `send_results` and each `get` in order.
          Expect: Queue<Expect> }

    type private Worker = LinkWorker<Own>
    type private Entry = LinkEntry<WqTask>

    [<Sealed>]
    type private Manager(s: WqManagerSettings) =
        inherit LinkManager<WorkerLine, WqTask, WqOutcome, Own, WqWorkerInfo>(s)

        let moveFetched (w: Worker) (e: Entry) =
            let dir = Path.Combine(s.TransferDir, sprintf "w%d" w.Id)
            for o in e.Task.Outputs do
                let src = Path.Combine(dir, o.File.CacheName)
                if File.Exists src || Directory.Exists src then
                    try LinkReader.storeOutput src o.Path o.Append
                    with ex ->
                        e.Missing.Add o.Path
                        s.Log.Error(ex, "{Label}: could not store output {Path}", s.Label, o.Path)

        member private this.Ended(w: Worker, e: Entry) =
            this.Complete(w, e, { Code = e.Code; ExitCode = e.Exit; Output = e.Output; Missing = List.ofSeq e.Missing; Host = w.Host })

        /// Reads one connection: lines and their payloads, posted to the loop; files fetched with `get` are written
        /// under the worker's transfer folder as they stream in.
        override this.Serve(id, client, abort) =
            let link = new LineLink(client, WqProtocol.lineMax, s.KeepaliveTimeout)
            let dir = Path.Combine(s.TransferDir, sprintf "w%d" id)
            let hello first =
                match (try WqProtocol.parse first with _ -> Other first) with
                | Hello(p, _, _, _, _) as h when List.contains p WqProtocol.supported -> Ok h
                | Hello(p, _, _, _, _) -> Error(sprintf "the worker speaks Work Queue protocol %d; this manager speaks %A" p WqProtocol.supported)
                | _ when first = WqProtocol.authIdent -> Error LinkReader.noPassword
                | _ -> Error "the peer is not a Work Queue worker"
            let next () =
                task {
                    match! link.ReadLineAsync() with
                    | None -> return false
                    | Some line ->
                        let parsed = WqProtocol.parse line
                        match parsed with
                        | FileData(name, size) ->
                            do! LinkReader.receiveFile link dir name size
                            this.Post(Said(id, parsed, null))
                        | DirData name ->
                            LinkReader.receiveDir dir name name
                            this.Post(Said(id, parsed, null))
                        | _ ->
                            // A `result` carries the task's whole output, so the bound is larger than TaskVine's (1 MiB).
                            let! payload = LinkReader.payload link (WqProtocol.payloadLength parsed) (256L * 1024L * 1024L)
                            this.Post(Said(id, parsed, payload))
                        return true
                }
            LinkReader.serve link id s.Password abort this.Post hello next

        override _.Join(id, link, hello) =
            match hello with
            | Hello(p, host, _, _, version) ->
                s.Log.Information("{Label}: worker {Id} joined from {Host} ({Remote}), protocol {P}", s.Label, id, host, link.Remote, p)
                Some(host, version, { Protocol = p; Coprocess = false; Expect = Queue() })
            | _ -> None

        override _.Send(w, e) =
            e.ViaRunner <- e.Task.Coprocess.IsSome && w.Own.Coprocess
            let spec, inputs =
                match e.Task.Coprocess with
                | Some(spec, inputs) when e.ViaRunner -> spec, inputs
                | _ -> e.Task.Spec, e.Task.Inputs
            for i in inputs do
                if not i.File.Cached || w.Cached.Add i.File.CacheName then
                    let size = FileInfo(i.LocalPath).Length
                    w.Link.Send(FileBody(Text.Encoding.UTF8.GetBytes(WqProtocol.putHeader i.File.CacheName size i.Mode), i.LocalPath))
            w.Link.Send(Bytes(WqProtocol.renderTask { spec with TaskId = e.Id }))

        override _.Unlink(w, e) =
            let inputs = match e.Task.Coprocess with Some(_, i) when e.ViaRunner -> i | _ -> e.Task.Inputs
            for i in inputs do
                if not i.File.Cached then w.Link.SendLine("unlink " + WqProtocol.encodeName i.File.CacheName)
            for o in e.Task.Outputs do
                if not o.File.Cached then w.Link.SendLine("unlink " + WqProtocol.encodeName o.File.CacheName)

        override this.Said(w, line, payload) =
            match line with
            | Resource(name, total) ->
                w.Lines <- w.Lines @ [ name, total ]
                w.Total <- WqProtocol.resources w.Lines
            | Info("end_of_resource_update", _) -> w.Ready <- true
            | Feature name when name = WqProtocol.coprocessFeature -> w.Own.Coprocess <- true
            | AvailableResults ->
                w.Own.Expect.Enqueue ExpectResults
                w.Link.SendLine "send_results -1"
            | Result(code, exitCode, _, _, taskId) ->
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
                            w.Own.Expect.Enqueue(ExpectGet e.Id)
                            w.Link.SendLine(sprintf "get %s 1" (WqProtocol.encodeName o.File.CacheName))
                | _ -> ()
            | Missing(name, errno) ->
                match (if w.Own.Expect.Count > 0 then Some(w.Own.Expect.Peek()) else None) with
                | Some(ExpectGet tid) ->
                    match this.TryEntry tid with
                    | Some e ->
                        let dest = e.Task.Outputs |> List.tryFind (fun o -> o.File.CacheName = name) |> Option.map (fun o -> o.Path)
                        e.Missing.Add(defaultArg dest name)
                        s.Log.Debug("{Label}: output {Name} missing on worker (errno {Errno})", s.Label, name, errno)
                    | None -> ()
                | _ -> ()
            | End ->
                if w.Own.Expect.Count > 0 then
                    match w.Own.Expect.Dequeue() with
                    | ExpectResults -> ()
                    | ExpectGet tid ->
                        match this.TryEntry tid with
                        | Some e when e.Worker = w.Id ->
                            e.Pending <- e.Pending - 1
                            if e.Pending = 0 then
                                moveFetched w e
                                this.Ended(w, e)
                        | _ -> ()
            | CacheInvalid(name, _) ->
                w.Cached.Remove name |> ignore
                s.Log.Warning("{Label}: worker {Id} could not cache {Name}: {Message}", s.Label, w.Id, name, Text.Encoding.UTF8.GetString payload)
            | Info("vacating", _) -> ()
            | _ -> ()

        override _.Info w =
            { Id = w.Id; Host = w.Host; Protocol = w.Own.Protocol; Version = w.Version; Cores = w.Total.Cores; LongLivedRunner = w.Own.Coprocess; Running = w.Running.Count }

        override _.Key t = t.Key
        override _.Request t = t.Request
        override _.Deliver(t, outcome) = t.Complete outcome

    /// Starts the manager: binds `Address:Port` (0 = any free port) and returns at once.
    let start (s: WqManagerSettings) : WqManagerHandle = Manager(s).Start()
