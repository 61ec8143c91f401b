/// `parsl-endpoint`: configure, start, stop and list endpoint daemons. Thin wiring over
/// `Parsl.Executors.Endpoint` (config, daemon); each endpoint lives in `<home>/<NAME>/` (config.json, pid, log).
module Parsl.Endpoint.Program

open System
open System.IO
open System.Runtime.InteropServices
open System.Threading
open Argu
open Serilog
open Parsl
open Parsl.Executors.Endpoint

type ConfigureArgs =
    | [<MainCommand; Mandatory; Unique>] Name of name: string
    | Broker_Host of host: string
    | Broker_Port of port: int
    | Vhost of vhost: string
    | User of user: string
    | Password of password: string
    | Password_File of path: string
    | Tls
    | Ca_File of path: string
    | Engine of kind: string
    | Token of token: string
    | Force

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Name _ -> "the endpoint's name (letters, digits, '-', '_')"
            | Broker_Host _ -> "the broker's host (default 127.0.0.1)"
            | Broker_Port _ -> "the broker's port (default 5672, 5671 with --tls)"
            | Vhost _ -> "the broker's virtual host (default /)"
            | User _ -> "the broker user the endpoint connects as"
            | Password _ -> "that user's password"
            | Password_File _ -> "a file holding that user's password"
            | Tls -> "connect to the broker with TLS"
            | Ca_File _ -> "with --tls: the PEM file of the broker's certificate authority"
            | Engine _ -> "ThreadPool (default) or HighThroughput: the executor tasks run on"
            | Token _ -> "the token clients must present (default: a new random one, printed)"
            | Force -> "overwrite an existing config"

type NameArgs =
    | [<MainCommand; Mandatory; Unique>] Endpoint_Name of name: string
    | Stop_On_Stdin_Close

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Endpoint_Name _ -> "the endpoint's name"
            | Stop_On_Stdin_Close -> "start: stop when standard input closes (the process that started it ended, however it ended)"

type Args =
    | Home of dir: string
    | [<CliPrefix(CliPrefix.None)>] Configure of ParseResults<ConfigureArgs>
    | [<CliPrefix(CliPrefix.None)>] Start of ParseResults<NameArgs>
    | [<CliPrefix(CliPrefix.None)>] Stop of ParseResults<NameArgs>
    | [<CliPrefix(CliPrefix.None)>] List

    interface IArgParserTemplate with
        member a.Usage =
            match a with
            | Home _ -> "where endpoints live (default $PARSL_ENDPOINT_HOME, else ~/.parsl/endpoints)"
            | Configure _ -> "write a new endpoint's config.json"
            | Start _ -> "run an endpoint in the foreground until stopped (SIGTERM or stop)"
            | Stop _ -> "stop a running endpoint"
            | List -> "list the endpoints and whether they run"

let private privateDir (d: string) =
    Directory.CreateDirectory d |> ignore
    if not (OperatingSystem.IsWindows()) then
        File.SetUnixFileMode(d, UnixFileMode.UserRead ||| UnixFileMode.UserWrite ||| UnixFileMode.UserExecute)

let private writePrivate (path: string) (text: string) =
    let aside = path + ".tmp"
    File.WriteAllText(aside, "")
    if not (OperatingSystem.IsWindows()) then File.SetUnixFileMode(aside, UnixFileMode.UserRead ||| UnixFileMode.UserWrite)
    File.WriteAllText(aside, text)
    File.Move(aside, path, true)

let private alive (pid: int) =
    try
        use p = Diagnostics.Process.GetProcessById pid
        not p.HasExited
    with _ -> false

let private readPid (dir: string) =
    let f = Path.Combine(dir, "endpoint.pid")
    if File.Exists f then
        match Int32.TryParse(File.ReadAllText(f).Trim()) with
        | true, p when alive p -> Some p
        | _ -> None
    else None

let private configure (home: string) (a: ParseResults<ConfigureArgs>) =
    let name = a.GetResult Name
    if not (EndpointWire.validName name) then
        eprintfn "'%s' is not an endpoint name: letters, digits, '-' and '_' only" name
        2
    else
        let dir = Path.Combine(home, name)
        let file = Path.Combine(dir, "config.json")
        if File.Exists file && not (a.Contains Force) then
            eprintfn "%s exists; pass --force to overwrite it" file
            1
        else
            let tls = a.Contains Tls
            let password =
                match a.TryGetResult Password_File with
                | Some p -> File.ReadAllText(p).Trim()
                | None -> a.GetResult(Password, "")
            let token = a.GetResult(Token, Convert.ToHexString(Security.Cryptography.RandomNumberGenerator.GetBytes 24).ToLowerInvariant())
            let broker =
                { Host = a.GetResult(Broker_Host, "127.0.0.1")
                  Port = a.GetResult(Broker_Port, (if tls then 5671 else 5672))
                  VirtualHost = a.GetResult(Vhost, "/")
                  User = a.GetResult(User, "")
                  Password = password
                  Tls = tls
                  CaFile = a.TryGetResult Ca_File
                  ServerName = None }
            let config = EndpointConfig.template name broker token
            let config =
                match a.GetResult(Engine, "ThreadPool") with
                | "HighThroughput" ->
                    { config with
                        Engine = Map [ "type", "HighThroughput"; "maxWorkersPerNode", "{{max_workers}}" ]
                        Template = Map [ "max_workers", { Default = "2"; Pattern = "[1-9]|1[0-6]" } ] }
                | _ -> config
            match EndpointConfig.validate config with
            | [] ->
                privateDir home
                privateDir dir
                writePrivate file (EndpointConfig.render config)
                printfn "configured endpoint %s: %s" name file
                printfn "token=%s" token
                0
            | errors ->
                for e in errors do
                    eprintfn "%s" e.Message
                2

let private start (home: string) (name: string) (stopOnStdinClose: bool) =
    let dir = Path.Combine(home, name)
    let file = Path.Combine(dir, "config.json")
    if not (File.Exists file) then
        eprintfn "no endpoint '%s': %s is missing; run parsl-endpoint configure %s first" name file name
        2
    else
        match readPid dir with
        | Some pid ->
            eprintfn "endpoint %s already runs (pid %d)" name pid
            1
        | None ->
            let config = EndpointConfig.parse (File.ReadAllText file)
            match EndpointConfig.validate config with
            | _ :: _ as errors ->
                for e in errors do
                    eprintfn "%s" e.Message
                2
            | [] ->
                let log = LoggerConfiguration().WriteTo.File(Path.Combine(dir, "endpoint.log")).CreateLogger()
                use stopRequested = new CancellationTokenSource()
                let onSignal = Action<PosixSignalContext>(fun c -> c.Cancel <- true; stopRequested.Cancel())
                use _term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, onSignal)
                use _int = PosixSignalRegistration.Create(PosixSignal.SIGINT, onSignal)
                // The owner holds our stdin: when it ends (even by SIGKILL) the pipe closes, and so do we.
                // (A thread of its own: reads from Console.In block even through its async methods.)
                if stopOnStdinClose then
                    let watch () =
                        Console.OpenStandardInput().CopyTo(IO.Stream.Null)
                        try stopRequested.Cancel() with :? ObjectDisposedException -> ()
                    Thread(watch, IsBackground = true, Name = "stdin-watch").Start()
                try
                    let daemon = (EndpointDaemon.startAsync config dir log CancellationToken.None).GetAwaiter().GetResult()
                    writePrivate (Path.Combine(dir, "endpoint.pid")) (string Environment.ProcessId)
                    printfn "READY endpoint=%s pid=%d" name Environment.ProcessId
                    Console.Out.Flush()
                    stopRequested.Token.WaitHandle.WaitOne() |> ignore
                    daemon.StopAsync().GetAwaiter().GetResult()
                    File.Delete(Path.Combine(dir, "endpoint.pid"))
                    printfn "STOPPED endpoint=%s" name
                    log.Dispose()
                    0
                with e ->
                    eprintfn "endpoint %s failed: %s" name e.Message
                    log.Error(e, "endpoint {Name} failed", name)
                    log.Dispose()
                    1

let private stop (home: string) (name: string) =
    let dir = Path.Combine(home, name)
    match readPid dir with
    | None ->
        printfn "endpoint %s is not running" name
        0
    | Some pid ->
        use p = Diagnostics.Process.GetProcessById pid
        Parsl.Node.Runtime.Native.kill (pid, 15) |> ignore
        if p.WaitForExit(TimeSpan.FromSeconds 60.0) then
            printfn "stopped endpoint %s (pid %d)" name pid
            0
        else
            eprintfn "endpoint %s (pid %d) did not stop within 60 s" name pid
            1

let private list (home: string) =
    if Directory.Exists home then
        for d in Directory.GetDirectories home |> Array.sort do
            let file = Path.Combine(d, "config.json")
            if File.Exists file then
                let name = Path.GetFileName d
                let engine =
                    try defaultArg (Map.tryFind "type" (EndpointConfig.parse (File.ReadAllText file)).Engine) "?"
                    with _ -> "unreadable config"
                let heartbeat =
                    let f = Path.Combine(d, "status.json")
                    try
                        let o = Text.Json.Nodes.JsonNode.Parse(File.ReadAllText f)
                        let at = DateTime.Parse(o["heartbeat"].GetValue<string>(), Globalization.CultureInfo.InvariantCulture, Globalization.DateTimeStyles.RoundtripKind)
                        sprintf "  heartbeat %.0f s ago, %d running, %d done" (DateTime.UtcNow - at).TotalSeconds (o["running"].GetValue<int64>()) (o["done"].GetValue<int64>())
                    with _ -> ""
                match readPid d with
                | Some pid -> printfn "%-24s running (pid %d)  %s%s" name pid engine heartbeat
                | None -> printfn "%-24s stopped           %s" name engine
    0

[<EntryPoint>]
let main argv =
    let parser = ArgumentParser.Create<Args>(programName = "parsl-endpoint")
    try
        let r = parser.ParseCommandLine(argv, raiseOnUsage = true)
        let home =
            match r.TryGetResult Home with
            | Some h -> h
            | None ->
                match Environment.GetEnvironmentVariable "PARSL_ENDPOINT_HOME" with
                | null | "" -> Path.Combine(Environment.GetFolderPath Environment.SpecialFolder.UserProfile, ".parsl", "endpoints")
                | h -> h
        if r.Contains List then list home
        else
        match r.GetSubCommand() with
        | Configure a -> configure home a
        | Start a -> start home (a.GetResult Endpoint_Name) (a.Contains Stop_On_Stdin_Close)
        | Stop a -> stop home (a.GetResult Endpoint_Name)
        | List -> list home
        | Home _ -> 2
    with
    | :? ArguParseException as e ->
        eprintfn "%s" e.Message
        2
    | :? ConfigurationError as e ->
        eprintfn "%s" e.Message
        2
