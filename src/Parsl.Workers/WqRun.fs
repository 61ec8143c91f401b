/// `Parsl.Workers wq-run CALL RESULT` (and `wq-serve`, below): the .NET task runner a Work Queue worker starts for one function app, in the
/// task's sandbox. It reads the serialized call, runs it as an HTEx worker runs a task (the same code), and writes
/// the result or the app's exception to RESULT; the executor fetches that file. The user's assemblies arrive
/// beside it as cached files named by their hash; the call names them relative to the sandbox.
module Parsl.Workers.WqRun

open System
open System.IO
open Parsl.Node.HighThroughput

/// Runs one call file; returns the process exit code (0 once a result is written, even for an app's exception).
let private runCall (argv: string[]) : int =
    match argv with
    | [| _; callPath; resultPath |] ->
        let frame =
            use f = File.OpenRead callPath
            Frames.read f
        match frame with
        | None ->
            eprintfn "wq-run: %s holds no call" callPath
            65
        | Some bytes ->
            let (Run tasks) = Protocol.decodeToWorker bytes
            // Assembly paths in the call are relative to the sandbox; the loader needs them absolute.
            let absolute (t: WireTask) =
                match t.Body with
                | Call(fid, def, args, wall) when not (isNull def) ->
                    let refs, body = Serialization.decodeDefinition def
                    let refs = refs |> List.map (fun r -> { r with Path = Path.GetFullPath r.Path })
                    { t with Body = Call(fid, Serialization.rewriteDefinition refs body, args, wall) }
                | _ -> t
            use input = new MemoryStream(Frames.encode (Protocol.encodeToWorker (Run(List.map absolute tasks))))
            use output = File.Create resultPath
            Worker.run input output
    | _ ->
        eprintfn "usage: Parsl.Workers wq-run CALL RESULT | Parsl.Workers wq-serve"
        64

/// One long-lived runner loop (the HTEx worker's, fed through in-process pipes) that runs calls found in sandboxes:
/// the user's assemblies are loaded once, and a call costs no `dotnet` start. Calls run one at a time. Shared by Work
/// Queue's coprocess (`wq-serve`) and TaskVine's library (`vine-library`).
[<Sealed>]
type LongLivedRunner() =
    let home = Directory.GetCurrentDirectory()
    let toWorker = new Pipes.AnonymousPipeServerStream(Pipes.PipeDirection.Out)
    let workerIn = new Pipes.AnonymousPipeClientStream(Pipes.PipeDirection.In, toWorker.ClientSafePipeHandle)
    let fromWorker = new Pipes.AnonymousPipeServerStream(Pipes.PipeDirection.In)
    let workerOut = new Pipes.AnonymousPipeClientStream(Pipes.PipeDirection.Out, fromWorker.ClientSafePipeHandle)
    let loop = Threading.Thread((fun () -> Worker.run workerIn workerOut |> ignore), IsBackground = true, Name = "runner")
    do loop.Start()
    // Function ids are the client's; two runs would reuse them. Ids here are per definition content.
    let ids = Collections.Generic.Dictionary<string, int>()

    /// The working directory the runner started in.
    member _.Home = home

    /// Runs the call in `sandbox/parsl.call` and writes `sandbox/parsl.result`; "ok", or what went wrong.
    member _.Run(sandbox: string) : string =
        try
            let frame =
                use f = File.OpenRead(Path.Combine(sandbox, "parsl.call"))
                Frames.read f
            let (Run tasks) = Protocol.decodeToWorker frame.Value
            let fix (t: WireTask) =
                match t.Body with
                | Call(_, def, args, wall) when not (isNull def) ->
                    let refs, body = Serialization.decodeDefinition def
                    let refs = refs |> List.map (fun r -> { r with Path = Path.GetFullPath(Path.Combine(sandbox, r.Path)) })
                    let key = Convert.ToHexString(Security.Cryptography.SHA256.HashData body)
                    let id = match ids.TryGetValue key with | true, i -> i | _ -> (let i = ids.Count + 1 in ids[key] <- i; i)
                    { t with Body = Call(id, Serialization.rewriteDefinition refs body, args, wall) }
                | _ -> t
            // The app sees its sandbox as the working directory, as in a task of its own.
            Directory.SetCurrentDirectory sandbox
            try
                Frames.write toWorker (Protocol.encodeToWorker (Run(List.map fix tasks)))
                toWorker.Flush()
                match Frames.read fromWorker with
                | Some result ->
                    use out = File.Create(Path.Combine(sandbox, "parsl.result"))
                    Frames.write out result
                    "ok"
                | None -> "the runner's loop ended"
            finally
                Directory.SetCurrentDirectory home
        with e -> e.Message

/// `Parsl.Workers wq-serve`: the long-lived runner a Work Queue worker keeps as its coprocess (`--coprocess`,
/// protocol 10+). It tells the worker its name and port on stdout, then serves the worker's calls on loopback: each
/// names a task id, whose sandbox (`t.<id>` under the worker's directory, this process's working directory) holds the
/// call; the result goes beside it, for the manager to fetch. Calls run one at a time in one worker loop, so the
/// user's assemblies are loaded once.
let serve () : int =
    let listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0)
    listener.Start()
    let port = (listener.LocalEndpoint :?> System.Net.IPEndPoint).Port
    let hello = sprintf "{\"name\":\"%s\",\"port\":%d}" "parsl-dotnet" port
    let stdout = Console.OpenStandardOutput()
    let announce = Text.Encoding.UTF8.GetBytes(sprintf "%d\n%s" (Text.Encoding.UTF8.GetByteCount hello) hello)
    stdout.Write(announce, 0, announce.Length)
    stdout.Flush()
    // Our stdin is the worker's pipe: it closes when the worker ends, however it ends, and so do we.
    let watch =
        Threading.Thread(
            (fun () ->
                try
                    use stdin = Console.OpenStandardInput()
                    let buffer = Array.zeroCreate<byte> 256
                    while stdin.Read(buffer, 0, buffer.Length) > 0 do
                        ()
                with _ -> ()
                exit 0),
            IsBackground = true,
            Name = "worker-watch")
    watch.Start()
    // The worker reads nothing more from our stdout: what apps print goes to stderr, so a full pipe never blocks them.
    Console.SetOut(Console.Error)
    let runner = new LongLivedRunner()
    let runOne (taskId: string) =
        let sandbox = Path.Combine(runner.Home, "t." + taskId)
        try
            // The environment is read from the sandbox's `infile` (written by the worker from the authenticated
            // manager), not from the connection: whoever connects to this loopback port is not trusted.
            let env = File.ReadAllText(Path.Combine(sandbox, "infile"))
            if env.Trim().StartsWith "{" then
                for kv in Text.Json.JsonDocument.Parse(env).RootElement.EnumerateObject() do
                    Environment.SetEnvironmentVariable(kv.Name, kv.Value.GetString())
            runner.Run sandbox
        with e -> "wq-serve: " + e.Message
    while true do
        use client = listener.AcceptTcpClient()
        let s = client.GetStream()
        let reader = new BinaryReader(s)
        let readLine () =
            let sb = Text.StringBuilder()
            let mutable c = s.ReadByte()
            while c >= 0 && c <> 10 do
                sb.Append(char c) |> ignore
                c <- s.ReadByte()
            if c < 0 && sb.Length = 0 then null else sb.ToString()
        let mutable line = readLine ()
        while not (isNull line) do
            match line.Split(' ') with
            | [| _; taskId; len |] when taskId <> "" && taskId |> Seq.forall Char.IsAsciiDigit && fst (Int32.TryParse len) && int len >= 0 && int len <= 65536 ->
                reader.ReadBytes(int len) |> ignore
                let reply = Text.Encoding.UTF8.GetBytes(runOne taskId)
                let head = Text.Encoding.UTF8.GetBytes(sprintf "%d\n" reply.Length)
                s.Write(head, 0, head.Length)
                s.Write(reply, 0, reply.Length)
                s.Flush()
                line <- readLine ()
            | _ -> line <- null
    0

/// `wq-run CALL RESULT` or `wq-serve`.
let main (argv: string[]) : int =
    match argv with
    | [| "wq-serve" |] -> serve ()
    | _ -> runCall argv
