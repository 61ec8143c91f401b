namespace Parsl.Executors

open System
open System.Collections.Concurrent
open System.Collections.Generic
open System.IO
open System.Reflection
open System.Threading
open System.Threading.Channels
open System.Threading.Tasks
open NetMQ
open Parsl
open Parsl.Executors.HighThroughput
open Parsl.Node.HighThroughput
open Parsl.Providers
open Parsl.Node

/// Runs tries on worker processes started in blocks by a provider (Parsl's `HighThroughputExecutor`).
///
///   kernel ──Submit──▶ executor: serialize once ──▶ interchange (ROUTER, this process)
///                                                     │ batches ≤ free capacity + prefetch, by priority
///                                                     ▼
///   block (provider + launcher) ──▶ manager (Parsl.Workers, one per node, DEALER) ──▶ N worker processes
///   kernel ◀──TryDone/TryFailed── result loop ◀── result batches ◀──────────────────────────┘
///
/// Function apps travel as references (assembly, type, method, closure fields), their arguments and
/// results as MessagePack; shell apps as their command line. Accepts the resource key `priority`.
[<Sealed>]
type HighThroughputExecutor(options: HtexOptions) =
    let label = options.Label
    // Written by the kernel's thread (Submit) and the interchange's readers (results) at once, a try each: 64 lock
    // stripes from the start, so the two rarely want the same one. With the default (one per core, 2 here, more only as
    // the table grows) the kernel's thread spent a large share of the no-op row waiting on a stripe a reader held
    // (profile: Monitor.Enter in TryAddInternal under Submit).
    let inflight = ConcurrentDictionary<int64, struct (TaskId * TryId)>(64, 1024)
    let functionIds = ConcurrentDictionary<Delegate, int>(HashIdentity.Reference)
    let hashes = ConcurrentDictionary<string, string>()
    let shipped = ConcurrentDictionary<string, bool>()
    let mutable nextFunction = 0
    let mutable sequence = 0L
    let mutable ctx = Unchecked.defaultof<ExecutorContext>
    let mutable interchange: InterchangeHandle option = None
    let mutable poller: BlockPollerHandle option = None
    // The executor's bad-state error (null: none). Set once, from whichever thread reports the verdict, and read by the
    // kernel's thread (`Submit`) and the block poller: written with a compare-and-swap, read volatile.
    let mutable bad: exn = null
    let badState () = Option.ofObj (Volatile.Read(&bad))
    let mutable launch: string -> string = fun _ -> ""
    // Monitoring's radio directory and sampling interval, when resource monitoring is on.
    let mutable radio: (string * TimeSpan) option = None
    let mutable certDir: string option = None
    let mutable localSocketName: string option = None
    // Set by the kernel's first `Flush`: from then on `Submit` only queues (the kernel flushes after each batch).
    let mutable flushed = false
    let idle = obj ()
    let mutable idleWaiters: TaskCompletionSource<unit> list = []
    let opts = lazy (Serialization.options (fun n -> shipped.ContainsKey n))

    /// Hands a request from `Submit` to the interchange: queued for the kernel's next flush once the kernel is known
    /// to flush (it is on the kernel's thread), else posted (which wakes the interchange).
    let submitRequest (r: InterchangeRequest) =
        interchange |> Option.iter (fun ic -> if flushed then ic.Queue r else ic.Post r)

    let quote (s: string) =
        if s |> Seq.forall (fun c -> Char.IsLetterOrDigit c || "/._-:=,+@%".Contains c) && s <> "" then s
        else "'" + s.Replace("'", "'\\''") + "'"

    let finished () =
        if inflight.IsEmpty then
            let ws = lock idle (fun () -> let w = idleWaiters in idleWaiters <- []; w)
            for w in ws do
                w.TrySetResult() |> ignore

    let report (key: int64) (outcome: Result<obj, exn>) =
        match inflight.TryRemove key with
        | true, struct (id, tryId) ->
            match outcome with
            | Ok v -> ctx.Report(TryDone(id, tryId, v))
            | Error e -> ctx.Report(TryFailed(id, tryId, e))
            finished ()
        | _ -> ()

    let rebuild (typeName: string) (message: string) (stack: string) (data: string list) : exn =
        match typeName, data with
        | "Parsl.BashExitFailure", [ app; code ] -> BashExitFailure(app, int code)
        | "Parsl.AppTimeout", _ -> AppTimeout(message)
        | "Parsl.BadStateException", _ -> BadStateException(label, message, null)
        | "Parsl.MissingOutputs", outputs -> MissingOutputs("the files were not created", outputs)
        | "Parsl.BadStdStreamFile", _ -> BadStdStreamFile(message, null)
        // MPI: a task the manager's node scheduler refused (more nodes than the block has).
        | "Parsl.InvalidResourceSpecification", keys -> InvalidResourceSpecification(keys, message)
        | "System.OperationCanceledException", _ -> OperationCanceledException(message)
        | _ -> RemoteException(typeName, message, stack)

    let handle (e: InterchangeEvent) =
        match e with
        | ResultsArrived rs ->
            for r in rs do
                let outcome =
                    match r.Outcome with
                    | Value bytes ->
                        try
                            Ok(Serialization.deserialize opts.Value bytes)
                        with ex ->
                            Error(SerializationError(sprintf "the result could not be deserialized on the client: %s" ex.Message, ex) :> exn)
                    | Raised(t, m, st, data) -> Error(rebuild t m st data)
                    | Unserializable m -> Error(SerializationError(m, null) :> exn)
                    | WorkerDied(w, h) -> Error(WorkerLost(w, h) :> exn)
                report r.Key outcome
        | TryLost(k, ex) -> report k (Error ex)
        | ManagerRefused(blockId, ex) ->
            ctx.Log.Error(ex, "{Label}: a manager of block {Block} was refused", label, blockId)
            poller |> Option.iter (fun p -> p.Post(FailBlock(blockId, ex)))
        | Fatal ex ->
            if isNull (Interlocked.CompareExchange(&bad, ex, null)) then
                ctx.Log.Error(ex, "{Label}: bad state", label)
                interchange |> Option.iter (fun i -> i.Post(FailAll(fun _ -> ex)))

    // Events are handled on the interchange's thread: one thread hop less per result, and the
    // interchange itself still only forwards bytes (decoding the results is this executor's code).
    let setBad (ex: exn) =
        interchange |> Option.iter (fun i -> i.Post(Raise(Fatal ex)))

    let assemblyRefs () =
        AppDomain.CurrentDomain.GetAssemblies()
        |> Seq.filter (fun a -> not (Serialization.isProvided a))
        |> Seq.map (fun a ->
            let h = hashes.GetOrAdd(a.Location, Serialization.hashFile)
            shipped[a.GetName().Name] <- true
            submitRequest (AddAssembly(h, a.Location))
            { FullName = a.FullName; Path = a.Location; Hash = h })
        |> List.ofSeq

    let functionId (appName: string) (f: Delegate) =
        match functionIds.TryGetValue f with
        | true, id -> id
        | _ ->
            // Checked before anything is hashed or sent: scripts are the common case, and they load many
            // assemblies (the compiler's among them) that would be hashed for nothing.
            if HighThroughputExecutor.CompiledInMemory 3 (box f) then
                raise (
                    SerializationError(
                        sprintf
                            "app %s cannot run on HighThroughputExecutor '%s': its function was compiled in memory (a dotnet fsi script, F# Interactive or Reflection.Emit), so worker processes cannot load it; define the function in a compiled project (a .dll the script references with #r), or run this app on a ThreadPoolExecutor (AppOptions.Executors). Shell apps from scripts do run here: their command lines are built in this process"
                            appName label,
                        null
                    )
                )
            let def = Serialization.encodeDefinition opts.Value (assemblyRefs ()) f
            lock functionIds (fun () ->
                match functionIds.TryGetValue f with
                | true, id -> id
                | _ ->
                    let id = Interlocked.Increment &nextFunction
                    submitRequest (Define(id, def))
                    functionIds[f] <- id
                    id)

    let stream (s: StdStream option) =
        s |> Option.map (fun s -> match s with Append p -> { WireStream.Path = p; Truncate = false } | Truncate p -> { Path = p; Truncate = true })

    let encode (t: ExecTask) : WireBody * string =
        match t.Body with
        | Function call ->
            let args =
                if call.TakesCancellation && call.Args.Length = call.Function.Method.GetParameters().Length then
                    Array.sub call.Args 0 (call.Args.Length - 1)
                else call.Args
            let fid = functionId call.AppName call.Function
            let wall = match call.Walltime with Some w -> max 1L (int64 w.TotalMilliseconds) | None -> -1L
            Call(fid, null, Serialization.serializeArgs opts.Value args, wall), call.AppName
        | Shell call ->
            let cmd = call.BuildCommand()
            if String.IsNullOrWhiteSpace cmd then raise (BashAppNoReturn call.AppName)
            let wall = match call.Walltime with Some w -> int64 w.TotalMilliseconds | None -> -1L
            Command(cmd, stream call.Stdout, stream call.Stderr, wall, call.Outputs), call.AppName

    /// Whether the function, or a function it wraps (F# apps wrap the user's closure in a delegate of Parsl's),
    /// was compiled into a dynamic assembly. Only closures are followed, to a small depth: captured data is
    /// not walked.
    static member internal CompiledInMemory (depth: int) (o: obj) : bool =
        let inMemory (a: Reflection.Assembly) = a.IsDynamic || String.IsNullOrEmpty a.Location
        match o with
        | null -> false
        | :? Delegate as d -> inMemory d.Method.Module.Assembly || (depth > 0 && HighThroughputExecutor.CompiledInMemory (depth - 1) d.Target)
        | _ ->
            let t = o.GetType()
            inMemory t.Assembly
            || (depth > 0
                && not t.IsPrimitive
                && not t.IsArray
                && t.Assembly <> typeof<obj>.Assembly
                && (t.IsDefined(typeof<Runtime.CompilerServices.CompilerGeneratedAttribute>, false)
                    || t.Name.Contains '@'
                    || t.Name.Contains "<>"
                    || (not (isNull t.BaseType) && t.BaseType.IsGenericType
                        && t.BaseType.GetGenericTypeDefinition() = typedefof<FSharpFunc<int, int>>))
                && t.GetFields(Reflection.BindingFlags.Instance ||| Reflection.BindingFlags.Public ||| Reflection.BindingFlags.NonPublic)
                   |> Array.exists (fun field -> HighThroughputExecutor.CompiledInMemory (depth - 1) (field.GetValue o)))

    /// A port in [lo, hi) that nothing listens on at `address` now (probed with a plain socket, which is immediate;
    /// the interchange binds it moments later). Raises naming `WorkerPortRange` when there is none.
    static member internal FreePort (address: string) (lo: int, hi: int) : int =
        let ip =
            match Net.IPAddress.TryParse address with
            | true, ip -> ip
            | _ when address = "*" || address = "0.0.0.0" -> Net.IPAddress.Any
            | _ -> (try Net.Dns.GetHostAddresses(address) |> Array.find (fun a -> a.AddressFamily = Net.Sockets.AddressFamily.InterNetwork) with _ -> Net.IPAddress.Any)
        let start = Random.Shared.Next(lo, hi)
        let free p =
            try
                use probe = new Net.Sockets.Socket(Net.Sockets.AddressFamily.InterNetwork, Net.Sockets.SocketType.Stream, Net.Sockets.ProtocolType.Tcp)
                probe.Bind(Net.IPEndPoint(ip, p))
                true
            with _ -> false
        seq { 0 .. hi - lo - 1 }
        |> Seq.map (fun i -> lo + (start - lo + i) % (hi - lo))
        |> Seq.tryFind free
        |> Option.defaultWith (fun () ->
            raise (ExecutorError("HighThroughputExecutor", sprintf "no free port in WorkerPortRange (%d, %d) on %s; widen the range" lo hi address, null)))

    /// Parsl's defaults.
    new() = HighThroughputExecutor(HtexOptions.defaults ())

    /// The options.
    member _.Options = options

    /// Tries queued or running (Parsl's `outstanding()`).
    member _.Outstanding = inflight.Count

    /// The interchange's port (after start).
    member _.WorkerPort = interchange |> Option.map (fun i -> i.Port)

    /// The run's certificate directory when encryption is on (after start).
    member _.CertificateDirectory = certDir

    /// The local socket (abstract name) managers on this host connect to, when `SameHostSocket` (after start).
    member _.LocalSocket = localSocketName

    /// The command a block runs to start its manager(s) for a block id.
    member _.LaunchCommand(blockId: string) = launch blockId

    /// The executor's bad-state error, if it is in one.
    member _.BadState = badState ()

    /// Asks the interchange; `none` when it was never started.
    member private _.Ask<'T>(request: TaskCompletionSource<'T> -> InterchangeRequest, none: 'T) : Task<'T> =
        match interchange with
        | Some i ->
            let q = TaskCompletionSource<'T>(TaskCreationOptions.RunContinuationsAsynchronously)
            i.Post(request q)
            q.Task
        | None -> Task.FromResult none

    /// The connected managers (Parsl's `connected_managers()`).
    member this.ConnectedManagersAsync() : Task<ManagerInfo list> = this.Ask(QueryManagers, [])

    /// The ids of blocks whose managers have connected (Parsl's `connected_blocks()`).
    member this.ConnectedBlocksAsync() : Task<string list> = this.Ask(QueryBlocks, [])

    /// Every block this executor started, with its status (Parsl's `status()`).
    member _.BlocksAsync() : Task<BlockInfo list> =
        match poller with
        | Some p ->
            let q = TaskCompletionSource<BlockInfo list>(TaskCreationOptions.RunContinuationsAsynchronously)
            p.Post(QueryBlockStatus q)
            q.Task
        | None -> Task.FromResult []

    interface Parsl.Monitoring.IMonitoredExecutor with
        member this.MonitoringSnapshotAsync() =
            task {
                let! managers = this.ConnectedManagersAsync()
                let! blocks = this.BlocksAsync()
                // A block whose manager is connected runs, whatever the provider said at its last poll (a short run
                // can end before the block poller sees it RUNNING).
                let serving = managers |> List.map (fun m -> m.BlockId) |> Set.ofList
                let blocks =
                    blocks
                    |> List.map (fun b ->
                        if serving.Contains b.BlockId && (b.Status.State = Pending || b.Status.State = Unknown) then
                            { b with Status = { b.Status with State = Running } }
                        else b)
                return Parsl.Monitoring.HtexSnapshot.ofHtex managers blocks
            }
        member _.EnableResourceMonitoring(dir, interval) = radio <- Some(dir, interval)

    interface IBatchingExecutor with
        member _.Flush() =
            flushed <- true
            interchange |> Option.iter (fun i -> i.Flush())

    interface IExecutor with
        member _.Label = label
        member _.Validate() = HtexOptions.validate options
        member _.CheckResources spec = Resources.check label [ "priority" ] spec

        member this.StartAsync(context, _) =
            ctx <- context
            // The keys' directory exists (owner only) before the first block is launched; the keys themselves are
            // made after it (15 ms off the way to the first result): a manager waits for each file to appear, and
            // each appears whole (written aside, then renamed). Without encryption the client key is still made: its
            // secret is what a manager proves it holds, unless the user gave that up.
            let authenticate = not options.AllowUnauthenticatedManagers
            if options.Encrypted || authenticate then
                let dir = Path.Combine(context.RunDir, label, "certificates")
                Directory.CreateDirectory dir |> ignore
                if not (OperatingSystem.IsWindows()) then
                    File.SetUnixFileMode(dir, UnixFileMode.UserRead ||| UnixFileMode.UserWrite ||| UnixFileMode.UserExecute)
                certDir <- Some dir
            let makeKeys () =
                match certDir with
                | Some dir ->
                    let server = NetMQCertificate()
                    let client = NetMQCertificate()
                    let write name (text: string) =
                        let p = Path.Combine(dir, name)
                        let aside = p + ".tmp"
                        File.WriteAllText(aside, text)
                        if not (OperatingSystem.IsWindows()) then
                            File.SetUnixFileMode(aside, UnixFileMode.UserRead ||| UnixFileMode.UserWrite)
                        File.Move(aside, p, true)
                    if options.Encrypted then write "server.key" server.PublicKeyZ85
                    write "client.key" (client.PublicKeyZ85 + "\n" + client.SecretKeyZ85 + "\n")
                    (if options.Encrypted then Some server else None), client.SecretKeyZ85
                | None -> None, ""
            // Managers on this host connect here instead of TCP; the name is unguessable and dies with the process.
            let localSocket =
                if options.SameHostSocket then Some("parsl-net-interchange-" + Guid.NewGuid().ToString("N")) else None
            localSocketName <- localSocket
            // The first block is launched before the interchange starts (NetMQ's start-up takes tens of ms): its
            // manager needs a while to start, and reaches the interchange through the local socket, which listens
            // from here on, or the port chosen here.
            let listener = localSocket |> Option.map (fun n -> LocalSocket.listen n 64)
            let port =
                match options.WorkerPort with
                | Some p -> p
                | None -> HighThroughputExecutor.FreePort options.Address options.WorkerPortRange
            let started = TaskCompletionSource<InterchangeHandle>(TaskCreationOptions.RunContinuationsAsynchronously)
            let worker =
                match options.WorkerCommand with
                | Some words -> words
                | None ->
                    // Validated at load, so an error here means the files went away since.
                    match WorkerLocator.defaultCommand () with
                    | Ok command -> command
                    | Error fix -> raise (ConfigurationError("HighThroughputExecutor.WorkerCommand", fix))
            let cacheDir = Path.Combine(Path.GetTempPath(), "parsl-net", "assemblies")
            let ms (t: TimeSpan) = string (int64 t.TotalMilliseconds)
            // The manager starts its workers with the same command (was: its own program, which drops the
            // arguments of a WorkerCommand such as `dotnet exec --runtimeconfig ...` or a wrapping script).
            let workerCommand = Convert.ToBase64String(Text.Encoding.UTF8.GetBytes(String.Join("\n", worker)))
            // A killed manager would leave the runtime's debugger and diagnostics pipes in /tmp: unless this process
            // has DOTNET_EnableDiagnostics set (then blocks on this host inherit it), managers open none. Their
            // workers get the same from the manager.
            let diagnostics =
                if isNull (Environment.GetEnvironmentVariable "DOTNET_EnableDiagnostics") then [ "env"; "DOTNET_EnableDiagnostics=0" ] else []
            launch <-
                fun blockId ->
                    [ yield! diagnostics
                      yield!
                          (match radio with
                           | Some(dir, interval) -> "env" :: [ for k, v in Parsl.Node.Monitoring.ResourceRadio.Variables(dir, interval, blockId) -> k + "=" + v ]
                           | None -> [])
                      yield! worker
                      "--manager"
                      "--worker-command"; workerCommand
                      "--address"; sprintf "tcp://%s:%d" options.Address port
                      "--block-id"; blockId
                      match options.MaxWorkersPerNode with Some n -> yield! [ "--max-workers-per-node"; string n ] | None -> ()
                      "--cores-per-worker"; string options.CoresPerWorker
                      match options.MemPerWorker with Some m -> yield! [ "--mem-per-worker"; string m ] | None -> ()
                      "--prefetch-capacity"; string options.PrefetchCapacity
                      "--hb-period"; ms options.HeartbeatPeriod
                      "--hb-threshold"; ms options.HeartbeatThreshold
                      match options.DrainPeriod with Some d -> yield! [ "--drain-period"; ms d ] | None -> ()
                      "--cpu-affinity"; options.CpuAffinity
                      if not options.AvailableAccelerators.IsEmpty then
                          yield! [ "--available-accelerators"; String.Join(",", options.AvailableAccelerators) ]
                      match certDir with Some d -> yield! [ "--cert-dir"; d ] | None -> ()
                      if certDir.IsSome && not options.Encrypted then "--plain-tcp"
                      if certDir.IsSome && not authenticate then "--no-auth"
                      "--max-message-size"; string options.MaxMessageSize
                      match localSocket with Some n -> yield! [ "--local-socket"; n ] | None -> ()
                      "--cache-dir"; cacheDir ]
                    |> List.map quote
                    |> String.concat " "
            options.Provider.Initialize { ScriptDir = Path.Combine(context.RunDir, "submit_scripts"); Log = context.Log }
            poller <-
                Some(
                    BlockPoller.start
                        { Label = label
                          Provider = options.Provider
                          Options = options
                          LaunchCommand = launch
                          Outstanding = fun () -> inflight.Count
                          Interchange = started.Task
                          SetBad = setBad
                          IsBad = fun () -> badState().IsSome
                          Log = context.Log })
            let started' =
                try
                    let curve, token = makeKeys ()
                    Interchange.start
                        { Address = options.Address
                          Port = options.WorkerPort
                          PortRange = options.WorkerPortRange
                          PreferredPort = Some port
                          HeartbeatThreshold = options.HeartbeatThreshold
                          Selector = options.ManagerSelector
                          Curve = curve
                          LocalListener = listener
                          LocalToken = token
                          Secret = (if authenticate then Some token else None)
                          MaxMessageSize = options.MaxMessageSize
                          Log = context.Log
                          Report = fun e -> try handle e with ex -> context.Log.Error(ex, "{Label}: result handling failed", label) }
                    |> Ok
                with e -> Error(Runtime.ExceptionServices.ExceptionDispatchInfo.Capture e)
            ignore this
            match started' with
            | Ok ic ->
                interchange <- Some ic
                started.TrySetResult ic |> ignore
                Task.CompletedTask
            | Error failure ->
                started.TrySetException failure.SourceException |> ignore
                listener |> Option.iter (fun l -> l.Dispose())
                task {
                    // The block launched above must not outlive a start that failed: the poller cancels it (awaited,
                    // for at most 30 s, so that a provider that hangs does not hang the kernel's start).
                    match poller with
                    | Some p ->
                        let stopped = TaskCompletionSource<unit>(TaskCreationOptions.RunContinuationsAsynchronously)
                        p.Post(StopPoller stopped)
                        let! _ = Task.WhenAny(stopped.Task, Task.Delay(TimeSpan.FromSeconds 30.0))
                        ()
                    | None -> ()
                    poller <- None
                    failure.Throw()
                }
                :> Task

        member _.Submit t =
            match badState (), interchange with
            | Some ex, _ -> ctx.Report(TryFailed(t.Id, t.Try, ex))
            | _, None -> ctx.Report(TryFailed(t.Id, t.Try, ExecutorError(label, "the executor was not started", null)))
            | None, Some _ ->
                match (try Ok(encode t) with e -> Error e) with
                | Error e -> ctx.Report(TryFailed(t.Id, t.Try, e))
                | Ok(body, app) ->
                    let key = Protocol.key t.Id.Value t.Try.Value
                    inflight[key] <- struct (t.Id, t.Try)
                    let priority = match t.Resources.TryGetValue "priority" with | true, p -> p | _ -> null
                    let request =
                        Enqueue
                            { Key = key
                              AppName = app
                              Order = Policies.order priority (Interlocked.Increment &sequence)
                              Body = body
                              // MPI: the resource specification travels as text (Parsl exports each key as PARSL_<KEY>).
                              Resources =
                                if t.Resources.Count = 0 then []
                                else [ for KeyValue(k, v) in t.Resources -> k, Convert.ToString(v, Globalization.CultureInfo.InvariantCulture) ] }
                    // Under a kernel that flushes, the try leaves at its flush (on this thread, with any others).
                    submitRequest request

        member _.Cancel(id, tryId) =
            interchange |> Option.iter (fun i -> i.Post(CancelQueued(Protocol.key id.Value tryId.Value)))

        member _.ShutdownAsync(wait) =
            task {
                if wait && not inflight.IsEmpty && (badState ()).IsNone then
                    // Parsl's cleanup: tries already on managers finish; those still queued never start.
                    interchange |> Option.iter (fun i -> i.Post(DropQueued(fun k -> KernelShutdownError(TaskId(fst (Protocol.ofKey k))))))
                    let w = TaskCompletionSource<unit>(TaskCreationOptions.RunContinuationsAsynchronously)
                    lock idle (fun () -> idleWaiters <- w :: idleWaiters)
                    finished ()
                    do! w.Task
                match interchange with
                | Some ic ->
                    let stopped = TaskCompletionSource<unit>(TaskCreationOptions.RunContinuationsAsynchronously)
                    ic.Post(Stop((fun k -> KernelShutdownError(TaskId(fst (Protocol.ofKey k)))), stopped))
                    do! ic.Completion
                | None -> ()
                match poller with
                | Some p ->
                    let stopped = TaskCompletionSource<unit>(TaskCreationOptions.RunContinuationsAsynchronously)
                    p.Post(StopPoller stopped)
                    do! stopped.Task
                    do! p.Completion
                | None -> ()
                // The provider may hold a connection (an SSH channel) that would outlive the run.
                match box options.Provider with
                | :? IDisposable as d ->
                    try d.Dispose() with e -> ctx.Log.Error(e, "{Label}: disposing the provider failed", label)
                | _ -> ()
                // Anything still unreported can never finish now.
                for KeyValue(k, _) in inflight.ToArray() do
                    report k (Error(KernelShutdownError(TaskId(fst (Protocol.ofKey k)))))
            }
            :> Task
