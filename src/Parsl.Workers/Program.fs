/// The executable started on compute nodes: `--manager` runs a manager (one per node), `--worker` one
/// worker process (started by the manager). Argument parsing (Argu) and wiring only; the logic lives in
/// Parsl.Core.FSharp (`Manager.run`, `Worker.run`).
module Parsl.Workers.Program

open System
open System.IO
open Argu
open Parsl.Executors.HighThroughput

/// Every flag of every mode. Argu spells `Max_Workers_Per_Node` as `--max-workers-per-node`. A flag may be given
/// twice: the first occurrence wins, so flags in a user's `WorkerCommand` override the executor's.
type Arguments =
    | [<CliPrefix(CliPrefix.DoubleDash)>] Manager
    | Worker of rank: int
    | Generation of generation: int
    | Connect of address: string
    | Address of address: string
    | Block_Id of id: string
    | Max_Workers_Per_Node of count: int
    | Cores_Per_Worker of cores: float
    | Mem_Per_Worker of gb: float
    | Prefetch_Capacity of count: int
    | Hb_Period of ms: float
    | Hb_Threshold of ms: float
    | Drain_Period of ms: float
    | Cpu_Affinity of policy: string
    | Available_Accelerators of names: string
    | Cert_Dir of dir: string
    | Local_Socket of name: string
    | Cache_Dir of dir: string
    | No_Shared_Fs
    | Manager_Id of id: string
    | Parsl_Version of version: string

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Manager -> "run a manager (one per node), which connects to the interchange and starts the workers"
            | Worker _ -> "run one worker process (the manager starts these)"
            | Generation _ -> "worker: how many times this rank was restarted"
            | Connect _ -> "worker: the manager's local socket"
            | Address _ -> "manager: the interchange, as tcp://HOST:PORT"
            | Block_Id _ -> "manager: the block this manager belongs to"
            | Max_Workers_Per_Node _ -> "manager: at most this many workers (default: as many as cores and memory allow)"
            | Cores_Per_Worker _ -> "manager: cores per worker (default 1)"
            | Mem_Per_Worker _ -> "manager: memory per worker in GB (default: no limit)"
            | Prefetch_Capacity _ -> "manager: tasks to hold beyond the free workers (default 0)"
            | Hb_Period _ -> "manager: heartbeat period in ms (default 30000)"
            | Hb_Threshold _ -> "manager: the interchange is lost after this many ms of silence (default 120000)"
            | Drain_Period _ -> "manager: stop taking tasks after this many ms (default: never)"
            | Cpu_Affinity _ -> "manager: none, block, block-reverse, alternating or list:0-1,4:2-3 (default none)"
            | Available_Accelerators _ -> "manager: accelerator names, comma-separated, one per worker"
            | Cert_Dir _ -> "manager: the directory of the CurveZMQ keys (default: plain TCP)"
            | Local_Socket _ -> "manager: the interchange's local socket, tried before --address"
            | Cache_Dir _ -> "manager: where assemblies fetched from the client are cached"
            | No_Shared_Fs -> "manager: always fetch the application's assemblies from the client"
            | Manager_Id _ -> "manager: this manager's id (default: a random one)"
            | Parsl_Version _ -> "manager: the Parsl.NET version to report (tests of the version check)"

/// The parsed command line, or the exit code and the text to print (a one-line error on stderr, or the help).
let parse (argv: string[]) : Result<ParseResults<Arguments>, int * string> =
    let parser = ArgumentParser.Create<Arguments>(programName = "Parsl.Workers", checkStructure = false)
    try Ok(parser.ParseCommandLine(argv, raiseOnUsage = true))
    with :? ArguParseException as e ->
        if e.ErrorCode = ErrorCode.HelpText then Error(0, e.Message)
        else
            // Argu's message is the error, then the whole usage: one line is what a block's error file needs.
            let line = e.Message.Split('\n').[0].Trim()
            let line = if line.StartsWith "ERROR: " then line.Substring 7 else line
            Error(64, sprintf "Parsl.Workers: %s (see Parsl.Workers --help)" line)

/// The first occurrence of each flag. (Argu's own lookups give the last one, and go through quotations, which
/// cost start-up time on the way to a task's first result.)
type private Flags(args: ParseResults<Arguments>) =
    let all = args.GetAllResults()
    member _.First(pick: Arguments -> 'T option) = all |> List.tryPick pick
    member _.Has(flag: Arguments) = all |> List.contains flag

/// How this executable starts another copy of itself (as `dotnet Parsl.Workers.dll` or the app host).
let private self () =
    let exe = Environment.ProcessPath
    if Path.GetFileNameWithoutExtension(exe) = "dotnet" then [ exe; Reflection.Assembly.GetEntryAssembly().Location ]
    else [ exe ]

let private fail (message: string) =
    eprintfn "Parsl.Workers: %s (see Parsl.Workers --help)" message
    64

let private runWorkerAt (rank: int) (generation: int) (address: string) =
    Worker.prime ()
    match (try Ok(Worker.connect address rank generation) with e -> Error e) with
    | Ok channel ->
        use channel = channel
        Worker.run channel channel
    | Error e ->
        // The manager that started this worker is gone (or never listened): nothing to do.
        eprintfn "worker %d: cannot reach its manager at %s: %s" rank address e.Message
        2

let private runWorker (args: ParseResults<Arguments>) (rank: int) =
    let flags = Flags args
    match flags.First(function Connect v -> Some v | _ -> None), flags.First(function Generation v -> Some v | _ -> None) with
    | Some address, Some generation -> runWorkerAt rank generation address
    | _ -> fail "--worker needs --generation and --connect (a manager starts workers)"

let private runManager (args: ParseResults<Arguments>) =
    // Socket completions run on the socket engine's own thread instead of being handed to the thread pool:
    // NetMQ's completion only queues to its I/O thread, so the extra thread hop (and the pool's spinning)
    // cost a wake-up per message for nothing. Read once when the first socket is made, so set it first.
    // The manager runs no user code, so no user continuation can block that thread.
    Environment.SetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS", "1")
    let flags = Flags args
    let ms (value: float option) d = value |> Option.map TimeSpan.FromMilliseconds |> Option.defaultValue d
    match flags.First(function Address v -> Some v | _ -> None), flags.First(function Block_Id v -> Some v | _ -> None) with
    | Some address, Some block ->
        let settings =
            { Address = address
              ManagerId = flags.First(function Manager_Id v -> Some v | _ -> None) |> Option.defaultWith (fun () -> Guid.NewGuid().ToString("N").Substring(20))
              BlockId = block
              MaxWorkers = flags.First(function Max_Workers_Per_Node v -> Some v | _ -> None)
              CoresPerWorker = flags.First(function Cores_Per_Worker v -> Some v | _ -> None) |> Option.defaultValue 1.0
              MemPerWorker = flags.First(function Mem_Per_Worker v -> Some v | _ -> None)
              Prefetch = flags.First(function Prefetch_Capacity v -> Some v | _ -> None) |> Option.defaultValue 0
              HeartbeatPeriod = ms (flags.First(function Hb_Period v -> Some v | _ -> None)) (TimeSpan.FromSeconds 30.0)
              HeartbeatThreshold = ms (flags.First(function Hb_Threshold v -> Some v | _ -> None)) (TimeSpan.FromSeconds 120.0)
              DrainPeriod = flags.First(function Drain_Period v -> Some v | _ -> None) |> Option.map TimeSpan.FromMilliseconds
              CpuAffinity = flags.First(function Cpu_Affinity v -> Some v | _ -> None) |> Option.defaultValue "none"
              Accelerators =
                flags.First(function Available_Accelerators v -> Some v | _ -> None)
                |> Option.map (fun s -> s.Split(',', StringSplitOptions.RemoveEmptyEntries) |> List.ofArray)
                |> Option.defaultValue []
              CertDir = flags.First(function Cert_Dir v -> Some v | _ -> None)
              LocalSocket = flags.First(function Local_Socket v -> Some v | _ -> None)
              WorkerCommand = self ()
              CacheDir = flags.First(function Cache_Dir v -> Some v | _ -> None) |> Option.defaultValue (Path.Combine(Path.GetTempPath(), "parsl-net", "assemblies"))
              SharedFileSystem = not (flags.Has No_Shared_Fs)
              ParslVersion = flags.First(function Parsl_Version v -> Some v | _ -> None)
              Log = Console.Error }
        try
            Manager.run settings
        with e ->
            // A manager that cannot start says why in the block's error file, in one line.
            eprintfn "manager %s: cannot run: %s" settings.ManagerId e.Message
            1
    | _ -> fail "--manager needs --address and --block-id"

/// The exact line a manager starts each worker with. It skips the parser: Argu's start-up (reflection over the
/// flags) measured 0.1-0.3 s per process on a loaded 2-core node, paid by every worker on the way to its first
/// task. Anything else, and every line a person types, goes through the parser and its errors.
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
    | WorkerLine(rank, generation, address) -> runWorkerAt rank generation address
    | _ ->
    match parse argv with
    | Error(0, help) ->
        printfn "%s" help
        0
    | Error(code, line) ->
        eprintfn "%s" line
        code
    | Ok args ->
        // One line per mode.
        let flags = Flags args
        match flags.First(function Worker v -> Some v | _ -> None) with
        | Some rank -> runWorker args rank
        | None when flags.Has Manager -> runManager args
        | None -> fail "give --manager (on a node) or --worker (started by a manager)"
