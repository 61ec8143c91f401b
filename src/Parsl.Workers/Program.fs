/// The executable started on compute nodes: `--manager` runs a manager (one per node), `--worker` one
/// worker process (started by the manager). Argument parsing and wiring only; the logic lives in
/// Parsl.Core.FSharp (`Manager.run`, `Worker.run`).
module Parsl.Workers.Program

open System
open System.IO
open Parsl.Executors.HighThroughput

let private usage =
    "usage: Parsl.Workers --manager --address tcp://HOST:PORT --block-id ID [--max-workers-per-node N] \
[--cores-per-worker C] [--mem-per-worker GB] [--prefetch-capacity N] [--hb-period MS] [--hb-threshold MS] \
[--drain-period MS] [--cpu-affinity none|block|block-reverse|alternating|list:...] [--available-accelerators a,b] \
[--cert-dir DIR] [--local-socket NAME] [--cache-dir DIR] [--no-shared-fs] [--manager-id ID] [--worker-command BASE64] \
[--plain-tcp] [--no-auth] [--max-message-size BYTES]\n       Parsl.Workers --worker RANK --generation G --connect ADDRESS"

/// The flags, as a map from name to value (flags without a value map to "").
let private parse (argv: string[]) =
    let rec go i acc =
        if i >= argv.Length then Ok acc
        elif argv[i].StartsWith "--" then
            let name = argv[i].Substring 2
            // The first occurrence wins, so flags in a user's WorkerCommand override the executor's.
            let add v acc = if Map.containsKey name acc then acc else Map.add name v acc
            if i + 1 < argv.Length && not (argv[i + 1].StartsWith "--") then go (i + 2) (add argv[i + 1] acc)
            else go (i + 1) (add "" acc)
        else Error(sprintf "unexpected argument '%s'" argv[i])
    go 0 Map.empty

/// How this executable starts another copy of itself (as `dotnet Parsl.Workers.dll` or the app host).
let private self () =
    let exe = Environment.ProcessPath
    if Path.GetFileNameWithoutExtension(exe) = "dotnet" then [ exe; Reflection.Assembly.GetEntryAssembly().Location ]
    else [ exe ]

[<EntryPoint>]
let main argv =
    if argv.Length > 0 && argv[0].StartsWith "wq-" then WqRun.main argv else
    match parse argv with
    | Error e ->
        eprintfn "%s\n%s" e usage
        64
    | Ok flags when flags.ContainsKey "worker" ->
        match Int32.TryParse flags["worker"], Map.tryFind "connect" flags, Map.tryFind "generation" flags |> Option.map Int32.TryParse with
        | (true, rank), Some address, Some(true, generation) ->
            Worker.prime ()
            match (try Ok(Worker.connect address rank generation) with e -> Error e) with
            | Ok channel ->
                use channel = channel
                Worker.run channel channel
            | Error e ->
                // The manager that started this worker is gone (or never listened): nothing to do.
                eprintfn "worker %d: cannot reach its manager at %s: %s" rank address e.Message
                2
        | _ ->
            eprintfn "--worker RANK --generation G --connect ADDRESS are required (a manager starts workers)\n%s" usage
            64
    | Ok flags when flags.ContainsKey "manager" ->
        // Socket completions run on the socket engine's own thread instead of being handed to the thread pool:
        // NetMQ's completion only queues to its I/O thread, so the extra thread hop (and the pool's spinning)
        // cost a wake-up per message for nothing. Read once when the first socket is made, so set it first.
        // The manager runs no user code, so no user continuation can block that thread.
        Environment.SetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS", "1")
        let get name = Map.tryFind name flags
        let ms name d = get name |> Option.map (float >> TimeSpan.FromMilliseconds) |> Option.defaultValue d
        match get "address", get "block-id" with
        | Some address, Some block ->
            let settings =
                { Address = address
                  ManagerId = get "manager-id" |> Option.defaultWith (fun () -> Guid.NewGuid().ToString("N").Substring(20))
                  BlockId = block
                  MaxWorkers = get "max-workers-per-node" |> Option.map int
                  CoresPerWorker = get "cores-per-worker" |> Option.map float |> Option.defaultValue 1.0
                  MemPerWorker = get "mem-per-worker" |> Option.map float
                  Prefetch = get "prefetch-capacity" |> Option.map int |> Option.defaultValue 0
                  HeartbeatPeriod = ms "hb-period" (TimeSpan.FromSeconds 30.0)
                  HeartbeatThreshold = ms "hb-threshold" (TimeSpan.FromSeconds 120.0)
                  DrainPeriod = get "drain-period" |> Option.map (float >> TimeSpan.FromMilliseconds)
                  CpuAffinity = get "cpu-affinity" |> Option.defaultValue "none"
                  Accelerators =
                    get "available-accelerators"
                    |> Option.map (fun s -> s.Split(',', StringSplitOptions.RemoveEmptyEntries) |> List.ofArray)
                    |> Option.defaultValue []
                  CertDir = get "cert-dir"
                  LocalSocket = get "local-socket"
                  WorkerCommand =
                    match get "worker-command" with
                    | Some b64 -> Text.Encoding.UTF8.GetString(Convert.FromBase64String b64).Split('\n') |> List.ofArray
                    | None -> self ()
                  CacheDir = get "cache-dir" |> Option.defaultValue (Path.Combine(Path.GetTempPath(), "parsl-net", "assemblies"))
                  SharedFileSystem = not (flags.ContainsKey "no-shared-fs")
                  ParslVersion = get "parsl-version"
                  Log = Console.Error
                  Curve = not (flags.ContainsKey "plain-tcp")
                  Authenticate = not (flags.ContainsKey "no-auth")
                  MaxMessageSize = get "max-message-size" |> Option.map int |> Option.defaultValue (128 * 1024 * 1024) }
            try
                Manager.run settings
            with e ->
                // A manager that cannot start says why in the block's error file, in one line.
                eprintfn "manager %s: cannot run: %s" settings.ManagerId e.Message
                1
        | _ ->
            eprintfn "--address and --block-id are required\n%s" usage
            64
    | Ok _ ->
        eprintfn "%s" usage
        64
