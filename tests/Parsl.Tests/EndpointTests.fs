/// Endpoints through a real RabbitMQ broker (tests/harness/rabbitmq.sh, started once for these tests and stopped
/// at the end by pid) and real endpoint daemons (`Parsl.Endpoint`, started and killed by the tests), on loopback.
module Parsl.Tests.EndpointTests

open System
open System.Collections.Generic
open System.Diagnostics
open System.IO
open System.Threading
open System.Threading.Tasks
open Expecto
open FsCheck
open Parsl
open Parsl.Executors
open Parsl.Node
open Parsl.Executors.Endpoint
open Parsl.Executors.HighThroughput
open Parsl.Node.HighThroughput
open Parsl.Tests.TestUtil
open Parsl.Tests.EndpointApps

// ---------------------------------------------------------------------------------------------------------------
// The broker and endpoint processes

/// The broker's READY line (the harness runs once per test run; the broker is stopped by `stopBroker`).
let broker () = Harness.require "rabbitmq"

let private field k = Harness.field (broker ()) k

let private harnessScript () = Path.Combine(Harness.dir (), "rabbitmq.sh")

/// Stops the broker the harness started (by its pid, through the harness), if it started one.
let stopBroker () =
    let pidFile = Path.Combine((match Environment.GetEnvironmentVariable "PARSL_HARNESS_DIR" with null | "" -> "/tmp/parsl-harness" | d -> d), "rabbitmq", "beam.pid")
    if File.Exists pidFile then Harness.sh (sprintf "bash %s stop" (harnessScript ())) |> ignore

let private brokerFor (user: string) (tls: bool) : BrokerOptions =
    { Host = "127.0.0.1"
      Port = int (field (if tls then "tls_port" else "port"))
      VirtualHost = field "vhost"
      User = user
      Password = field (user + "_password")
      Tls = tls
      CaFile = (if tls then Some(field "ca") else None)
      ServerName = (if tls then Some "localhost" else None) }

let private token = "test-token-" + Guid.NewGuid().ToString("N")

let private endpointDll () = Path.Combine(AppContext.BaseDirectory, "Parsl.Endpoint.dll")

/// An endpoint daemon process (`parsl-endpoint start NAME`), killed at disposal if still running.
type EndpointProcess(home: string, name: string) =
    let psi = ProcessStartInfo("dotnet")
    do
        // It stops when this process ends, however it ends (its stdin closes).
        for a in [ endpointDll (); "--home"; home; "start"; name; "--stop-on-stdin-close" ] do
            psi.ArgumentList.Add a
        psi.RedirectStandardInput <- true
        psi.RedirectStandardOutput <- true
        psi.RedirectStandardError <- true
    let p = Process.Start psi
    let err = p.StandardError.ReadToEndAsync()
    let ready =
        let t: Task<string> = p.StandardOutput.ReadLineAsync()
        if not (t.Wait(TimeSpan.FromSeconds 120.0)) || isNull t.Result || not (t.Result.StartsWith "READY") then
            (try p.Kill true with _ -> ())
            failtestf "endpoint %s did not start: %s %s" name (if t.IsCompleted then t.Result else "(no line in 120 s)") (if err.Wait 5000 then err.Result else "")
        t.Result
    let rest = p.StandardOutput.ReadToEndAsync()
    member _.Pid = p.Id
    member _.Ready = ready
    /// SIGKILL: no cleanup, no acknowledgement of what is in flight.
    member _.Kill9() =
        Parsl.Node.Runtime.Native.kill (p.Id, 9) |> ignore
        p.WaitForExit(30000) |> ignore
    member _.Process = p
    member _.Output = rest
    interface IDisposable with
        member _.Dispose() =
            if not p.HasExited then
                Parsl.Node.Runtime.Native.kill (p.Id, 15) |> ignore
                if not (p.WaitForExit 30000) then (try p.Kill true with _ -> ())
            p.Dispose()

/// Writes an endpoint's config under a fresh home and returns (home, name).
let private configureEndpointWith (change: EndpointConfig -> EndpointConfig) (engine: Map<string, string>) (template: Map<string, TemplateKey>) (tls: bool) =
    let name = "ep-" + Guid.NewGuid().ToString("N").Substring(0, 12)
    let home = tempRunDir ()
    let dir = Path.Combine(home, name)
    Directory.CreateDirectory dir |> ignore
    let config =
        { EndpointConfig.template name (brokerFor "endpoint" tls) token with
            Engine = engine
            Template = template }
    File.WriteAllText(Path.Combine(dir, "config.json"), EndpointConfig.render (change config))
    home, name

let private configureEndpoint engine template tls = configureEndpointWith id engine template tls

let private threadPool = Map [ "type", "ThreadPool"; "maxThreads", "4" ]

let private clientOptions (name: string) =
    { EndpointOptions.defaults () with
        Endpoint = name
        Broker = brokerFor "client" false
        Token = token }

let private clientWith (opts: EndpointOptions) =
    let ex = EndpointExecutor(opts)
    let dfk = load (fun c -> { c with Executors = [ ex ] })
    ex, dfk

let private waitFor (what: string) (t: Task) =
    if not (t.Wait(TimeSpan.FromSeconds 120.0)) then failtestf "timed out after 120 s waiting for %s" what

/// Waits up to 2 minutes for a future (broker restarts and endpoint restarts take seconds).
let private result (f: AppFuture<'T>) =
    if not (f.Task.Wait(TimeSpan.FromSeconds 120.0)) then failtestf "task %d did not finish within 120 s" f.TaskId.Value
    f.Task.Result

let private failureOf (f: AppFuture<'T>) =
    (try f.Task.Wait(TimeSpan.FromSeconds 120.0) |> ignore with _ -> ())
    if not f.IsCompleted then failtestf "task %d did not finish within 120 s" f.TaskId.Value
    if not f.IsFaulted then failtestf "task %d was expected to fail, it returned %A" f.TaskId.Value f.Task.Result
    f.Exception

let private startedCount (dir: string) = Directory.GetFiles(dir, "started-*").Length

// ---------------------------------------------------------------------------------------------------------------
// A client in a process of its own, for the kill -9 test: `Parsl.Tests --endpoint-client NAME GROUP DIR N`.

let clientMain (argv: string[]) =
    let name, group, dir, n = argv[0], argv[1], argv[2], int argv[3]
    let broker: BrokerOptions =
        { Host = "127.0.0.1"; Port = int argv[4]; VirtualHost = argv[5]; User = "client"; Password = argv[6]
          Tls = false; CaFile = None; ServerName = None }
    let opts = { EndpointOptions.defaults () with Endpoint = name; Broker = broker; Token = argv[7]; TaskGroupId = group }
    let ex, dfk = clientWith opts
    let app = App.func dfk (gated dir)
    let futures = [ for i in 1..n -> app (Arg.value i) ]
    // The kernel hands the tries to the executor on its own thread; then the broker confirms them.
    while ex.Outstanding < n do
        Thread.Sleep 20
    ex.AllPublishedAsync().Wait()
    printfn "SUBMITTED %d" futures.Length
    Console.Out.Flush()
    // Until the test kills it; if the test itself dies, stdin closes and this process ends too.
    Console.OpenStandardInput().CopyTo(Stream.Null)
    0

// ---------------------------------------------------------------------------------------------------------------

let private brokerFor' () : BrokerOptions =
    { Host = "127.0.0.1"; Port = 5672; VirtualHost = "/"; User = ""; Password = ""; Tls = false; CaFile = None; ServerName = None }

let wire =
    testList "Endpoint wire and template" [
        testProperty "a batch decodes to what was encoded" <| fun (tasks: (int64 * NonNull<string> * NonNull<string> * bool) list) ->
            let ts =
                [ for key, app, cmd, isCall in tasks ->
                      { Key = key
                        AppName = app.Get
                        Body = (if isCall then EndpointCall("h" + cmd.Get, Text.Encoding.UTF8.GetBytes cmd.Get) else EndpointCommand(cmd.Get, Some { Path = cmd.Get; Truncate = true }, None, 5L, [ cmd.Get ]))
                        Resources = [ "priority", "3" ]
                        UserConfig = [ "k", app.Get ] } ]
            let batch = { Definitions = [ "d", [| 1uy; 2uy |] ]; Assemblies = []; Tasks = ts }
            let defs, asms, back = EndpointWire.decodeBatch (ReadOnlyMemory(EndpointWire.encodeBatch batch))
            defs = batch.Definitions && asms = [] && back = (ts |> List.map Ok)

        test "one malformed task in a batch fails that task only" {
            let good = { Key = 7L; AppName = "a"; Body = EndpointCommand("true", None, None, -1L, []); Resources = []; UserConfig = [] }
            let bytes = EndpointWire.encodeBatch { Definitions = []; Assemblies = []; Tasks = [ good; { good with Key = 8L } ] }
            // The second task: key 8, app "a", then its body [6 fields: tag 1 = command, ...]; its tag becomes 9.
            let marker = [| 0x08uy; 0xa1uy; 0x61uy; 0x96uy; 0x01uy |]
            let i = seq { 0 .. bytes.Length - marker.Length } |> Seq.find (fun i -> bytes[i .. i + marker.Length - 1] = marker)
            let corrupt = Array.copy bytes
            corrupt[i + marker.Length - 1] <- 9uy
            let _, _, tasks = EndpointWire.decodeBatch (ReadOnlyMemory corrupt)
            Expect.equal tasks.Length 2 "both tasks are accounted for"
            Expect.equal tasks[0] (Ok good) "the good task decodes"
            match tasks[1] with
            | Error(Some 8L, why) -> Expect.stringContains why "unknown task body" "says what is wrong"
            | other -> failtestf "expected the second task to fail alone, got %A" other
        }

        testProperty "a value a template allows renders; a key it does not is refused by name" <| fun (n: PositiveInt) (bad: NonNull<string>) ->
            let template = Map [ "max_workers", { Default = "2"; Pattern = "[0-9]+" } ]
            let engine = Map [ "type", "HighThroughput"; "maxWorkersPerNode", "{{max_workers}}" ]
            let ok = Template.render template engine [ "max_workers", string n.Get ]
            let key = "x" + String(bad.Get |> Seq.filter Char.IsAsciiLetterOrDigit |> Array.ofSeq)
            let refused = Template.render template engine [ key, "1" ]
            ok = Ok(Map [ "type", "HighThroughput"; "maxWorkersPerNode", string n.Get ])
            && (match refused with Error(UnknownKey(k, [ "max_workers" ])) -> k = key | _ -> false)

        test "a template value outside the pattern is refused, defaults fill the rest" {
            let template = Map [ "max_workers", { Default = "2"; Pattern = "[1-8]" } ]
            let engine = Map [ "maxWorkersPerNode", "{{max_workers}}" ]
            Expect.equal (Template.render template engine []) (Ok(Map [ "maxWorkersPerNode", "2" ])) "the default"
            match Template.render template engine [ "max_workers", "99" ] with
            | Error(BadValue("max_workers", "99", _) as e) -> Expect.stringContains (Template.describe e) "does not match" "says why"
            | other -> failtestf "expected a refusal, got %A" other
        }

        test "a config round-trips through its JSON and a bad one names the field" {
            let c = EndpointConfig.template "ep1" { (brokerFor' ()) with User = "u" } "0123456789abcdef0123"
            Expect.equal (EndpointConfig.parse (EndpointConfig.render c)) c "round trip"
            let errors = EndpointConfig.validate { c with Tokens = [ "short" ]; Engine = Map [ "type", "Nope" ] }
            let fields = errors |> List.map (fun e -> e.Field)
            Expect.contains fields "endpoint.tokens" "a short token is refused"
            Expect.contains fields "endpoint.engine.type" "an unknown engine is refused"
        }

        test "BrokerLostTimeout must be positive or infinite, named in the error" {
            let bad = { EndpointOptions.defaults () with Endpoint = "ep"; Token = "t"; Broker = { (EndpointOptions.defaults ()).Broker with User = "u" }; BrokerLostTimeout = TimeSpan.Zero }
            let errors = EndpointOptions.validate bad
            Expect.exists errors (fun e -> e.Field = "EndpointExecutor.BrokerLostTimeout") "zero is refused, naming the field"
            let infinite = { bad with BrokerLostTimeout = Timeout.InfiniteTimeSpan }
            Expect.isEmpty (EndpointOptions.validate infinite) "infinite waits forever, and is allowed"
        }

        test "client options are validated once, naming the field" {
            let errors = EndpointOptions.validate { EndpointOptions.defaults () with Endpoint = "bad name"; Token = "" }
            let fields = errors |> List.map (fun e -> e.Field)
            Expect.contains fields "EndpointExecutor.Endpoint" "the endpoint name"
            Expect.contains fields "EndpointExecutor.Token" "the token"
            Expect.contains fields "EndpointExecutor.Broker.User" "the broker user"
            Expect.throwsT<ConfigurationError> (fun () -> DataFlowKernel.Load { config () with Executors = [ EndpointExecutor(EndpointOptions.defaults ()) ] } |> ignore) "at load"
        }
    ]

let private runsApps (home: string, name: string) =
    use _ep = new EndpointProcess(home, name)
    let ex, dfk = clientWith (clientOptions name)
    use _ = dfk
    waitFor "the endpoint's welcome" ex.Connected
    let square = App.func dfk checkedSquare
    let futures = [ for i in 1..20 -> square (Arg.value i) ]
    Expect.equal (futures |> List.map result) [ for i in 1..20 -> i * i ] "function apps ran on the endpoint"
    let failing = failureOf (square (Arg.value -3))
    match failing with
    | :? RemoteException as r ->
        Expect.equal r.TypeName "System.InvalidOperationException" "the remote exception keeps its type"
        Expect.stringContains r.Message "negative: -3" "and its message"
    | e -> failtestf "expected a RemoteException, got %O" e
    let out = Path.Combine(tempRunDir (), "out.txt")
    let shell = App.shellWith dfk { AppOptions.defaults with Stdout = Some(Path out) } (fun (x: int) -> sprintf "echo shell-$((%d * 2)); exit %d" x (if x = 3 then 3 else 0))
    Expect.equal (result (shell (Arg.value 5))) 0 "a shell app ran"
    Expect.stringContains (File.ReadAllText out) "shell-10" "its stdout went where the client said"
    match failureOf (shell (Arg.value 3)) with
    | :? BashExitFailure as b -> Expect.equal b.ExitCode 3 "a shell app's exit code arrives typed"
    | e -> failtestf "expected BashExitFailure, got %O" e

let integration =
    testSequenced <| testList "Endpoint through RabbitMQ" [
        test "function and shell apps run through an endpoint on a thread pool; a remote exception arrives typed" {
            broker () |> ignore
            runsApps (configureEndpoint threadPool Map.empty false)
        }

        test "function and shell apps run through an endpoint on the HTEx; UserEndpointConfig sets the worker count" {
            broker () |> ignore
            let engine = Map [ "type", "HighThroughput"; "maxWorkersPerNode", "{{max_workers}}" ]
            let template = Map [ "max_workers", { Default = "2"; Pattern = "[1-8]" } ]
            let home, name = configureEndpoint engine template false
            runsApps (home, name)
            use _ep = new EndpointProcess(home, name)
            let ex, dfk = clientWith (clientOptions name)
            use _ = dfk
            let count = App.funcWith dfk AppOptions.defaults (fun (_: int) -> Environment.GetEnvironmentVariable "PARSL_WORKER_COUNT")
            Expect.equal (result (count (Arg.value 0))) "2" "the template's default"
            // (Not above 2: the HTEx caps workers at this machine's cores.)
            let one = App.funcWith dfk { AppOptions.defaults with Resources = Map [ "user_endpoint_config", box (Map [ "max_workers", "1" ]) ] } (fun (_: int) -> Environment.GetEnvironmentVariable "PARSL_WORKER_COUNT")
            Expect.equal (result (one (Arg.value 0))) "1" "the value the client chose, seen inside the task"
            let refused = App.funcWith dfk { AppOptions.defaults with Resources = Map [ "user_endpoint_config", box (Map [ "partition", "debug" ]) ] } (fun (_: int) -> "ran")
            match failureOf (refused (Arg.value 0)) with
            | :? UserEndpointConfigRefused as e ->
                Expect.stringContains e.Message "'partition' is not allowed" "names the key"
                Expect.stringContains e.Message "max_workers" "and the keys allowed"
            | e -> failtestf "expected UserEndpointConfigRefused, got %O" e
            ignore ex
        }

        test "a wrong token or no broker permission runs nothing and fails with a clear error" {
            broker () |> ignore
            let home, name = configureEndpoint threadPool Map.empty false
            use _ep = new EndpointProcess(home, name)
            let marker = Path.Combine(tempRunDir (), "ran")
            let touch (p: string) = sprintf "touch %s" p
            let ex, dfk = clientWith { clientOptions name with Token = "wrong-token-0123456789" }
            use _ = dfk
            let app = App.shell dfk touch
            match failureOf (app (Arg.value marker)) with
            | :? EndpointAccessDenied as e -> Expect.stringContains e.Message "token" "says the token is wrong"
            | e -> failtestf "expected EndpointAccessDenied, got %O" e
            Expect.throwsT<EndpointAccessDenied> (fun () -> ex.Connected.GetAwaiter().GetResult() |> ignore) "the hello was refused too"
            let ex2, dfk2 = clientWith { clientOptions name with Broker = brokerFor "stranger" false }
            use _ = dfk2
            let app2 = App.shell dfk2 touch
            match failureOf (app2 (Arg.value marker)) with
            | :? EndpointAccessDenied as e ->
                Expect.stringContains e.Message "stranger" "names the broker user"
                Expect.stringContains e.Message "permission" "and the fix"
            | e -> failtestf "expected EndpointAccessDenied, got %O" e
            ignore ex2
            // A good client afterwards: the endpoint still runs tasks, and the refused ones never ran.
            let _, dfk3 = clientWith (clientOptions name)
            use _ = dfk3
            let ok = App.func dfk3 (fun (x: int) -> x + 1)
            Expect.equal (result (ok (Arg.value 1))) 2 "the endpoint is fine"
            Expect.isFalse (File.Exists marker) "nothing of the refused clients ran"
        }

        test "one malformed task fails that task only, and the endpoint stays usable" {
            broker () |> ignore
            let home, name = configureEndpoint threadPool Map.empty false
            use _ep = new EndpointProcess(home, name)
            let group = Guid.NewGuid().ToString("N")
            let queue = EndpointWire.resultQueue group
            let transport = (RabbitMqTransport.ConnectAsync(brokerFor "client" false, "test", TimeSpan.FromSeconds 30.0, CancellationToken.None)).Result :> IEndpointTransport
            use _t = { new IDisposable with member _.Dispose() = transport.DisposeAsync().AsTask().Wait() }
            transport.DeclareResultQueueAsync(queue, CancellationToken.None).Wait()
            let got = new Collections.Concurrent.BlockingCollection<ToClient>()
            let _sub = transport.ConsumeAsync(queue, 10, Func<Delivery, Task>(fun d -> got.Add(EndpointWire.decodeToClient d.Message.Body); d.Ack()), CancellationToken.None).Result
            let good = { Key = 7L; AppName = "echo"; Body = EndpointCommand("true", None, None, -1L, []); Resources = []; UserConfig = [] }
            let bytes = EndpointWire.encodeBatch { Definitions = []; Assemblies = []; Tasks = [ good; { good with Key = 8L }; { good with Key = 9L; Body = EndpointCall("no-such-definition", [| 0x90uy |]) } ] }
            // Task 8: key 8, app "echo", its body [6 fields: tag 1 = command, ...]; the tag becomes 9 (unknown).
            let marker = [| 0x08uy; 0xa4uy; 0x65uy; 0x63uy; 0x68uy; 0x6fuy; 0x96uy; 0x01uy |]
            let i = seq { 0 .. bytes.Length - marker.Length } |> Seq.find (fun i -> bytes[i .. i + marker.Length - 1] = marker)
            let corrupt = Array.copy bytes
            corrupt[i + 7] <- 9uy
            let headers = dict [ EndpointWire.ProtocolHeader, string EndpointWire.Version; EndpointWire.TokenHeader, token ]
            transport.SendToEndpointAsync(name, { Kind = EndpointWire.TasksKind; MessageId = "b1"; ReplyTo = queue; Headers = Collections.ObjectModel.ReadOnlyDictionary(headers); Body = ReadOnlyMemory corrupt }, CancellationToken.None).Wait()
            let outcomes = Dictionary<int64, WireOutcome>()
            let deadline = DateTime.UtcNow.AddSeconds 60.0
            while outcomes.Count < 3 && DateTime.UtcNow < deadline do
                let mutable m = Unchecked.defaultof<ToClient>
                if got.TryTake(&m, TimeSpan.FromSeconds 60.0) then
                    match m with
                    | ToClient.Results rs -> for r in rs do outcomes[r.Key] <- r.Outcome
                    | other -> failtestf "unexpected %A" other
            Expect.equal outcomes.Count 3 "every task got its own result"
            match outcomes[7L] with Value _ -> () | o -> failtestf "the good task ran, got %A" o
            match outcomes[8L] with Unserializable m -> Expect.stringContains m "could not read this task" "the malformed task failed alone" | o -> failtestf "got %A" o
            match outcomes[9L] with Unserializable m -> Expect.stringContains m "could not be loaded" "the undeserializable task failed alone" | o -> failtestf "got %A" o
            let _, dfk = clientWith (clientOptions name)
            use _ = dfk
            Expect.equal (result ((App.func dfk (fun (x: int) -> x * 3)) (Arg.value 3))) 9 "the endpoint is still usable"
        }

        test "a client of another protocol version gets a clear mismatch error and nothing runs" {
            broker () |> ignore
            let home, name = configureEndpoint threadPool Map.empty false
            use _ep = new EndpointProcess(home, name)
            let ex = EndpointExecutor(clientOptions name, 99)
            let dfk = load (fun c -> { c with Executors = [ ex ] })
            use _ = dfk
            match failureOf ((App.func dfk (fun (x: int) -> x)) (Arg.value 1)) with
            | :? VersionMismatch as e ->
                Expect.stringContains e.Message "protocol 99" "names the client's version"
                Expect.stringContains e.Message (sprintf "speaks %d" EndpointWire.Version) "and the endpoint's"
            | e -> failtestf "expected VersionMismatch, got %O" e
            Expect.throwsT<VersionMismatch> (fun () -> ex.Connected.GetAwaiter().GetResult() |> ignore) "the hello says so too"
        }

        test "an endpoint without the client's files fetches the assemblies once, by hash, and caches them" {
            broker () |> ignore
            let home, name = configureEndpointWith (fun c -> { c with SharedFileSystem = false }) threadPool Map.empty false
            use _ep = new EndpointProcess(home, name)
            let _, dfk = clientWith (clientOptions name)
            use _ = dfk
            let square = App.func dfk checkedSquare
            Expect.equal (result (square (Arg.value 9))) 81 "the function ran from fetched assemblies"
            let cached = Directory.GetFiles(Path.Combine(home, name, "assemblies"), "*.dll") |> Array.map Path.GetFileNameWithoutExtension
            let testsHash = Serialization.hashFile typeof<EndpointProcess>.Assembly.Location
            Expect.contains cached testsHash "the tests' assembly is cached under its hash"
            Expect.equal (result (square (Arg.value 4))) 16 "and used again"
        }

        test "two clients share one endpoint" {
            broker () |> ignore
            let home, name = configureEndpoint threadPool Map.empty false
            use _ep = new EndpointProcess(home, name)
            let _, a = clientWith (clientOptions name)
            let _, b = clientWith (clientOptions name)
            use _ = a
            use _ = b
            let fa = [ for i in 1..30 -> (App.func a (fun (x: int) -> x + 1000)) (Arg.value i) ]
            let fb = [ for i in 1..30 -> (App.func b (fun (x: int) -> x + 2000)) (Arg.value i) ]
            Expect.equal (fa |> List.map result) [ for i in 1..30 -> i + 1000 ] "client A's results, all of them"
            Expect.equal (fb |> List.map result) [ for i in 1..30 -> i + 2000 ] "client B's results, none crossed"
        }

        test "kill -9 the client mid-run: a new client with the same task-group id gets every result" {
            broker () |> ignore
            let home, name = configureEndpoint threadPool Map.empty false
            use _ep = new EndpointProcess(home, name)
            let dir = tempRunDir ()
            let group = Guid.NewGuid().ToString("N")
            let psi = ProcessStartInfo("dotnet")
            for a in [ Path.Combine(AppContext.BaseDirectory, "Parsl.Tests.dll"); "--endpoint-client"; name; group; dir; "6"
                       field "port"; field "vhost"; field "client_password"; token ] do
                psi.ArgumentList.Add a
            psi.RedirectStandardInput <- true
            psi.RedirectStandardOutput <- true
            psi.RedirectStandardError <- true
            use child = Process.Start psi
            // Killed on every way out of this test (and it exits by itself when its stdin closes).
            use _reap = { new IDisposable with member _.Dispose() = if not child.HasExited then child.Kill true }
            let childErr = child.StandardError.ReadToEndAsync()
            let line = child.StandardOutput.ReadLineAsync()
            if not (line.Wait(TimeSpan.FromSeconds 120.0)) || isNull line.Result then
                child.Kill true
                failtestf "the client did not submit: %s" (if childErr.Wait 5000 then childErr.Result else "")
            Expect.equal (line.Result.Trim()) "SUBMITTED 6" "the client submitted"
            Harness.pollUntil (TimeSpan.FromSeconds 120.0) "tries running on the endpoint" (fun () -> if startedCount dir >= 4 then Some() else None)
            Parsl.Node.Runtime.Native.kill (child.Id, 9) |> ignore
            child.WaitForExit()
            File.WriteAllText(Path.Combine(dir, "gate"), "")
            let ex, dfk = clientWith { clientOptions name with TaskGroupId = group }
            use _ = dfk
            let got =
                [ for _ in 1..6 ->
                      let t = ex.ReceiveUnclaimedAsync()
                      if not (t.Wait(TimeSpan.FromSeconds 120.0)) then failtest "a result did not arrive within 120 s"
                      t.Result ]
            Expect.isTrue (got |> List.forall (fun r -> isNull r.Error)) "every try succeeded"
            Expect.equal (got |> List.map (fun r -> unbox<int> r.Value) |> List.sort) [ 10; 20; 30; 40; 50; 60 ] "every result arrived"
            Expect.equal (got |> List.map (fun r -> r.TaskId) |> List.distinct |> List.length) 6 "once each, with the old client's task ids"
        }

        test "kill -9 the endpoint with tasks in flight: after a restart every task completes once" {
            broker () |> ignore
            let home, name = configureEndpoint threadPool Map.empty false
            let dir = tempRunDir ()
            let ex, dfk = clientWith (clientOptions name)
            use _ = dfk
            let first = new EndpointProcess(home, name)
            let app = App.func dfk (gated dir)
            let futures = [ for i in 1..8 -> app (Arg.value i) ]
            Harness.pollUntil (TimeSpan.FromSeconds 120.0) "four tries running on the endpoint" (fun () -> if startedCount dir >= 4 then Some() else None)
            first.Kill9()
            (first :> IDisposable).Dispose()
            File.WriteAllText(Path.Combine(dir, "gate"), "")
            use _second = new EndpointProcess(home, name)
            Expect.equal (futures |> List.map result) [ for i in 1..8 -> i * 10 ] "every task completed, with its own value"
            Expect.equal ex.Outstanding 0 "nothing left in flight"
            Expect.isGreaterThan (Directory.GetFiles(dir, "started-*").Length) 8 "the tries in flight at the kill ran again"
        }

        test "the broker stopped and started mid-run: the run completes" {
            broker () |> ignore
            let home, name = configureEndpoint threadPool Map.empty false
            use _ep = new EndpointProcess(home, name)
            let dir = tempRunDir ()
            let _, dfk = clientWith (clientOptions name)
            use _ = dfk
            let app = App.func dfk (gated dir)
            let futures = [ for i in 1..6 -> app (Arg.value i) ]
            Harness.pollUntil (TimeSpan.FromSeconds 120.0) "tries running on the endpoint" (fun () -> if startedCount dir >= 4 then Some() else None)
            let code, out = Harness.sh (sprintf "bash %s stop" (harnessScript ()))
            Expect.equal (code, out.Trim()) (0, "STOPPED") "the broker stopped"
            File.WriteAllText(Path.Combine(dir, "gate"), "")
            let later = [ for i in 7..9 -> app (Arg.value i) ]
            let code, out = Harness.shWithErrors (sprintf "bash %s" (harnessScript ()))
            if code <> 0 then
                // The later tests need the broker: start it again before failing this one.
                Harness.shWithErrors (sprintf "bash %s" (harnessScript ())) |> ignore
            Expect.equal code 0 (sprintf "the broker started again: %s" out)
            Expect.equal (futures @ later |> List.map result) [ for i in 1..9 -> i * 10 ] "every task completed"
        }

        test "the broker gone for good with tries in flight: they fail BrokerLost after BrokerLostTimeout, and cleanup returns" {
            broker () |> ignore
            let home, name = configureEndpoint threadPool Map.empty false
            use _ep = new EndpointProcess(home, name)
            let dir = tempRunDir ()
            let ex, dfk = clientWith { clientOptions name with BrokerLostTimeout = TimeSpan.FromSeconds 3.0 }
            use _ = dfk
            let app = App.func dfk (gated dir)
            // Gated: they run on the endpoint until the test ends, so no result can come back.
            let futures = [ for i in 1..4 -> app (Arg.value i) ]
            Harness.pollUntil (TimeSpan.FromSeconds 120.0) "tries running on the endpoint" (fun () -> if startedCount dir >= 4 then Some() else None)
            let code, out = Harness.sh (sprintf "bash %s stop" (harnessScript ()))
            try
                Expect.equal (code, out.Trim()) (0, "STOPPED") "the broker stopped"
                for f in futures do
                    match failureOf f with
                    | :? BrokerLost as b ->
                        Expect.equal b.Endpoint name "the error names the endpoint"
                        Expect.stringContains b.Message "BrokerLostTimeout" "and the option that bounds the wait"
                    | e -> failtestf "expected BrokerLost, got %O" e
                Expect.equal ex.Outstanding 0 "nothing left in flight"
                waitFor "the kernel's cleanup" ((dfk :> IAsyncDisposable).DisposeAsync().AsTask())
            finally
                // The later tests need the broker.
                let code, _ = Harness.shWithErrors (sprintf "bash %s" (harnessScript ()))
                if code <> 0 then Harness.shWithErrors (sprintf "bash %s" (harnessScript ())) |> ignore
        }

        test "through TLS with a CA made by the test" {
            broker () |> ignore
            let home, name = configureEndpoint threadPool Map.empty true
            use _ep = new EndpointProcess(home, name)
            let _, dfk = clientWith { clientOptions name with Broker = brokerFor "client" true }
            use _ = dfk
            Expect.equal (result ((App.func dfk (fun (x: int) -> x * 7)) (Arg.value 6))) 42 "a task through TLS"
            let wrongName = { clientOptions name with Broker = { brokerFor "client" true with ServerName = Some "not-the-broker"; Host = "127.0.0.1" }; ConnectTimeout = TimeSpan.FromSeconds 5.0 }
            Expect.throws (fun () -> clientWith wrongName |> ignore) "a certificate for another name is refused"
        }

        test "parsl-endpoint configure, list, start and stop" {
            broker () |> ignore
            let home = tempRunDir ()
            let cliName = "cli-" + Guid.NewGuid().ToString("N").Substring(0, 8)
            let run (args: string list) =
                let psi = ProcessStartInfo("dotnet")
                for a in endpointDll () :: "--home" :: home :: args do
                    psi.ArgumentList.Add a
                psi.RedirectStandardOutput <- true
                psi.RedirectStandardError <- true
                use p = Process.Start psi
                let out = p.StandardOutput.ReadToEndAsync()
                let err = p.StandardError.ReadToEnd()
                if not (p.WaitForExit 120000) then
                    p.Kill true
                    failtest "parsl-endpoint did not exit"
                p.ExitCode, out.Result + err
            let b = brokerFor "endpoint" false
            let code, out = run [ "configure"; cliName; "--broker-port"; string b.Port; "--vhost"; b.VirtualHost; "--user"; "endpoint"; "--password"; b.Password ]
            Expect.equal code 0 out
            let config = Path.Combine(home, cliName, "config.json")
            Expect.equal (File.GetUnixFileMode config) (UnixFileMode.UserRead ||| UnixFileMode.UserWrite) "the config (it holds secrets) is private"
            let cliToken = (out.Split('\n') |> Array.find (fun l -> l.StartsWith "token=")).Substring 6
            Expect.stringContains (snd (run [ "list" ])) (sprintf "%-24s stopped" cliName) "listed, stopped"
            use ep = new EndpointProcess(home, cliName)
            Expect.stringContains (snd (run [ "list" ])) (sprintf "running (pid %d)" ep.Pid) "listed, running"
            let _, dfk = clientWith { clientOptions cliName with Token = cliToken }
            Expect.equal (result ((App.func dfk (fun (x: int) -> x - 1)) (Arg.value 1))) 0 "it runs tasks"
            Expect.stringContains (snd (run [ "list" ])) "heartbeat" "list shows the daemon's heartbeat"
            (dfk :> IDisposable).Dispose()
            let code, out = run [ "stop"; cliName ]
            Expect.equal code 0 out
            Expect.isTrue ep.Process.HasExited "the daemon exited"
            Expect.stringContains (snd (run [ "list" ])) (sprintf "%-24s stopped" cliName) "listed, stopped again"
            let code, out = run [ "configure"; cliName; "--user"; "endpoint" ]
            Expect.equal code 1 "configure does not overwrite"
            Expect.stringContains out "--force" "and says how"
        }
    ]

let tests = testList "Endpoint" [ wire; integration ]
