namespace Parsl.Executors

open System
open System.Collections.Concurrent
open System.Collections.Generic
open System.Threading
open System.Threading.Channels
open System.Threading.Tasks
open Parsl
open Parsl.Node
open Parsl.Executors.HighThroughput
open Parsl.Node.HighThroughput
open Parsl.Executors.Endpoint

/// The options of an `EndpointExecutor`.
type EndpointOptions =
    { /// Default "endpoint".
      Label: string
      /// The endpoint's name (as given to `parsl-endpoint configure NAME`). Required.
      Endpoint: string
      /// How to reach the broker. Required.
      Broker: BrokerOptions
      /// A token the endpoint accepts (one of its config's `tokens`). Required.
      Token: string
      /// The task group: results go to this group's durable queue, so a client started again with the same id
      /// gets the results of tries it submitted before it stopped (Globus Compute's `task_group_id`). Default: new.
      TaskGroupId: string
      /// At most this many tries per message to the endpoint. Default 128 (Globus Compute's `batch_size`).
      BatchSize: int
      /// Values for the endpoint's config template, for every try (a try's resource specification key
      /// `user_endpoint_config` adds to or overrides them for that try). Default empty.
      UserEndpointConfig: Map<string, string>
      /// How long to keep trying to reach the broker at start. Default 30 s.
      ConnectTimeout: TimeSpan
      /// How long the broker may stay unreachable while tries are in flight before those tries fail with
      /// `BrokerLost` (as the HTEx fails a manager's tasks after its heartbeat threshold). Without it, a broker that
      /// never comes back leaves the run, and its cleanup, waiting forever. `Timeout.InfiniteTimeSpan` waits
      /// forever. Default 120 s (Parsl's `heartbeat_threshold`).
      BrokerLostTimeout: TimeSpan }

/// Functions over endpoint options.
[<RequireQualifiedAccess>]
module EndpointOptions =
    /// The defaults; `Endpoint`, `Broker` and `Token` must be filled in.
    let defaults () =
        { Label = "endpoint"
          Endpoint = ""
          Broker =
            { Host = "127.0.0.1"
              Port = 5672
              VirtualHost = "/"
              User = ""
              Password = ""
              Tls = false
              CaFile = None
              ServerName = None }
          Token = ""
          TaskGroupId = Guid.NewGuid().ToString("N")
          BatchSize = 128
          UserEndpointConfig = Map.empty
          ConnectTimeout = TimeSpan.FromSeconds 30.0
          BrokerLostTimeout = TimeSpan.FromSeconds 120.0 }

    /// Every problem, each naming its field and the fix.
    let validate (o: EndpointOptions) : ConfigurationError list =
        let f name = "EndpointExecutor." + name
        [ if String.IsNullOrWhiteSpace o.Label then ConfigurationError(f "Label", "is empty; the default is \"endpoint\"")
          if not (EndpointWire.validName o.Endpoint) then
              ConfigurationError(f "Endpoint", sprintf "'%s' is not an endpoint name: use the NAME given to parsl-endpoint configure (letters, digits, '-', '_')" o.Endpoint)
          if not (EndpointWire.validName o.TaskGroupId) then
              ConfigurationError(f "TaskGroupId", sprintf "'%s' is not a task-group id: letters, digits, '-' and '_' only, at most 100" o.TaskGroupId)
          if String.IsNullOrEmpty o.Token then ConfigurationError(f "Token", "is empty; use a token listed in the endpoint's config (tokens)")
          if isNull (box o.Broker) then ConfigurationError(f "Broker", "is missing; give the broker's host, port, user and password")
          else
              if String.IsNullOrWhiteSpace o.Broker.Host then ConfigurationError(f "Broker.Host", "is empty; the default is \"127.0.0.1\"")
              if o.Broker.Port < 1 || o.Broker.Port > 65535 then ConfigurationError(f "Broker.Port", sprintf "%d is not a port (5672 plain, 5671 TLS)" o.Broker.Port)
              if String.IsNullOrEmpty o.Broker.User then ConfigurationError(f "Broker.User", "is empty; give the broker user this client connects as")
              match o.Broker.CaFile with
              | Some p when not (IO.File.Exists p) -> ConfigurationError(f "Broker.CaFile", sprintf "%s does not exist; give the PEM file of the broker's certificate authority" p)
              | Some _ when not o.Broker.Tls -> ConfigurationError(f "Broker.CaFile", "is set but Broker.Tls is false; turn TLS on or drop the CA file")
              | _ -> ()
          if o.BatchSize < 1 then ConfigurationError(f "BatchSize", sprintf "%d must be at least 1; the default is 128" o.BatchSize)
          if o.ConnectTimeout <= TimeSpan.Zero then ConfigurationError(f "ConnectTimeout", "must be positive; the default is 30 s")
          if o.BrokerLostTimeout <= TimeSpan.Zero && o.BrokerLostTimeout <> Timeout.InfiniteTimeSpan then
              ConfigurationError(f "BrokerLostTimeout", "must be positive, or infinite to wait for the broker forever; the default is 120 s") ]

/// The broker stayed unreachable for `BrokerLostTimeout` while this try was in flight: the try fails here (the
/// endpoint may still run it; a result that arrives later is dropped as a duplicate).
type BrokerLost(label: string, endpoint: string, broker: string, waited: TimeSpan) =
    inherit ExecutorError(
        label,
        sprintf "the broker %s was unreachable for %g s with this try in flight on endpoint '%s'; the try was failed. Check that the broker is running, or raise EndpointExecutor.BrokerLostTimeout to wait longer"
            broker waited.TotalSeconds endpoint,
        null)
    /// The endpoint the try was sent to.
    member _.Endpoint = endpoint
    /// How long the broker had been unreachable.
    member _.Waited = waited

/// A result of the task group that no try of this executor is waiting for: a try submitted by an earlier client
/// with the same task-group id (Globus Compute's `reload_tasks`).
[<Sealed; AllowNullLiteral>]
type EndpointResult internal (taskId: int, tryId: int, value: obj, error: exn) =
    /// The submitting client's task id.
    member _.TaskId = taskId
    /// The try.
    member _.TryId = tryId
    /// The result, when the try succeeded.
    member _.Value = value
    /// The exception, when the try failed; null otherwise.
    member _.Error = error

type private Pending =
    { Key: int64
      TaskId: TaskId
      TryId: TryId
      Task: EndpointTask
      Definition: (string * byte[]) option }

type private SenderRequest =
    | Send of Pending
    | Resend of batchId: string * hashes: string list
    | Hello

type private SentBatch =
    { Tasks: Pending list
      mutable Remaining: int }

/// Runs tries on a remote endpoint daemon through a broker (Globus Compute's `Executor`, self-hosted).
///
///   kernel ──Submit──▶ executor: serialize once ──▶ sender loop ──batches (≤ BatchSize, token in headers)──▶
///       broker: exchange parsl.ep.NAME ──▶ durable queue parsl.ep.NAME.tasks ──▶ endpoint daemon (its own kernel)
///   kernel ◀──TryDone/TryFailed── result handler ◀── durable queue parsl.tg.GROUP.results ◀──results───┘
///
/// Tasks and results are persistent messages on durable queues; the endpoint acknowledges a batch only after its
/// results are published, and this executor acknowledges results only after handing them to the kernel: either
/// side may die or the broker restart, and every try still ends once as far as this executor reports. Function
/// apps travel as on the HTEx (a reference to the method, assemblies fetched by hash); shell apps as command lines.
/// Resource specification: any key (the endpoint's executor checks them), plus `user_endpoint_config`.
[<Sealed>]
type EndpointExecutor internal (options: EndpointOptions, protocol: int) =
    let label = options.Label
    let keyBatch = ConcurrentDictionary<int64, string>()
    // Tries this executor reported (8 bytes each): a later result for one is a duplicate, not an earlier client's.
    let reported = ConcurrentDictionary<int64, byte>()
    let batches = ConcurrentDictionary<string, SentBatch>()

    /// A try has ended: it is remembered as reported, and its batch forgets it (the batch goes with its last try).
    let settle (key: int64) =
        reported[key] <- 0uy
        match keyBatch.TryRemove key with
        | true, b ->
            match batches.TryGetValue b with
            | true, sent -> if Interlocked.Decrement &sent.Remaining <= 0 then batches.TryRemove b |> ignore
            | _ -> ()
        | _ -> ()

    // Each try's app name rides along (for logs).
    let inflight = InFlight<string>(settle)
    let definitions = ConcurrentDictionary<Delegate, string * byte[]>(HashIdentity.Reference)
    let assemblyPaths = ConcurrentDictionary<string, string>()
    let hashes = ConcurrentDictionary<string, string>()
    let shipped = ConcurrentDictionary<string, bool>()
    let unclaimed = Channel.CreateUnbounded<EndpointResult>()
    let requests = Channel.CreateUnbounded<SenderRequest>(UnboundedChannelOptions(SingleReader = true))
    let welcome = TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously)
    let stop = new CancellationTokenSource()
    let idle = obj ()
    let mutable duplicates = 0
    // Tries handed to the sender and not yet confirmed by the broker, and who waits for that to reach 0.
    let mutable unpublished = 0
    let mutable publishedWaiters: TaskCompletionSource<unit> list = []
    let mutable ctx = Unchecked.defaultof<ExecutorContext>
    let mutable transport: IEndpointTransport = Unchecked.defaultof<_>
    let mutable subscription: IAsyncDisposable = null
    let mutable sender: Task = Task.CompletedTask
    let mutable watchdog: Task = Task.CompletedTask
    let opts = lazy (Serialization.options (fun n -> shipped.ContainsKey n))
    let resultQueue = EndpointWire.resultQueue options.TaskGroupId

    /// Reports a try once; a second outcome for the same try (a re-run after a crash) is dropped (false).
    let report (key: int64) (outcome: Result<obj, exn>) = inflight.Report(ctx, key, outcome)

    let rebuild (typeName: string) (message: string) (stack: string) (data: string list) : exn =
        match typeName, data with
        | "Parsl.BashExitFailure", [ app; code ] -> BashExitFailure(app, int code)
        | "Parsl.AppTimeout", _ -> AppTimeout(message)
        | "Parsl.MissingOutputs", outputs -> MissingOutputs("the files were not created", outputs)
        | "Parsl.BadStdStreamFile", _ -> BadStdStreamFile(message, null)
        | "Parsl.SerializationError", _ -> SerializationError(message, null)
        | "System.OperationCanceledException", _ -> OperationCanceledException(message)
        | "Parsl.Executors.Endpoint.UserEndpointConfigRefused", _ -> UserEndpointConfigRefused(options.Endpoint, message)
        | _ -> RemoteException(typeName, message, stack)

    let outcomeOf (o: WireOutcome) : Result<obj, exn> =
        match o with
        | Value bytes ->
            try Ok(Serialization.deserialize opts.Value bytes)
            with ex -> Error(SerializationError(sprintf "the result could not be deserialized on the client: %s" ex.Message, ex) :> exn)
        | Raised(t, m, st, data) -> Error(rebuild t m st data)
        | Unserializable m -> Error(SerializationError(m, null) :> exn)
        | WorkerDied(w, h) -> Error(WorkerLost(w, h) :> exn)

    let refusal (kind: RefusalKind) (reason: string) : exn =
        match kind with
        | RefusalKind.BadToken -> EndpointAccessDenied(options.Endpoint, reason, null)
        | RefusalKind.BadVersion -> VersionMismatch(sprintf "endpoint '%s': %s" options.Endpoint reason)
        | RefusalKind.BadUserConfig -> UserEndpointConfigRefused(options.Endpoint, reason)
        | _ -> SerializationError(sprintf "endpoint '%s' could not read the batch: %s" options.Endpoint reason, null)

    let failBatch (batchId: string) (e: exn) =
        match batches.TryRemove batchId with
        | true, b ->
            for p in b.Tasks do
                report p.Key (Error e) |> ignore
        | _ -> ()

    let onMessage (d: Delivery) : Task =
        task {
            let token = match d.Message.Headers.TryGetValue EndpointWire.TokenHeader with | true, t -> t | _ -> null
            // Only replies that carry this client's token are read: the endpoint echoes the token it checked.
            if not (EndpointWire.tokensEqual token options.Token) then
                ctx.Log.Warning("{Label}: a message on {Queue} without this client's token was dropped unread", label, resultQueue)
            else
            match (try Ok(EndpointWire.decodeToClient d.Message.Body) with e -> Error e) with
            | Error e -> ctx.Log.Warning("{Label}: an unreadable message on {Queue} was dropped: {Error}", label, resultQueue, e.Message)
            | Ok(Welcome(name, p, version, engine)) ->
                ctx.Log.Information("{Label}: endpoint {Name} (protocol {P}, Parsl.NET {V}) runs tasks on {Engine}", label, name, p, version, engine)
                welcome.TrySetResult engine |> ignore
            | Ok(Results rs) ->
                for r in rs do
                    let outcome = outcomeOf r.Outcome
                    if not (report r.Key outcome) then
                        if reported.ContainsKey r.Key then
                            // A re-run's second result (the endpoint died after publishing, before acknowledging).
                            Interlocked.Increment &duplicates |> ignore
                        else
                            // A try of an earlier client of this task group.
                            let tid, tr = Protocol.ofKey r.Key
                            let value, error = match outcome with Ok v -> v, null | Error e -> null, e
                            unclaimed.Writer.TryWrite(EndpointResult(tid, tr, value, error)) |> ignore
            | Ok(Refused(batch, kind, reason)) ->
                if batch = "hello" then welcome.TrySetException(refusal kind reason) |> ignore
                else failBatch batch (refusal kind reason)
            | Ok(NeedAssemblies(batch, hs)) -> requests.Writer.TryWrite(Resend(batch, hs)) |> ignore
            // Acknowledged once handed to the kernel: a client killed before this gets the result again next time.
            do! d.Ack()
        }

    let headers () =
        let h = Dictionary<string, string>()
        h[EndpointWire.ProtocolHeader] <- string protocol
        h[EndpointWire.ParslVersionHeader] <- Protocol.parslVersion ()
        h[EndpointWire.TokenHeader] <- options.Token
        h :> IReadOnlyDictionary<_, _>

    /// Publishes until the broker has it: through a broker restart it waits for the connection to come back;
    /// a refusal (no permission, no such endpoint) is returned for the caller to fail the batch with.
    let publish (m: TransportMessage) : Task<exn option> =
        task {
            let mutable result = None
            let mutable go = true
            while go do
                try
                    do! transport.SendToEndpointAsync(options.Endpoint, m, stop.Token)
                    go <- false
                with
                | :? BrokerRefused as e ->
                    let e: exn =
                        if e.Code = 404 then
                            ExecutorError(label, sprintf "endpoint '%s' is not known to the broker (its exchange %s does not exist): start it once with parsl-endpoint start %s" options.Endpoint (EndpointWire.endpointExchange options.Endpoint) options.Endpoint, e)
                        else EndpointAccessDenied(options.Endpoint, e.Message, e)
                    result <- Some e
                    go <- false
                | :? OperationCanceledException when stop.IsCancellationRequested -> go <- false
                | e ->
                    ctx.Log.Warning("{Label}: publishing to endpoint {Endpoint} failed ({Error}); retrying", label, options.Endpoint, e.Message)
                    try do! Task.Delay(500, stop.Token) with _ -> go <- false
            return result
        }

    let assemblyBytes (hs: string list) =
        [ for h in hs do
              match assemblyPaths.TryGetValue h with
              | true, p -> h, IO.File.ReadAllBytes p
              | _ -> () ]

    let published (n: int) =
        if Interlocked.Add(&unpublished, -n) = 0 then
            let ws = lock idle (fun () -> let w = publishedWaiters in publishedWaiters <- []; w)
            for w in ws do
                w.TrySetResult() |> ignore

    let sendBatch (batchId: string) (tasks: Pending list) (asms: (string * byte[]) list) =
        task {
            let defs = tasks |> List.choose (fun p -> p.Definition) |> List.distinctBy fst
            let body = EndpointWire.encodeBatch { Definitions = defs; Assemblies = asms; Tasks = tasks |> List.map (fun p -> p.Task) }
            let m = { Kind = EndpointWire.TasksKind; MessageId = batchId; ReplyTo = resultQueue; Headers = headers (); Body = ReadOnlyMemory body }
            match! publish m with
            | Some e -> failBatch batchId e
            | None -> ()
        }

    let senderLoop () : Task =
        task {
            let reader = requests.Reader
            let mutable go = true
            while go do
                let! more = reader.WaitToReadAsync()
                if not more then go <- false
                else
                    let fresh = List<Pending>()
                    let mutable r = Unchecked.defaultof<SenderRequest>
                    while fresh.Count < options.BatchSize && reader.TryRead(&r) do
                        match r with
                        | Send p -> fresh.Add p
                        | Hello ->
                            let m = { Kind = EndpointWire.HelloKind; MessageId = "hello"; ReplyTo = resultQueue; Headers = headers (); Body = ReadOnlyMemory [||] }
                            match! publish m with
                            | Some e -> welcome.TrySetException e |> ignore
                            | None -> ()
                        | Resend(batch, hs) ->
                            match batches.TryGetValue batch with
                            | true, b ->
                                let live = b.Tasks |> List.filter (fun p -> inflight.Contains p.Key)
                                if not live.IsEmpty then do! sendBatch batch live (assemblyBytes hs)
                            | _ -> ()
                    if fresh.Count > 0 then
                        let batchId = Guid.NewGuid().ToString("N")
                        let tasks = List.ofSeq fresh
                        batches[batchId] <- { Tasks = tasks; Remaining = tasks.Length }
                        for p in tasks do
                            keyBatch[p.Key] <- batchId
                        do! sendBatch batchId tasks []
                        published tasks.Length
        }

    /// Fails every try in flight once the broker has been unreachable for `BrokerLostTimeout`: the connection's own
    /// recovery keeps trying meanwhile, and a broker that comes back in time loses nothing. Looks a few times per
    /// timeout (at most once a second); ends with the executor.
    let watchBroker () : Task =
        task {
            let limit = options.BrokerLostTimeout
            let period = TimeSpan.FromTicks(max (TimeSpan.FromMilliseconds 50.0).Ticks (min (TimeSpan.FromSeconds 1.0).Ticks (limit.Ticks / 4L)))
            let clock = Diagnostics.Stopwatch()
            try
                while not stop.IsCancellationRequested do
                    do! Task.Delay(period, stop.Token)
                    if transport.IsOpen || inflight.IsEmpty then clock.Reset()
                    elif not clock.IsRunning then clock.Start()
                    elif clock.Elapsed >= limit then
                        let where = sprintf "%s:%d" options.Broker.Host options.Broker.Port
                        let lost = inflight.Keys
                        ctx.Log.Error(
                            "{Label}: the broker {Broker} was unreachable for {Seconds} s; failing the {Count} tries in flight",
                            label, where, clock.Elapsed.TotalSeconds, lost.Length)
                        let e = BrokerLost(label, options.Endpoint, where, clock.Elapsed)
                        for k in lost do
                            report k (Error e) |> ignore
                        clock.Reset()
            with :? OperationCanceledException -> ()
        }

    let assemblyRefs () =
        AppDomain.CurrentDomain.GetAssemblies()
        |> Seq.filter (fun a -> not (Serialization.isProvided a))
        |> Seq.map (fun a ->
            let h = hashes.GetOrAdd(a.Location, Serialization.hashFile)
            shipped[a.GetName().Name] <- true
            assemblyPaths[h] <- a.Location
            { FullName = a.FullName; Path = a.Location; Hash = h })
        |> List.ofSeq

    let definitionOf (appName: string) (f: Delegate) =
        definitions.GetOrAdd(
            f,
            fun f ->
                if HighThroughputExecutor.CompiledInMemory 3 (box f) then
                    raise (
                        SerializationError(
                            sprintf "app %s cannot run on EndpointExecutor '%s': its function was compiled in memory (a dotnet fsi script), so the endpoint cannot load it; define it in a compiled project, or make it a shell app" appName label,
                            null))
                let def = Serialization.encodeDefinition opts.Value (assemblyRefs ()) f
                Convert.ToHexString(Security.Cryptography.SHA256.HashData def), def)

    let text (v: obj) =
        match v with
        | null -> ""
        | :? IFormattable as f -> f.ToString(null, Globalization.CultureInfo.InvariantCulture)
        | v -> string v

    let userConfigOf (spec: IReadOnlyDictionary<string, obj>) : (string * string) list =
        let extra =
            match spec.TryGetValue "user_endpoint_config" with
            | true, (:? IEnumerable<KeyValuePair<string, string>> as kvs) -> [ for KeyValue(k, v) in kvs -> k, v ]
            | true, (:? IEnumerable<KeyValuePair<string, obj>> as kvs) -> [ for KeyValue(k, v) in kvs -> k, text v ]
            | _ -> []
        extra |> List.fold (fun (m: Map<string, string>) (k, v) -> Map.add k v m) options.UserEndpointConfig |> Map.toList

    let stream (s: StdStream option) =
        s |> Option.map (fun s -> match s with Append p -> { WireStream.Path = p; Truncate = false } | Truncate p -> { Path = p; Truncate = true })

    let encode (t: ExecTask) : EndpointTask * (string * byte[]) option =
        let key = Protocol.key t.Id.Value t.Try.Value
        let resources = [ for KeyValue(k, v) in t.Resources do if k <> "user_endpoint_config" then k, text v ]
        let uec = userConfigOf t.Resources
        match t.Body with
        | Function call ->
            let args =
                if call.TakesCancellation && call.Args.Length = call.Function.Method.GetParameters().Length then
                    Array.sub call.Args 0 (call.Args.Length - 1)
                else call.Args
            let hash, def = definitionOf call.AppName call.Function
            { Key = key; AppName = call.AppName; Body = EndpointCall(hash, Serialization.serializeArgs opts.Value args); Resources = resources; UserConfig = uec },
            Some(hash, def)
        | Shell call ->
            let cmd = call.BuildCommand()
            if String.IsNullOrWhiteSpace cmd then raise (BashAppNoReturn call.AppName)
            let wall = match call.Walltime with Some w -> int64 w.TotalMilliseconds | None -> -1L
            { Key = key; AppName = call.AppName; Body = EndpointCommand(cmd, stream call.Stdout, stream call.Stderr, wall, call.Outputs); Resources = resources; UserConfig = uec },
            None

    new(options: EndpointOptions) = EndpointExecutor(options, EndpointWire.Version)

    /// The options.
    member _.Options = options

    /// The task group's id (give it to a later client to collect this one's results).
    member _.TaskGroupId = options.TaskGroupId

    /// Tries submitted and not yet ended.
    member _.Outstanding = inflight.Count

    /// Results received for tries that had already ended (re-runs after an endpoint crash), dropped.
    member _.DuplicatesDropped = Volatile.Read &duplicates

    /// Completes with the endpoint's engine description once the endpoint answered this client's hello (its
    /// version checked); fails with `VersionMismatch` or `EndpointAccessDenied` when it refused.
    member _.Connected: Task<string> = welcome.Task

    /// Completes once every try submitted so far is with the broker (confirmed), or was refused.
    member _.AllPublishedAsync() : Task =
        let w = TaskCompletionSource<unit>(TaskCreationOptions.RunContinuationsAsynchronously)
        lock idle (fun () -> publishedWaiters <- w :: publishedWaiters)
        if Volatile.Read &unpublished = 0 then published 0
        w.Task :> Task

    /// The next result of this task group that no try of this executor waits for: a try an earlier client with
    /// the same `TaskGroupId` submitted (Globus Compute's `reload_tasks`).
    member _.ReceiveUnclaimedAsync([<Runtime.InteropServices.Optional>] cancellationToken: CancellationToken) : Task<EndpointResult> =
        unclaimed.Reader.ReadAsync(cancellationToken).AsTask()

    interface IExecutor with
        member _.Label = label
        member _.Validate() = EndpointOptions.validate options

        member _.CheckResources spec =
            match spec.TryGetValue "user_endpoint_config" with
            | true, v when not (isNull v)
                           && not (v :? IEnumerable<KeyValuePair<string, string>>)
                           && not (v :? IEnumerable<KeyValuePair<string, obj>>) ->
                Some(
                    InvalidResourceSpecification(
                        [ "user_endpoint_config" ],
                        sprintf "EndpointExecutor %s: user_endpoint_config must be a dictionary of string keys (got %s)" label (v.GetType().Name))
                    :> exn)
            | _ -> None

        member this.StartAsync(context, ct) =
            task {
                ctx <- context
                let! t = RabbitMqTransport.ConnectAsync(options.Broker, sprintf "parsl-client %s/%s" label options.TaskGroupId, options.ConnectTimeout, ct)
                transport <- t
                do! transport.DeclareResultQueueAsync(resultQueue, ct)
                let! sub = transport.ConsumeAsync(resultQueue, 64, Func<Delivery, Task>(onMessage), ct)
                subscription <- sub
                sender <- Task.Run(fun () -> senderLoop ())
                if options.BrokerLostTimeout <> Timeout.InfiniteTimeSpan then watchdog <- Task.Run(fun () -> watchBroker ())
                requests.Writer.TryWrite Hello |> ignore
                ignore this
            }
            :> Task

        member _.Submit t =
            if isNull (box transport) then ctx.Report(TryFailed(t.Id, t.Try, ExecutorError(label, "the executor was not started", null)))
            else
                match (try Ok(encode t) with e -> Error e) with
                | Error e -> ctx.Report(TryFailed(t.Id, t.Try, e))
                | Ok(wire, def) ->
                    inflight.Add(wire.Key, t.Id, t.Try, wire.AppName)
                    Interlocked.Increment &unpublished |> ignore
                    requests.Writer.TryWrite(Send { Key = wire.Key; TaskId = t.Id; TryId = t.Try; Task = wire; Definition = def }) |> ignore

        member _.Cancel(id, tryId) =
            // The endpoint may already run it: the try ends here, and its result, if one comes, is dropped.
            report (Protocol.key id.Value tryId.Value) (Error(OperationCanceledException "cancelled")) |> ignore

        member _.ShutdownAsync(wait) =
            task {
                if wait then do! inflight.WhenEmpty()
                requests.Writer.TryComplete() |> ignore
                stop.Cancel()
                try do! sender with _ -> ()
                do! watchdog
                if not (isNull subscription) then
                    try do! subscription.DisposeAsync() with _ -> ()
                if not (isNull (box transport)) then
                    do! transport.DisposeAsync()
                unclaimed.Writer.TryComplete() |> ignore
                for KeyValue(k, struct (id, _, _)) in inflight.ToArray() do
                    report k (Error(KernelShutdownError id)) |> ignore
            }
            :> Task
