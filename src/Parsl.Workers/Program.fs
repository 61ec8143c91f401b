/// The executable started on compute nodes: `--manager` runs a manager (one per node), `--worker` one
/// worker process (started by the manager). Argument parsing (System.CommandLine) and wiring only; the logic
/// lives in Parsl.Node (`Manager.run`, `Worker.run`); this executable never loads the kernel (Parsl.Core.FSharp).
module Parsl.Workers.Program

open System
open System.CommandLine
open System.CommandLine.Parsing
open System.Globalization
open System.IO
open Parsl.Node.HighThroughput

// System.CommandLine, not Argu: the manager parses its line on the way to a block's first result, and Argu's
// parse took 0.3-0.4 s of reflection on this 2-core machine (System.CommandLine: 30-60 ms, measured in fsi).

/// An option that takes a value. Given twice, the first occurrence wins, so flags in a user's `WorkerCommand`
/// override the executor's (which come after them). A value that does not parse is one error naming both.
let private valued<'T> (name: string) (what: string) (parse: string -> 'T option) (description: string) =
    let o = Option<'T>(name, Description = description, Arity = ArgumentArity.OneOrMore)
    o.CustomParser <-
        fun (r: ArgumentResult) ->
            let token = r.Tokens[0].Value
            match parse token with
            | Some v -> v
            | None ->
                r.AddError(sprintf "'%s' is not %s, for %s" token what name)
                Unchecked.defaultof<'T>
    o

let private text name description = valued<string> name "a value" Some description

let private whole name description =
    let parse (s: string) =
        match Int32.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture) with
        | true, v -> Some v
        | _ -> None
    valued<int> name "a whole number" parse description

let private number name description =
    let parse (s: string) =
        match Double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture) with
        | true, v when Double.IsFinite v -> Some v
        | _ -> None
    valued<float> name "a number" parse description

let private switch (name: string) (description: string) = Option<bool>(name, Description = description)

/// How this executable starts another copy of itself (as `dotnet Parsl.Workers.dll` or the app host).
let private self () =
    let exe = Environment.ProcessPath
    if Path.GetFileNameWithoutExtension(exe) = "dotnet" then [ exe; Reflection.Assembly.GetEntryAssembly().Location ]
    else [ exe ]

/// What the command line asks for.
type Mode =
    /// Run a manager with these settings.
    | RunManager of ManagerSettings
    /// Run one worker process: rank, generation, the manager's socket.
    | RunWorker of rank: int * generation: int * address: string
    /// Print the help and exit with 0.
    | Help of print: (unit -> int)

/// The mode, or a one-line error (for the block's error file) naming the flag and the fix.
let parse (argv: string[]) : Result<Mode, string> =
    let manager = switch "--manager" "run a manager (one per node): it connects to the interchange and starts the workers"
    let worker = whole "--worker" "run one worker process of this rank (the manager starts these)"
    let generation = whole "--generation" "worker: how many times this rank was started before"
    let connect = text "--connect" "worker: the manager's local socket"
    let address = text "--address" "manager: the interchange, as tcp://HOST:PORT, or tcp://HOST:PORT,PORT,... (one is picked from the manager's id)"
    let blockId = text "--block-id" "manager: the block this manager belongs to"
    let maxWorkers = whole "--max-workers-per-node" "manager: at most this many workers (default: as many as cores and memory allow)"
    let coresPerWorker = number "--cores-per-worker" "manager: cores per worker (default 1)"
    let memPerWorker = number "--mem-per-worker" "manager: memory per worker in GB (default: no limit)"
    let prefetch = whole "--prefetch-capacity" "manager: tasks to hold beyond the free workers (default 0)"
    let hbPeriod = number "--hb-period" "manager: heartbeat period in ms (default 30000)"
    let hbThreshold = number "--hb-threshold" "manager: the interchange is lost after this many ms of silence (default 120000)"
    let drainPeriod = number "--drain-period" "manager: stop taking tasks after this many ms (default: never)"
    let cpuAffinity = text "--cpu-affinity" "manager: none, block, block-reverse, alternating or list:0-1,4:2-3 (default none)"
    let accelerators = text "--available-accelerators" "manager: accelerator names, comma-separated, one per worker"
    let certDir = text "--cert-dir" "manager: the directory of the CurveZMQ keys (default: plain TCP)"
    let localSocket = text "--local-socket" "manager: the interchange's local socket, tried before --address"
    let cacheDir = text "--cache-dir" "manager: where assemblies fetched from the client are cached"
    let noSharedFs = switch "--no-shared-fs" "manager: always fetch the application's assemblies from the client"
    let managerId = text "--manager-id" "manager: this manager's id (default: a random one)"
    let parslVersion = text "--parsl-version" "manager: the Parsl.NET version to report (tests of the version check)"
    let workerCommand = text "--worker-command" "manager: the command that starts a worker, base64 of its words joined by newlines"
    let plainTcp = switch "--plain-tcp" "manager: no CURVE encryption on the TCP connection (the executor's Encrypted = false)"
    let noAuth = switch "--no-auth" "manager: do not prove the run's secret (the executor's AllowUnauthenticatedManagers)"
    let maxMessageSize = whole "--max-message-size" "manager: the largest message the interchange accepts, in bytes (default 134217728)"
    let root = RootCommand("Parsl.NET's worker pool. Started by the HighThroughputExecutor's providers, not by hand.")
    for o in
        [ manager :> Option; worker; generation; connect; address; blockId; maxWorkers; coresPerWorker; memPerWorker
          prefetch; hbPeriod; hbThreshold; drainPeriod; cpuAffinity; accelerators; certDir; localSocket; cacheDir
          noSharedFs; managerId; parslVersion; workerCommand; plainTcp; noAuth; maxMessageSize ] do
        root.Options.Add o
    let result = root.Parse argv
    let given (o: Option) = not (isNull (result.GetResult o))
    let value (o: Option<'T>) = if given o then Some(result.GetValue o) else None
    if argv |> Array.exists (fun a -> a = "--help" || a = "-h" || a = "-?") then Ok(Help(fun () -> result.Invoke()))
    elif result.Errors.Count > 0 then Error result.Errors[0].Message
    else
        match value worker with
        | Some rank ->
            match value generation, value connect with
            | Some g, Some c -> Ok(RunWorker(rank, g, c))
            | _ -> Error "--worker needs --generation and --connect (a manager starts workers)"
        | None when result.GetValue manager ->
            let ms (o: Option<float>) d = value o |> Option.map TimeSpan.FromMilliseconds |> Option.defaultValue d
            match value address, value blockId with
            | Some address, _ when Result.isError (InterchangePorts.parse address) ->
                Error(sprintf "--address: %s" (match InterchangePorts.parse address with Error e -> e | Ok _ -> ""))
            | Some address, Some block ->
                Ok(
                    RunManager
                        { Address = address
                          ManagerId = value managerId |> Option.defaultWith (fun () -> Guid.NewGuid().ToString("N").Substring(20))
                          BlockId = block
                          MaxWorkers = value maxWorkers
                          CoresPerWorker = value coresPerWorker |> Option.defaultValue 1.0
                          MemPerWorker = value memPerWorker
                          Prefetch = value prefetch |> Option.defaultValue 0
                          HeartbeatPeriod = ms hbPeriod (TimeSpan.FromSeconds 30.0)
                          HeartbeatThreshold = ms hbThreshold (TimeSpan.FromSeconds 120.0)
                          DrainPeriod = value drainPeriod |> Option.map TimeSpan.FromMilliseconds
                          CpuAffinity = value cpuAffinity |> Option.defaultValue "none"
                          Accelerators =
                            value accelerators
                            |> Option.map (fun s -> s.Split(',', StringSplitOptions.RemoveEmptyEntries) |> List.ofArray)
                            |> Option.defaultValue []
                          CertDir = value certDir
                          LocalSocket = value localSocket
                          WorkerCommand =
                            match value workerCommand with
                            | Some b64 -> Text.Encoding.UTF8.GetString(Convert.FromBase64String b64).Split('\n') |> List.ofArray
                            | None -> self ()
                          CacheDir = value cacheDir |> Option.defaultValue (Path.Combine(Path.GetTempPath(), "parsl-net", "assemblies"))
                          SharedFileSystem = not (result.GetValue noSharedFs)
                          ParslVersion = value parslVersion
                          Log = Console.Error
                          Curve = not (result.GetValue plainTcp)
                          Authenticate = not (result.GetValue noAuth)
                          MaxMessageSize = value maxMessageSize |> Option.defaultValue (128 * 1024 * 1024) }
                )
            | _ -> Error "--manager needs --address and --block-id"
        | None -> Error "give --manager (on a node) or --worker (started by a manager)"

let private runWorker (rank: int) (generation: int) (address: string) =
    let primer = Worker.prime ()
    try
        match (try Ok(Worker.connect address rank generation) with e -> Error e) with
        | Ok channel ->
            use channel = channel
            Worker.run channel channel
        | Error e ->
            // The manager that started this worker is gone (or never listened): nothing to do.
            eprintfn "worker %d: cannot reach its manager at %s: %s" rank address e.Message
            2
    finally
        primer.Join()

let private runManager (settings: ManagerSettings) =
    // Socket completions run on the socket engine's own thread instead of being handed to the thread pool:
    // NetMQ's completion only queues to its I/O thread, so the extra thread hop (and the pool's spinning)
    // cost a wake-up per message for nothing. Read once when the first socket is made, so set it first.
    // The manager runs no user code, so no user continuation can block that thread.
    Environment.SetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS", "1")
    try
        Manager.run settings
    with e ->
        // A manager that cannot start says why in the block's error file, in one line.
        eprintfn "manager %s: cannot run: %s" settings.ManagerId e.Message
        1

/// The exact line a manager starts each worker with. It skips the parser, whose start-up every worker would
/// otherwise pay on the way to its first task. Anything else, and every line a person types, is parsed.
let private (|WorkerLine|_|) (argv: string[]) =
    match argv with
    | [| "--worker"; rank; "--generation"; generation; "--connect"; address |] ->
        match Int32.TryParse rank, Int32.TryParse generation with
        | (true, r), (true, g) -> Some(r, g, address)
        | _ -> None
    | _ -> None

[<EntryPoint>]
let main argv =
    match argv with
    | WorkerLine(rank, generation, address) -> runWorker rank generation address
    | _ when argv.Length > 0 && argv[0].StartsWith "wq-" -> WqRun.main argv
    | _ when argv.Length > 0 && argv[0] = "vine-library" -> VineRun.main argv
    | _ ->
        // One line per mode.
        match parse argv with
        | Ok(RunWorker(rank, generation, address)) -> runWorker rank generation address
        | Ok(RunManager settings) -> runManager settings
        | Ok(Help print) -> print ()
        | Error line ->
            eprintfn "Parsl.Workers: %s (see Parsl.Workers --help)" line
            64
