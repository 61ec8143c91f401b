namespace Parsl.Executors.Endpoint

open System
open System.Collections.Concurrent
open System.Collections.Generic
open System.IO
open System.Reflection
open System.Runtime.Loader
open System.Security.Cryptography
open System.Threading
open System.Threading.Channels
open System.Threading.Tasks
open Parsl
open Parsl.Executors
open Parsl.Node
open Parsl.Executors.HighThroughput
open Parsl.Node.HighThroughput
open Parsl.Providers
open Parsl.Node.Runtime

/// A batch whose message is acknowledged once all of its results are published.
type private BatchState = { Delivery: Delivery; mutable Remaining: int }

/// What the daemon's outbox loop publishes.
type private Outgoing =
    /// A message for a client; the delivery (if any) is acknowledged once it is published.
    | Reply of queue: string * token: string * message: ToClient * ack: Delivery option
    /// One try's result; its batch is acknowledged when its last result is published.
    | Result of queue: string * token: string * result: WireResult * batch: BatchState
    /// Stop after publishing what is queued.
    | Finish

type private Loaded =
    { Function: Delegate
      TakesToken: bool
      Parameters: ParameterInfo[] }

/// A running endpoint daemon.
type EndpointDaemonHandle internal (stop: unit -> Task, completion: Task) =
    /// Stops consuming, stops the kernels (tries not yet published go back to the queue and run at the next start),
    /// and disconnects.
    member _.StopAsync() : Task = stop ()
    /// Completes when the daemon has stopped.
    member _.Completion = completion

/// The endpoint daemon (Globus Compute's endpoint, self-hosted): consumes its durable task queue, checks each
/// message's token and protocol version before reading its body, runs each try through a Parsl.NET kernel
/// (one per distinct rendering of its `UserEndpointConfig` template), publishes results to the client's task-group
/// queue and only then acknowledges the batch.
///
///   broker ──batch──▶ handler: token? version? decode; per try: template → kernel → submit ──▶ kernel's executor
///   broker ◀──Results (grouped per client)── outbox loop ◀──try ended──┘     outbox ──ack batch──▶ broker
[<RequireQualifiedAccess>]
module EndpointDaemon =
    let private sha256 (b: byte[]) = Convert.ToHexString(SHA256.HashData b)

    let private number (s: string) : obj =
        match Int32.TryParse(s, Globalization.NumberStyles.Integer, Globalization.CultureInfo.InvariantCulture) with
        | true, i -> box i
        | _ ->
            match Double.TryParse(s, Globalization.NumberStyles.Float, Globalization.CultureInfo.InvariantCulture) with
            | true, d -> box d
            | _ -> box s

    let private unwrap (e: exn) = TaskResults.unwrap e

    /// How a failed try travels back; an HTEx backend's remote exception keeps the user's exception type.
    let private failure (e: exn) : WireOutcome =
        match unwrap e with
        | :? RemoteException as r ->
            let prefix = r.TypeName + ": "
            let m = if r.Message.StartsWith prefix then r.Message.Substring prefix.Length else r.Message
            Raised(r.TypeName, m, (if isNull r.RemoteStackTrace then "" else r.RemoteStackTrace), [])
        | :? SerializationError as s -> Unserializable s.Message
        | :? WorkerLost as w -> WorkerDied(w.WorkerId, w.Hostname)
        | e -> Worker.describe e

    /// The executor a rendered engine configuration describes.
    let engineExecutor (home: string) (settings: Map<string, string>) : IExecutor =
        let get k def = defaultArg (Map.tryFind k settings) def
        let int' k def =
            match Int32.TryParse(get k (string def)) with
            | true, v -> v
            | _ -> raise (ConfigurationError("endpoint.engine." + k, sprintf "'%s' is not a whole number" (get k "")))
        match get "type" "ThreadPool" with
        | "HighThroughput" ->
            let provider =
                LocalProvider(
                    { LocalProvider.Defaults with
                        InitBlocks = int' "initBlocks" 1
                        MaxBlocks = int' "maxBlocks" 1 })
            let workers = Map.tryFind "maxWorkersPerNode" settings |> Option.map (fun _ -> int' "maxWorkersPerNode" 1)
            HighThroughputExecutor(
                { HtexOptions.defaults () with
                    Label = "endpoint-htex"
                    Provider = provider
                    MaxWorkersPerNode = workers
                    CoresPerWorker =
                        (match Double.TryParse(get "coresPerWorker" "1", Globalization.NumberStyles.Float, Globalization.CultureInfo.InvariantCulture) with
                         | true, v -> v
                         | _ -> 1.0) })
            :> IExecutor
        | _ -> ThreadPoolExecutor("endpoint-threads", int' "maxThreads" 4) :> IExecutor

    /// Starts the daemon for `config`; `home` is its directory (run directories, assembly cache).
    let startAsync (config: EndpointConfig) (home: string) (log: Serilog.ILogger) (ct: CancellationToken) : Task<EndpointDaemonHandle> =
        task {
            let name = config.Name
            let cacheDir = Path.Combine(home, "assemblies")
            Directory.CreateDirectory cacheDir |> ignore
            let paths = ConcurrentDictionary<string, string>()
            AssemblyLoadContext.Default.add_Resolving(fun ctx an ->
                match paths.TryGetValue an.Name with
                | true, p -> ctx.LoadFromAssemblyPath p
                | _ -> null)
            let opts = Serialization.options (fun n -> paths.ContainsKey n)
            let definitions = ConcurrentDictionary<string, byte[]>()
            let functions = ConcurrentDictionary<string, Loaded>()
            let verified = ConcurrentDictionary<string, string>()
            let kernels = Dictionary<string, DataFlowKernel>()
            let outbox = Channel.CreateUnbounded<Outgoing>(UnboundedChannelOptions(SingleReader = true))
            let stopping = new CancellationTokenSource()
            let engineName = sprintf "%s" (defaultArg (Map.tryFind "type" config.Engine) "ThreadPool")

            let! transport = RabbitMqTransport.ConnectAsync(config.Broker, "parsl-endpoint " + name, TimeSpan.FromMinutes 5.0, ct)
            let transport = transport :> IEndpointTransport
            do! transport.DeclareEndpointAsync(name, ct)

            let kernelFor (rendered: Map<string, string>) =
                let key = Template.identity rendered
                lock kernels (fun () ->
                    match kernels.TryGetValue key with
                    | true, k -> k
                    | _ ->
                        let k =
                            DataFlowKernel.Load
                                { Config.defaults with
                                    Executors = [ engineExecutor home rendered ]
                                    RunDir = Path.Combine(home, "runinfo") }
                        log.Information("endpoint {Name}: a kernel for engine settings {Settings}", name, key)
                        kernels[key] <- k
                        k)

            /// Where this machine has the assembly: the client's path when the content matches (a shared file
            /// system), else our cache by hash; None when it must be fetched.
            let localCopy (r: AssemblyRef) =
                let matches (p: string) =
                    File.Exists p
                    && verified.GetOrAdd(p, fun p -> Serialization.hashFile p) = r.Hash
                let cached = Path.Combine(cacheDir, r.Hash + ".dll")
                if config.SharedFileSystem && matches r.Path then Some r.Path
                elif File.Exists cached then Some cached
                else None

            let missingAssemblies (hash: string) =
                match definitions.TryGetValue hash with
                | true, def when not (functions.ContainsKey hash) ->
                    let refs, _ = Serialization.decodeDefinition def
                    refs |> List.filter (fun r -> (localCopy r).IsNone) |> List.map (fun r -> r.Hash)
                | _ -> []

            let load (hash: string) : Loaded =
                functions.GetOrAdd(
                    hash,
                    fun hash ->
                        match definitions.TryGetValue hash with
                        | false, _ -> failwithf "the function's definition %s was not sent" hash
                        | true, def ->
                            let refs, body = Serialization.decodeDefinition def
                            for r in refs do
                                match localCopy r with
                                | Some p -> paths[AssemblyName(r.FullName).Name] <- p
                                | None -> failwithf "assembly %s (%s) is not on this machine" r.FullName r.Hash
                            let d = Serialization.deserialize opts body :?> Delegate
                            let ps = d.Method.GetParameters()
                            let takes = ps.Length > 0 && ps[ps.Length - 1].ParameterType = typeof<CancellationToken>
                            { Function = d; TakesToken = takes; Parameters = ps })

            // Replies carry the token of the message they answer: the client reads only replies with its own token.
            let publishUntilDone (queue: string) (token: string) (m: ToClient) =
                task {
                    let message =
                        { Kind = EndpointWire.ReplyKind
                          MessageId = ""
                          ReplyTo = ""
                          Headers = Map [ EndpointWire.ProtocolHeader, string EndpointWire.Version; EndpointWire.TokenHeader, (if isNull token then "" else token) ]
                          Body = ReadOnlyMemory(EndpointWire.encodeToClient m) }
                    let mutable go = true
                    while go do
                        try
                            do! transport.SendToQueueAsync(queue, message, CancellationToken.None)
                            go <- false
                        with
                        | :? BrokerRefused as e ->
                            log.Warning("endpoint {Name}: a reply to {Queue} was dropped: {Error}", name, queue, e.Message)
                            go <- false
                        | e ->
                            // The broker is away (restarting): the results wait here, the batches stay unacknowledged.
                            log.Warning("endpoint {Name}: publishing to {Queue} failed ({Error}); retrying", name, queue, e.Message)
                            do! Task.Delay 500
                }

            let outboxLoop () : Task =
                task {
                    let reader = outbox.Reader
                    let mutable go = true
                    while go do
                        let! more = reader.WaitToReadAsync()
                        if not more then go <- false
                        else
                            let results = Dictionary<struct (string * string), List<WireResult>>()
                            let touched = List<BatchState>()
                            let replies = List<string * string * ToClient * Delivery option>()
                            let mutable item = Unchecked.defaultof<Outgoing>
                            while reader.TryRead(&item) do
                                match item with
                                | Reply(q, tok, m, a) -> replies.Add((q, tok, m, a))
                                | Result(q, tok, r, b) ->
                                    match results.TryGetValue(struct (q, tok)) with
                                    | true, l -> l.Add r
                                    | _ -> results[struct (q, tok)] <- List [ r ]
                                    touched.Add b
                                | Finish -> go <- false
                            for q, tok, m, a in replies do
                                do! publishUntilDone q tok m
                                match a with
                                | Some d -> do! d.Ack()
                                | None -> ()
                            for KeyValue(struct (q, tok), rs) in results do
                                for chunk in Seq.chunkBySize 256 rs do
                                    do! publishUntilDone q tok (ToClient.Results(List.ofArray chunk))
                            for b in touched do
                                b.Remaining <- b.Remaining - 1
                                if b.Remaining = 0 then do! b.Delivery.Ack()
                }

            let tokenOf (d: Delivery) = match d.Message.Headers.TryGetValue EndpointWire.TokenHeader with | true, t -> t | _ -> ""
            let reply queue (d: Delivery) m = outbox.Writer.TryWrite(Reply(queue, tokenOf d, m, Some d)) |> ignore

            let started = ref 0L
            let ended = ref 0L
            let runTask (replyTo: string) (batch: BatchState) (t: EndpointTask) =
                Interlocked.Increment &started.contents |> ignore
                let post outcome =
                    Interlocked.Increment &ended.contents |> ignore
                    outbox.Writer.TryWrite(Result(replyTo, tokenOf batch.Delivery, { Key = t.Key; Outcome = outcome }, batch)) |> ignore
                let rendered = Template.render config.Template config.Engine t.UserConfig
                match rendered with
                | Error e ->
                    post (Raised(typeof<UserEndpointConfigRefused>.FullName, Template.describe e, "", []))
                | Ok settings ->
                    let resources = Map [ for k, v in t.Resources -> k, number v ]
                    let opts' = { AppOptions.defaults with Name = Some t.AppName; Resources = resources }
                    let started =
                        try
                            let dfk = kernelFor settings
                            match t.Body with
                            | EndpointCall(hash, args) ->
                                match (try Ok(load hash) with e -> Error(unwrap e)) with
                                | Error e ->
                                    Error(Unserializable(sprintf "the function of app %s could not be loaded on endpoint %s: %s" t.AppName name (Worker.chain e)))
                                | Ok f ->
                                    match (try Ok(Serialization.deserializeArgs opts f.Parameters args) with e -> Error(unwrap e)) with
                                    | Error e ->
                                        Error(Unserializable(sprintf "the arguments of app %s could not be deserialized on endpoint %s: %s" t.AppName name (Worker.chain e)))
                                    | Ok values ->
                                        let invoke (a: obj[]) (token: CancellationToken) =
                                            let a = if f.TakesToken then Array.append a [| box token |] else a
                                            f.Function.DynamicInvoke a
                                        let build = App.functionCall t.AppName f.Function f.TakesToken invoke
                                        let fut = App.submit<obj> dfk t.AppName Parsl.Core.FunctionApp opts' (values |> Array.map Plain) build (fun _ -> None)
                                        Ok(fut.AsTask)
                            | EndpointCommand(cmd, out, err, wall, outputs) ->
                                let std (s: WireStream option) = s |> Option.map (fun s -> if s.Truncate then Truncate s.Path else Append s.Path)
                                let build =
                                    fun (_: TaskId) (_: obj[]) ->
                                        Shell
                                            { AppName = t.AppName
                                              BuildCommand = fun () -> cmd
                                              Stdout = std out
                                              Stderr = std err
                                              Walltime = (if wall >= 0L then Some(TimeSpan.FromMilliseconds(float wall)) else None)
                                              Outputs = outputs }
                                let fut = App.submit<int> dfk t.AppName Parsl.Core.ShellApp { opts' with Outputs = outputs } [||] build (fun _ -> None)
                                Ok(fut.AsTask)
                        with e -> Error(failure e)
                    match started with
                    | Error outcome -> post outcome
                    | Ok running ->
                        running.ContinueWith(
                            (fun (done': Task) ->
                                if done'.IsFaulted then post (failure done'.Exception)
                                elif done'.IsCanceled then post (Raised("System.OperationCanceledException", "the try was cancelled on the endpoint", "", []))
                                else
                                    let v = TaskResults.value done'
                                    match (try Ok(Serialization.serialize opts ("the result of app " + t.AppName) v) with e -> Error e) with
                                    | Ok b -> post (Value b)
                                    | Error e -> post (Unserializable e.Message)),
                            TaskContinuationOptions.ExecuteSynchronously)
                        |> ignore

            let handle (d: Delivery) : Task =
                let m = d.Message
                let replyTo = m.ReplyTo
                let validReply = replyTo.StartsWith "parsl.tg." && replyTo.EndsWith ".results"
                let header k = match m.Headers.TryGetValue k with | true, v -> v | _ -> null
                if not validReply then
                    log.Warning("endpoint {Name}: a message without a task-group reply queue was dropped", name)
                    d.Ack()
                // The token first: nothing a peer sends is read further until it proves it may run code here.
                elif not (config.Tokens |> List.exists (fun t -> EndpointWire.tokensEqual t (header EndpointWire.TokenHeader))) then
                    log.Warning("endpoint {Name}: refused a message with a wrong token (reply queue {Queue})", name, replyTo)
                    reply replyTo d (ToClient.Refused((if m.Kind = EndpointWire.HelloKind then "hello" else m.MessageId), RefusalKind.BadToken, "the token is not one this endpoint accepts; use a token from the endpoint's config (tokens)"))
                    Task.CompletedTask
                elif header EndpointWire.ProtocolHeader <> string EndpointWire.Version then
                    let theirs = header EndpointWire.ProtocolHeader
                    let reason =
                        sprintf "the client speaks endpoint protocol %s (Parsl.NET %s) and this endpoint speaks %d (Parsl.NET %s); install the same Parsl.NET version on both sides"
                            (if isNull theirs then "unknown" else theirs) (header EndpointWire.ParslVersionHeader) EndpointWire.Version (Protocol.parslVersion ())
                    reply replyTo d (ToClient.Refused((if m.Kind = EndpointWire.HelloKind then "hello" else m.MessageId), RefusalKind.BadVersion, reason))
                    Task.CompletedTask
                elif m.Kind = EndpointWire.HelloKind then
                    reply replyTo d (Welcome(name, EndpointWire.Version, Protocol.parslVersion (), engineName))
                    Task.CompletedTask
                else
                    match (try Ok(EndpointWire.decodeBatch m.Body) with e -> Error e.Message) with
                    | Error why ->
                        reply replyTo d (ToClient.Refused(m.MessageId, RefusalKind.Malformed, why))
                        Task.CompletedTask
                    | Ok(defs, asms, tasks) ->
                        // What a client sends is kept only when its content has the hash it claims.
                        for h, b in defs do
                            if sha256 b = h then definitions[h] <- b
                        for h, b in asms do
                            if sha256 b = h then
                                let p = Path.Combine(cacheDir, h + ".dll")
                                if not (File.Exists p) then
                                    let aside = p + "." + string Environment.ProcessId + ".tmp"
                                    File.WriteAllBytes(aside, b)
                                    File.Move(aside, p, true)
                        let missing =
                            tasks
                            |> List.collect (fun t ->
                                match t with
                                | Ok { Body = EndpointCall(h, _) } -> missingAssemblies h
                                | _ -> [])
                            |> List.distinct
                        if not missing.IsEmpty then
                            reply replyTo d (NeedAssemblies(m.MessageId, missing))
                        else
                            let producing = tasks |> List.filter (function Error(None, _) -> false | _ -> true)
                            let batch = { Delivery = d; Remaining = producing.Length }
                            if producing.IsEmpty then d.Ack() |> ignore
                            for t in tasks do
                                match t with
                                | Ok t -> runTask replyTo batch t
                                | Error(Some key, why) ->
                                    outbox.Writer.TryWrite(Result(replyTo, tokenOf d, { Key = key; Outcome = Unserializable(sprintf "endpoint %s could not read this task: %s" name why) }, batch)) |> ignore
                                | Error(None, why) ->
                                    log.Warning("endpoint {Name}: a task without a readable key was dropped: {Why}", name, why)
                        Task.CompletedTask

            // The heartbeat: a status file `parsl-endpoint list` reads (when it was written, tries running and done).
            let heartbeatLoop () : Task =
                task {
                    let file = Path.Combine(home, "status.json")
                    let mutable go = true
                    while go do
                        let running = Interlocked.Read &started.contents - Interlocked.Read &ended.contents
                        let text =
                            sprintf "{ \"pid\": %d, \"heartbeat\": \"%s\", \"running\": %d, \"done\": %d, \"connected\": %b }"
                                Environment.ProcessId (DateTime.UtcNow.ToString "o") running (Interlocked.Read &ended.contents) transport.IsOpen
                        try
                            File.WriteAllText(file + ".tmp", text)
                            File.Move(file + ".tmp", file, true)
                        with e -> log.Warning("endpoint {Name}: the status file: {Error}", name, e.Message)
                        try do! Task.Delay(TimeSpan.FromSeconds 5.0, stopping.Token) with :? OperationCanceledException -> go <- false
                }
            let heartbeatTask = Task.Run(fun () -> heartbeatLoop ())
            let outboxTask = Task.Run(fun () -> outboxLoop ())
            let! subscription = transport.ConsumeAsync(EndpointWire.taskQueue name, config.Prefetch, Func<Delivery, Task>(handle), ct)
            log.Information("endpoint {Name}: consuming {Queue} on {Host}:{Port}", name, EndpointWire.taskQueue name, config.Broker.Host, config.Broker.Port)
            let finished = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
            let stop () : Task =
                task {
                    if not stopping.IsCancellationRequested then
                        stopping.Cancel()
                        try do! subscription.DisposeAsync() with _ -> ()
                        let ks = lock kernels (fun () -> List.ofSeq kernels.Values)
                        for k in ks do
                            try do! k.CleanupAsync(ExitMode.Skip) with e -> log.Warning("endpoint {Name}: kernel cleanup: {Error}", name, e.Message)
                        outbox.Writer.TryWrite Finish |> ignore
                        outbox.Writer.TryComplete() |> ignore
                        try do! outboxTask.WaitAsync(TimeSpan.FromSeconds 10.0) with _ -> ()
                        try do! heartbeatTask with _ -> ()
                        do! transport.DisposeAsync()
                        finished.TrySetResult() |> ignore
                    do! finished.Task
                }
            return EndpointDaemonHandle(stop, finished.Task)
        }
