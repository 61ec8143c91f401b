module Parsl.Tests.HtexTests

open System
open System.IO
open Expecto
open Parsl
open Parsl.Executors
open Parsl.Executors.HighThroughput
open Parsl.Node.HighThroughput
open Parsl.Providers
open Parsl.Tests.TestUtil
open System.Runtime.InteropServices
open System.Threading

[<DllImport("libc", SetLastError = true)>]
extern int kill(int pid, int signal)

/// A record and a union that travel as arguments and results.
type Point = { X: int; Y: int; Label: string }

type Shape =
    | Circle of radius: float
    | Rect of Point * Point

/// Short heartbeats and polls so failures are seen quickly.
let fastOptions (f: HtexOptions -> HtexOptions) =
    f
        { HtexOptions.defaults () with
            MaxWorkersPerNode = Some 2
            HeartbeatPeriod = TimeSpan.FromMilliseconds 200.0
            HeartbeatThreshold = TimeSpan.FromSeconds 3.0
            StrategyPeriod = TimeSpan.FromMilliseconds 200.0
            Provider = LocalProvider { LocalProvider.Defaults with StatusPollingInterval = TimeSpan.FromMilliseconds 200.0 } }

let withHtex (f: HtexOptions -> HtexOptions) =
    let htex = HighThroughputExecutor(fastOptions f)
    let dfk = load (fun c -> { c with Executors = [ htex ] })
    htex, dfk

let e2e =
    testList "HTEx end to end" [
        test "function apps, closures, records and unions run on worker processes" {
            let htex, dfk = withHtex id
            use _ = dfk
            let square = App.func dfk (fun (x: int) -> x * x)
            let offset = 1000 + Environment.ProcessId % 1
            let shift = App.func dfk (fun (x: int) -> x + offset)
            let pid = App.func dfk (fun (_: int) -> Environment.ProcessId)
            let moved = App.func dfk (fun (p: Point) -> { p with X = p.X + 1; Label = p.Label + "!" })
            let area = App.func dfk (fun (s: Shape) -> match s with Circle r -> Rect({ X = 0; Y = 0; Label = "c" }, { X = int r; Y = int r; Label = "c" }) | r -> r)
            let a = square (Arg.value 7)
            let b = shift (Arg.future a)
            Expect.equal (await b.Task) 1049 "closure captured offset"
            let p = await (moved (Arg.value { X = 1; Y = 2; Label = "p" })).Task
            Expect.equal p { X = 2; Y = 2; Label = "p!" } "record round trip"
            let s = await (area (Arg.value (Circle 3.0))).Task
            Expect.equal s (Rect({ X = 0; Y = 0; Label = "c" }, { X = 3; Y = 3; Label = "c" })) "union round trip"
            let remote = await (pid (Arg.value 0)).Task
            Expect.notEqual remote Environment.ProcessId "ran in another process"
            let managers = await (htex.ConnectedManagersAsync())
            Expect.equal managers.Length 1 "one manager"
            Expect.equal managers.Head.WorkerCount 2 "two workers"
        }
        test "a manager on this host connects over the local socket; with SameHostSocket off it uses TCP with CURVE" {
            for sameHost in [ true; false ] do
                let htex, dfk = withHtex (fun o -> { o with SameHostSocket = sameHost })
                use _ = dfk
                let square = App.func dfk (fun (x: int) -> x * x)
                let results = [ for i in 1..50 -> square (Arg.value i) ] |> List.map (fun f -> await f.Task)
                Expect.equal results [ for i in 1..50 -> i * i ] (sprintf "every result (SameHostSocket = %b)" sameHost)
                let m = (await (htex.ConnectedManagersAsync())).Head
                Expect.equal m.Local sameHost (sprintf "connected locally = %b" sameHost)
                Expect.equal htex.LocalSocket.IsSome sameHost "local socket only when asked for"
                Expect.isSome htex.CertificateDirectory "CURVE keys in both cases"
        }
        test "arguments and results far larger than a socket's buffer travel intact" {
            let _, dfk = withHtex id
            use _ = dfk
            // 8 MB each way: every local connection has to queue what the socket cannot take at once.
            let reverse = App.func dfk (fun (b: byte[]) -> Array.rev b)
            let data = Array.init (8 * 1024 * 1024) (fun i -> byte (i * 7 % 251))
            let results = [ for _ in 1..3 -> reverse (Arg.value data) ] |> List.map (fun f -> await f.Task)
            for r in results do
                Expect.isTrue (r = Array.rev data) "the reversed bytes came back whole"
        }
        test "a process that is not one of the manager's workers cannot join its pool and gets no task" {
            let htex, dfk = withHtex id
            use _ = dfk
            let square = App.func dfk (fun (x: int) -> x * x)
            // The first result makes the manager start its second worker; the impostor says hello as that worker
            // before the real one (a process start away) can.
            Expect.equal (await (square (Arg.value 3)).Task) 9 "first result"
            let m = (await (htex.ConnectedManagersAsync())).Head
            use impostor = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified)
            impostor.Connect(LocalSocket.endpoint (sprintf "parsl-net-worker-%s-%d" m.ManagerId m.Pid))
            let hello = Text.Encoding.UTF8.GetBytes(sprintf "1 1 %d" Environment.ProcessId)
            // The manager may drop the connection before the hello is even sent (then it is reset).
            let closed (e: exn) = (e :? System.Net.Sockets.SocketException)
            let _ = (try impostor.Send(Frames.encode hello) with e when closed e -> 0)
            let results = [ for i in 1..20 -> square (Arg.value i) ] |> List.map (fun f -> await f.Task)
            Expect.equal results [ for i in 1..20 -> i * i ] "the real workers ran everything"
            impostor.ReceiveTimeout <- 10000
            let got = try impostor.Receive(Array.zeroCreate<byte> 16) with e when closed e && (e :?> System.Net.Sockets.SocketException).SocketErrorCode <> System.Net.Sockets.SocketError.TimedOut -> 0
            Expect.equal got 0 "the manager closed the impostor's connection without sending it anything"
        }
        test "what tasks print goes to the block's output files, and their results still arrive" {
            let _, dfk = withHtex id
            let runDir = dfk.RunDir
            let values =
                use _ = dfk
                let chatty =
                    App.func dfk (fun (x: int) ->
                        printfn "task %d says hello on stdout" x
                        eprintfn "task %d says hello on stderr" x
                        Console.Out.Write(String('x', 100_000))
                        Console.Out.Flush()
                        x + 1)
                [ for i in 1..20 -> chatty (Arg.value i) ] |> List.map (fun f -> await f.Task)
            Expect.equal values [ 2..21 ] "every result arrived intact"
            let text suffix =
                Directory.GetFiles(Path.Combine(runDir, "submit_scripts"), "*" + suffix)
                |> Array.map File.ReadAllText
                |> String.concat ""
            Expect.stringContains (text ".out") "task 7 says hello on stdout" "stdout of the block"
            Expect.stringContains (text ".err") "task 7 says hello on stderr" "stderr of the block"
        }
    ]


/// Waits until `f` holds, polling; fails the test after `seconds`.
let waitUntil (seconds: float) (what: string) (f: unit -> bool) =
    let deadline = DateTime.UtcNow.AddSeconds seconds
    while not (f ()) do
        if DateTime.UtcNow > deadline then failtestf "timed out after %g s waiting for %s" seconds what
        Thread.Sleep 20

/// Process ids whose process group is `pgid` (from /proc).
let processesInGroup (pgid: int) =
    Directory.GetDirectories "/proc"
    |> Array.choose (fun d ->
        match Int32.TryParse(Path.GetFileName d) with
        | true, pid ->
            try
                let stat = File.ReadAllText(Path.Combine(d, "stat"))
                // Fields after the command name (which may contain spaces) start after the last ')'.
                let rest = stat.Substring(stat.LastIndexOf ')' + 2).Split ' '
                if int rest[2] = pgid then Some pid else None
            with _ -> None
        | _ -> None)

let blockGroups (htex: HighThroughputExecutor) =
    await (htex.BlocksAsync()) |> List.choose (fun b -> b.JobId) |> List.map int

let expectNoLeftovers (groups: int list) =
    for g in groups do
        waitUntil 10.0 (sprintf "process group %d to be gone" g) (fun () -> (processesInGroup g).Length = 0)

let tmpFile name = Path.Combine(tempRunDir (), name)

let gateWait (gate: string) =
    let deadline = DateTime.UtcNow.AddSeconds 60.0
    while not (File.Exists gate) && DateTime.UtcNow < deadline do
        Thread.Sleep 10

let shells =
    testList "HTEx shell apps" [
        test "shell apps run on workers with bash semantics" {
            let htex, dfk = withHtex id
            let out = tmpFile "out.txt"
            let groups =
                use _ = dfk
                let echo = App.shell dfk (fun (x: int) -> sprintf "echo hello %d >> %s" x out)
                let fail = App.shell dfk (fun (code: int) -> sprintf "exit %d" code)
                Expect.equal (await (echo (Arg.value 5)).Task) 0 "exit 0 is result 0"
                Expect.equal (File.ReadAllText out) "hello 5\n" "the command ran"
                let e = errorOf (fail (Arg.value 3))
                match e with
                | :? BashExitFailure as b -> Expect.equal b.ExitCode 3 "exit code"
                | e -> failtestf "expected BashExitFailure, got %O" e
                blockGroups htex
            expectNoLeftovers groups
        }
    ]

let priorities =
    testList "HTEx priorities" [
        test "lower priority values run first, FIFO among equals, unprioritised last" {
            let htex, dfk = withHtex (fun o -> { o with MaxWorkersPerNode = Some 1 })
            use _ = dfk
            let gate = tmpFile "gate"
            let order = tmpFile "order"
            let block = App.func dfk (fun (g: string) -> gateWait g; 0)
            let record p label =
                let opts = match p with Some (v: int) -> { AppOptions.defaults with Resources = Map [ "priority", box v ] } | None -> AppOptions.defaults
                let app = App.funcWith dfk opts (fun (l: string) -> File.AppendAllText(order, l + "\n"); l)
                app (Arg.value label)
            let first = block (Arg.value gate)
            waitUntil 60.0 "the gate task to reach the worker" (fun () ->
                let ms = await (htex.ConnectedManagersAsync())
                ms |> List.sumBy (fun m -> m.TasksInFlight) = 1)
            let fs =
                [ record None "none1"; record (Some 5) "p5"; record (Some 1) "p1a"; record (Some 3) "p3"
                  record (Some 1) "p1b"; record None "none2" ]
            waitUntil 30.0 "every task to be queued" (fun () -> htex.Outstanding = 7)
            File.WriteAllText(gate, "")
            for f in fs do
                await f.Task |> ignore
            await first.Task |> ignore
            Expect.equal (File.ReadAllLines order |> List.ofArray) [ "p1a"; "p1b"; "p3"; "p5"; "none1"; "none2" ] "Parsl's order"
        }
        test "cleanup lets tries on workers finish and fails tries that never reached one" {
            let htex, dfk = withHtex (fun o -> { o with MaxWorkersPerNode = Some 1 })
            let gate = tmpFile "gate"
            let started = tmpFile "started"
            let running = App.func dfk (fun (g: string) -> File.WriteAllText(started, ""); gateWait g; 1)
            let queued = App.func dfk (fun (x: int) -> x)
            let r = running (Arg.value gate)
            waitUntil 60.0 "the first task to run" (fun () -> File.Exists started)
            let q = queued (Arg.value 2)
            waitUntil 30.0 "the second task to be queued" (fun () -> htex.Outstanding = 2)
            let cleanup = dfk.CleanupAsync()
            Expect.isTrue (errorOf q :? KernelShutdownError) "the queued try never starts"
            File.WriteAllText(gate, "")
            Expect.equal (await r.Task) 1 "the running try finished"
            cleanup.Wait(TimeSpan.FromSeconds 60.0) |> ignore
        }
        test "an unknown resource key is refused" {
            let _, dfk = withHtex (fun o -> { o with Provider = LocalProvider { LocalProvider.Defaults with InitBlocks = 0 } })
            use _ = dfk
            let app = App.funcWith dfk { AppOptions.defaults with Resources = Map [ "cores", box 2 ] } (fun (x: int) -> x)
            Expect.isTrue (errorOf (app (Arg.value 1)) :? InvalidResourceSpecification) "only priority is accepted"
        }
    ]

let failures =
    testList "HTEx failures" [
        test "a worker whose manager is gone exits with a message instead of crashing" {
            let psi = Diagnostics.ProcessStartInfo("dotnet")
            for a in [ HtexOptions.defaultWorkerDll (); "--worker"; "0"; "--generation"; "1"; "--connect"; "parsl-net-no-such-manager" ] do
                psi.ArgumentList.Add a
            psi.RedirectStandardError <- true
            use p = Diagnostics.Process.Start psi
            let err = p.StandardError.ReadToEnd()
            Expect.isTrue (p.WaitForExit 60000) "it exits"
            Expect.equal p.ExitCode 2 "exit code 2"
            Expect.stringContains err "cannot reach its manager" "says why"
        }
        test "a worker killed mid-task fails that task with WorkerLost, and the next task runs" {
            let htex, dfk = withHtex id
            let pidFile = tmpFile "pid"
            let groups =
                use _ = dfk
                let victim = App.func dfk (fun (p: string) -> File.WriteAllText(p, string Environment.ProcessId); Thread.Sleep 60000; 0)
                let square = App.func dfk (fun (x: int) -> x * x)
                let f = victim (Arg.value pidFile)
                waitUntil 60.0 "the task to start" (fun () -> File.Exists pidFile && File.ReadAllText pidFile <> "")
                kill (int (File.ReadAllText pidFile), 9) |> ignore
                Expect.isTrue (errorOf f :? WorkerLost) "WorkerLost"
                Expect.equal (await (square (Arg.value 6)).Task) 36 "the pool still works"
                // The worker was restarted: two workers again.
                waitUntil 30.0 "both workers busy" (fun () ->
                    let gs = [ for i in 1..2 -> (App.func dfk (fun (_: int) -> Environment.ProcessId)) (Arg.value i) ]
                    gs |> List.map (fun g -> await g.Task) |> List.forall (fun p -> p <> int (File.ReadAllText pidFile)))
                blockGroups htex
            expectNoLeftovers groups
        }
        test "a stopped manager is lost after the heartbeat threshold: ManagerLost" {
            let htex, dfk =
                withHtex (fun o -> { o with HeartbeatPeriod = TimeSpan.FromMilliseconds 100.0; HeartbeatThreshold = TimeSpan.FromSeconds 1.0 })
            let started = tmpFile "started"
            let mutable managerPid = 0
            let groups =
                use _ = dfk
                try
                    let slow = App.func dfk (fun (p: string) -> File.WriteAllText(p, "x"); Thread.Sleep 60000; 0)
                    let f = slow (Arg.value started)
                    waitUntil 60.0 "the task to start" (fun () -> File.Exists started)
                    managerPid <- (await (htex.ConnectedManagersAsync())).Head.Pid
                    kill (managerPid, 19) |> ignore // SIGSTOP
                    match errorOf f with
                    | :? ManagerLost as m -> Expect.equal m.Hostname Environment.MachineName "host named"
                    | e -> failtestf "expected ManagerLost, got %O" e
                finally
                    if managerPid <> 0 then kill (managerPid, 18) |> ignore // SIGCONT
                blockGroups htex
            expectNoLeftovers groups
        }
        test "a manager killed on a local connection is lost at once, not after the heartbeat threshold" {
            // A threshold far beyond the test's own 60 s wait: only the closed connection can tell.
            let htex, dfk = withHtex (fun o -> { o with HeartbeatThreshold = TimeSpan.FromSeconds 600.0 })
            let started = tmpFile "started"
            let groups =
                use _ = dfk
                let slow = App.func dfk (fun (p: string) -> File.WriteAllText(p, "x"); Thread.Sleep 60000; 0)
                let f = slow (Arg.value started)
                waitUntil 60.0 "the task to start" (fun () -> File.Exists started)
                let m = (await (htex.ConnectedManagersAsync())).Head
                Expect.isTrue m.Local "connected locally"
                kill (m.Pid, 9) |> ignore
                match errorOf f with
                | :? ManagerLost as lost -> Expect.equal lost.Hostname Environment.MachineName "host named"
                | e -> failtestf "expected ManagerLost, got %O" e
                blockGroups htex
            expectNoLeftovers groups
        }
        test "a launch command that fails puts the executor in a bad state carrying its exit code and output" {
            let htex, dfk =
                withHtex (fun o -> { o with WorkerCommand = Some [ "/bin/sh"; "-c"; "echo no-such-runtime >&2; exit 7"; "sh" ] })
            use _ = dfk
            let app = App.func dfk (fun (x: int) -> x)
            match errorOf (app (Arg.value 1)) with
            | :? BadStateException as b ->
                Expect.stringContains b.Message "exit code 7" "exit code"
                Expect.stringContains b.Message "no-such-runtime" "block output"
            | e -> failtestf "expected BadStateException, got %O" e
            Expect.isTrue (errorOf (app (Arg.value 2)) :? BadStateException) "later tasks fail at once"
        }
        test "Windowed 2 tolerates one failed block and goes bad once the two newest blocks failed" {
            let htex, dfk =
                withHtex (fun o ->
                    { o with
                        BlockErrorHandler = Parsl.Jobs.BlockErrorHandler.Windowed 2
                        WorkerCommand = Some [ "/bin/sh"; "-c"; "echo broken-runtime >&2; exit 5"; "sh" ] })
            use _ = dfk
            let app = App.func dfk (fun (x: int) -> x)
            match errorOf (app (Arg.value 1)) with
            | :? BadStateException as b ->
                Expect.stringContains b.Message "2 of 2 blocks failed" "both blocks counted"
                Expect.stringContains b.Message "broken-runtime" "block output"
            | e -> failtestf "expected BadStateException, got %O" e
            let blocks = await (htex.BlocksAsync())
            Expect.containsAll (blocks |> List.map (fun b -> b.BlockId)) [ "0"; "1" ] (sprintf "a second block was tried after the first failed: %A" blocks)
        }
        test "a BlockErrorHandler of Windowed 0 is refused, naming the field" {
            let o = { HtexOptions.defaults () with BlockErrorHandler = Parsl.Jobs.BlockErrorHandler.Windowed 0 }
            Expect.contains (HtexOptions.validate o |> List.map (fun e -> e.Field)) "HighThroughputExecutor.BlockErrorHandler" "field"
        }
        test "a manager that hears nothing from the interchange exits after the threshold, taking its workers" {
            // A port nobody listens on: bind and release one.
            let port =
                let l = new Net.Sockets.TcpListener(Net.IPAddress.Loopback, 0)
                l.Start()
                let p = (l.LocalEndpoint :?> Net.IPEndPoint).Port
                l.Stop()
                p
            let psi = Diagnostics.ProcessStartInfo("dotnet")
            for a in [ HtexOptions.defaultWorkerDll (); "--manager"; "--address"; sprintf "tcp://127.0.0.1:%d" port; "--block-id"; "t"
                       "--hb-period"; "100"; "--hb-threshold"; "1000"; "--max-workers-per-node"; "1" ] do
                psi.ArgumentList.Add a
            psi.RedirectStandardError <- true
            use p = Diagnostics.Process.Start psi
            let log = p.StandardError.ReadToEndAsync()
            Expect.isTrue (p.WaitForExit 60000) "the manager exited"
            Expect.equal p.ExitCode 2 "exit code 2: interchange lost"
            let text = await log
            Expect.stringContains text "heard nothing from the interchange" "says why"
            let worker = Text.RegularExpressions.Regex.Match(text, "worker 0 started as pid (\\d+)")
            Expect.isTrue worker.Success "a worker was started"
            waitUntil 10.0 "the worker to be gone" (fun () -> not (Directory.Exists(sprintf "/proc/%s" worker.Groups[1].Value)))
        }
        test "a manager of another version is refused: its block fails with VersionMismatch, and with every block failed the executor" {
            let dll = HtexOptions.defaultWorkerDll ()
            let _, dfk = withHtex (fun o -> { o with WorkerCommand = Some [ "dotnet"; dll; "--parsl-version"; "0.0.1-other" ] })
            use _ = dfk
            let app = App.func dfk (fun (x: int) -> x)
            match errorOf (app (Arg.value 1)) with
            | :? BadStateException as b ->
                Expect.stringContains b.Message "0.0.1-other" "names the manager's version"
                Expect.isTrue (b.InnerException :? VersionMismatch) "caused by VersionMismatch"
            | e -> failtestf "expected BadStateException, got %O" e
        }
        test "an unserializable argument fails that task with SerializationError; the executor keeps working" {
            let _, dfk = withHtex id
            use _ = dfk
            let length = App.func dfk (fun (s: Stream) -> s.Length)
            let useCts = App.func dfk (fun (c: CancellationTokenSource) -> c.IsCancellationRequested)
            let square = App.func dfk (fun (x: int) -> x * x)
            use fs = File.Create(tmpFile "stream")
            Expect.isTrue (errorOf (length (Arg.value (fs :> Stream))) :? SerializationError) "FileStream refused"
            use cts = new CancellationTokenSource()
            Expect.isTrue (errorOf (useCts (Arg.value cts)) :? SerializationError) "CancellationTokenSource refused"
            Expect.equal (await (square (Arg.value 4)).Task) 16 "next task runs"
        }
        test "cancelling a running try kills its worker, fails it as cancelled, and the pool goes on" {
            let _, dfk = withHtex id
            use _ = dfk
            let started = tmpFile "started"
            let slow = App.func dfk (fun (p: string) -> File.WriteAllText(p, "x"); Thread.Sleep 60000; 0)
            let square = App.func dfk (fun (x: int) -> x * x)
            let f = slow (Arg.value started)
            waitUntil 60.0 "the task to start" (fun () -> File.Exists started)
            f.Cancel() |> ignore
            Expect.isTrue (errorOf f :? OperationCanceledException) "cancelled"
            Expect.equal (await (square (Arg.value 9)).Task) 81 "next task runs"
        }
        test "an exception in the app comes back as RemoteException with type, message and remote stack" {
            let _, dfk = withHtex id
            use _ = dfk
            let boom = App.func dfk (fun (x: int) -> if x > 0 then invalidArg "x" "too big" else x)
            match errorOf (boom (Arg.value 1)) with
            | :? RemoteException as r ->
                Expect.equal r.TypeName "System.ArgumentException" "type"
                Expect.stringContains r.Message "too big" "message"
                Expect.isNotEmpty r.RemoteStackTrace "stack"
            | e -> failtestf "expected RemoteException, got %O" e
        }
    ]

/// A registration as a stranger's manager would send it (right versions, one worker).
let intruder id =
    { ProtocolVersion = Protocol.Version
      ParslVersion = Protocol.parslVersion ()
      RuntimeVersion = Protocol.runtimeVersion ()
      ManagerId = id
      BlockId = "x"
      Hostname = "intruder"
      WorkerCount = 1
      PrefetchCapacity = 0
      Pid = 1 }

/// An executor with no blocks (so no manager of its own) and one task waiting in its interchange.
let withQueuedTask () =
    let htex, dfk = withHtex (fun o -> { o with Provider = LocalProvider { LocalProvider.Defaults with InitBlocks = 0; MaxBlocks = 0 } })
    let app = App.func dfk (fun (x: int) -> x + 1)
    let f = app (Arg.value 1)
    waitUntil 30.0 "the task to be queued" (fun () -> htex.Outstanding = 1)
    htex, dfk, f

let security =
    testList "HTEx CURVE" [
        test "a local connection without the client's key gets no task; one with it does" {
            let htex, dfk, f = withQueuedTask ()
            use _ = dfk
            let name = htex.LocalSocket.Value
            let registration id = Protocol.encodeToInterchange (Register(intruder id))
            /// Connects, says `token` then registers; true if a batch of tasks comes back within 2 s.
            let tryWith (token: string) id =
                use s = LocalSocket.connect name
                let closed (e: exn) = (e :? System.Net.Sockets.SocketException)
                try
                    s.Send(Frames.encode (Text.Encoding.UTF8.GetBytes token)) |> ignore
                    s.Send(Frames.encode (registration id)) |> ignore
                with e when closed e -> ()
                s.ReceiveTimeout <- 2000
                // The interchange may have closed the connection already (then the stream cannot even be made).
                match (try Some(new System.Net.Sockets.NetworkStream(s, false)) with e when closed e || (e :? IOException) -> None) with
                | None -> false
                | Some stream ->
                    use stream = stream
                    let rec read () =
                        match (try Frames.read stream with e when closed e || (e :? IOException) -> None) with
                        | None -> false
                        | Some frame ->
                            match Protocol.decodeToManager frame with
                            | Tasks _ -> true
                            | _ -> read ()
                    read ()
            Expect.isFalse (tryWith "" "nokey") "no key: nothing"
            Expect.isFalse (tryWith "an-invented-key-of-the-right-length-00000" "wrong") "a wrong key: nothing"
            Expect.isEmpty (await (htex.ConnectedManagersAsync())) "nobody registered"
            // The run's key: registered, and the task arrives (so the checks above can fail).
            let client = File.ReadAllLines(Path.Combine(htex.CertificateDirectory.Value, "client.key"))
            Expect.isTrue (tryWith (client[1].Trim()) "good") "the keyed connection gets the task"
            ignore f
        }
        test "a local connection that sends a garbage frame length is dropped and the executor keeps working" {
            let htex, dfk = withHtex id
            use _ = dfk
            let app = App.func dfk (fun (x: int) -> x * 3)
            Expect.equal (await (app (Arg.value 1)).Task) 3 "running"
            for length in [ Int32.MaxValue - 8; -5 ] do
                use s = LocalSocket.connect htex.LocalSocket.Value
                let closed (e: exn) = (e :? System.Net.Sockets.SocketException)
                // Before it has shown the key, a peer cannot make the client allocate gigabytes (or fail on a negative size).
                (try s.Send(Array.append (BitConverter.GetBytes length) (Array.zeroCreate 64)) with e when closed e -> 0) |> ignore
                s.ReceiveTimeout <- 10_000
                let got = try s.Receive(Array.zeroCreate<byte> 16) with e when closed e && (e :?> System.Net.Sockets.SocketException).SocketErrorCode <> System.Net.Sockets.SocketError.TimedOut -> 0
                Expect.equal got 0 (sprintf "length %d: the interchange closed the connection" length)
            Expect.equal ([ for i in 1..10 -> app (Arg.value i) ] |> List.map (fun f -> await f.Task)) [ for i in 1..10 -> i * 3 ] "still running"
        }
        test "with encryption on, a socket without the key gets no task; one with the keys does" {
            let htex, dfk, f = withQueuedTask ()
            use _ = dfk
            let port = htex.WorkerPort.Value
            let register (s: NetMQ.Sockets.DealerSocket) id =
                NetMQ.OutgoingSocketExtensions.SendFrame(s, Protocol.encodeToInterchange (Register(intruder id)))
            let gotTask (s: NetMQ.Sockets.DealerSocket) =
                let mutable frame: byte[] = null
                let mutable got = false
                let deadline = DateTime.UtcNow.AddSeconds 2.0
                while not got && DateTime.UtcNow < deadline do
                    if NetMQ.ReceivingSocketExtensions.TryReceiveFrameBytes(s, TimeSpan.FromMilliseconds 100.0, &frame) then
                        match Protocol.decodeToManager frame with
                        | Tasks _ -> got <- true
                        | _ -> ()
                got
            // No CURVE at all.
            use plain = new NetMQ.Sockets.DealerSocket()
            plain.Options.Identity <- Text.Encoding.UTF8.GetBytes "plain"
            plain.Connect(sprintf "tcp://127.0.0.1:%d" port)
            register plain "plain"
            Expect.isFalse (gotTask plain) "a plain socket gets nothing"
            // CURVE with a key of its own choosing for the server.
            use wrong = new NetMQ.Sockets.DealerSocket()
            wrong.Options.Identity <- Text.Encoding.UTF8.GetBytes "wrong"
            wrong.Options.CurveServerKey <- NetMQ.NetMQCertificate().PublicKey
            wrong.Options.CurveCertificate <- NetMQ.NetMQCertificate()
            wrong.Connect(sprintf "tcp://127.0.0.1:%d" port)
            register wrong "wrong"
            Expect.isFalse (gotTask wrong) "a socket with the wrong server key gets nothing"
            Expect.isEmpty (await (htex.ConnectedManagersAsync())) "nobody registered"
            // The run's keys: the handshake succeeds and the task arrives (so the test above can fail).
            let dir = htex.CertificateDirectory.Value
            use good = new NetMQ.Sockets.DealerSocket()
            good.Options.Identity <- Text.Encoding.UTF8.GetBytes "good"
            good.Options.CurveServerKey <- NetMQ.NetMQCertificate.FromPublicKey(File.ReadAllText(Path.Combine(dir, "server.key")).Trim()).PublicKey
            let client = File.ReadAllLines(Path.Combine(dir, "client.key"))
            good.Options.CurveCertificate <- NetMQ.NetMQCertificate(client[1], client[0])
            good.Connect(sprintf "tcp://127.0.0.1:%d" port)
            // The challenge and response (see HtexSecurityTests) comes before the registration.
            NetMQ.OutgoingSocketExtensions.SendFrame(good, Handshake.hello ())
            let mutable frame: byte[] = null
            Expect.isTrue (NetMQ.ReceivingSocketExtensions.TryReceiveFrameBytes(good, TimeSpan.FromSeconds 30.0, &frame)) "challenged"
            match Protocol.decodeToManager frame with
            | Challenge nonce -> NetMQ.OutgoingSocketExtensions.SendFrame(good, Handshake.proof (Handshake.key (client[1].Trim())) nonce good.Options.Identity)
            | m -> failtestf "expected a challenge, got %A" m
            register good "good"
            Expect.isTrue (gotTask good) "the keyed socket gets the task"
            ignore f
        }
    ]

let scaling =
    testList "HTEx blocks" [
        test "a manager drains after drain_period and a new block takes later tasks" {
            let htex, dfk = withHtex (fun o -> { o with DrainPeriod = Some(TimeSpan.FromSeconds 1.5) })
            let groups =
                use _ = dfk
                let square = App.func dfk (fun (x: int) -> x * x)
                Expect.equal (await (square (Arg.value 3)).Task) 9 "runs before draining"
                waitUntil 30.0 "the first block to drain and end" (fun () ->
                    await (htex.BlocksAsync()) |> List.exists (fun b -> b.BlockId = "0" && b.Status.State = Completed))
                Expect.equal (await (square (Arg.value 4)).Task) 16 "a new block runs the next task"
                Expect.isGreaterThan (await (htex.BlocksAsync())).Length 1 "a second block was started"
                blockGroups htex
            expectNoLeftovers groups
        }
        test "scales out to max_blocks under load and back to min_blocks when idle" {
            let htex, dfk =
                withHtex (fun o ->
                    { o with
                        MaxWorkersPerNode = Some 1
                        Strategy = Parsl.Jobs.HtexAutoScale
                        MaxIdleTime = TimeSpan.FromSeconds 1.0
                        Provider =
                            LocalProvider
                                { LocalProvider.Defaults with
                                    InitBlocks = 1
                                    MinBlocks = 0
                                    MaxBlocks = 2
                                    StatusPollingInterval = TimeSpan.FromMilliseconds 200.0 } })
            let gate = tmpFile "gate"
            let live () =
                await (htex.BlocksAsync())
                |> List.filter (fun b -> not b.ScaledIn && not (JobState.isTerminal b.Status.State))
                |> List.length
            let groups =
                use _ = dfk
                let wait = App.func dfk (fun (g: string) -> gateWait g; 1)
                let fs = [ for _ in 1..4 -> wait (Arg.value gate) ]
                waitUntil 60.0 "two blocks" (fun () -> live () = 2)
                waitUntil 60.0 "two managers" (fun () -> (await (htex.ConnectedManagersAsync())).Length = 2)
                File.WriteAllText(gate, "")
                Expect.equal (fs |> List.sumBy (fun f -> await f.Task)) 4 "all ran"
                Expect.isLessThanOrEqual (await (htex.BlocksAsync())).Length 2 "never more than max_blocks"
                waitUntil 60.0 "scale in to min_blocks" (fun () -> live () = 0)
                blockGroups htex
            expectNoLeftovers groups
        }
    ]

let placement =
    testList "HTEx placement" [
        test "each worker gets one accelerator through its environment" {
            let _, dfk = withHtex (fun o -> { o with AvailableAccelerators = [ "gpu0"; "gpu1" ] })
            use _ = dfk
            // A barrier: each task waits until both are running, so they run at once, on the two workers.
            let dir = tmpFile "barrier"
            Directory.CreateDirectory dir |> ignore
            let env =
                App.func dfk (fun (d: string) ->
                    File.WriteAllText(Path.Combine(d, string Environment.ProcessId), "")
                    let deadline = DateTime.UtcNow.AddSeconds 60.0
                    while Directory.GetFiles(d).Length < 2 && DateTime.UtcNow < deadline do
                        Thread.Sleep 10
                    Environment.GetEnvironmentVariable "CUDA_VISIBLE_DEVICES")
            let fs = [ env (Arg.value dir); env (Arg.value dir) ]
            let seen = fs |> List.map (fun f -> await f.Task) |> List.sort
            Expect.equal seen [ "gpu0"; "gpu1" ] "one accelerator per worker"
        }
        test "worker_init runs in the block before the manager, and the launcher starts one manager per node" {
            let htex, dfk =
                withHtex (fun o ->
                    { o with
                        Provider =
                            LocalProvider
                                { LocalProvider.Defaults with
                                    WorkerInit = "export PARSL_TEST_INIT=from-worker-init"
                                    NodesPerBlock = 2
                                    StatusPollingInterval = TimeSpan.FromMilliseconds 200.0 } })
            use _ = dfk
            let env = App.func dfk (fun (_: int) -> Environment.GetEnvironmentVariable "PARSL_TEST_INIT")
            Expect.equal (await (env (Arg.value 0)).Task) "from-worker-init" "worker_init ran"
            waitUntil 60.0 "two managers in the block" (fun () -> (await (htex.ConnectedManagersAsync())).Length = 2)
            let ms = await (htex.ConnectedManagersAsync())
            Expect.equal (ms |> List.map (fun m -> m.BlockId) |> List.distinct) [ "0" ] "both from block 0"
            Expect.equal (await (htex.ConnectedBlocksAsync())) [ "0" ] "connected blocks"
        }
        test "without a shared file system the manager fetches the application's assemblies once and caches them by hash" {
            let cache = Path.Combine(tempRunDir (), "cache")
            let dll = HtexOptions.defaultWorkerDll ()
            let _, dfk = withHtex (fun o -> { o with WorkerCommand = Some [ "dotnet"; dll; "--no-shared-fs"; "--cache-dir"; cache ] })
            use _ = dfk
            let square = App.func dfk (fun (x: int) -> { X = x * x; Y = 0; Label = "sq" })
            Expect.equal (await (square (Arg.value 5)).Task).X 25 "ran with fetched assemblies"
            let testsHash = Serialization.hashFile (typeof<Point>.Assembly.Location)
            Expect.isTrue (File.Exists(Path.Combine(cache, testsHash + ".dll"))) "the test assembly was cached by its hash"
        }
    ]

let tests = testList "HTEx" [ e2e; shells; priorities; failures; security; scaling; placement ]
