/// Faults that must not poison a run, and processes that must not outlive their owner: manager and worker crashes,
/// workers that cannot start, walltimes of function apps, `ExitMode.Skip`, SIGTERM of the client, and what the run
/// leaves on disk. Real managers, workers and shell apps on this host, checked through /proc.
module Parsl.Tests.HtexFaultTests

open System
open System.Diagnostics
open System.IO
open System.Threading
open System.Threading.Tasks
open Expecto
open FsCheck
open Parsl
open Parsl.Executors
open Parsl.Executors.HighThroughput
open Parsl.Node.HighThroughput
open Parsl.Jobs
open Parsl.Providers
open Parsl.Tests.TestUtil
open Parsl.Tests.HtexTests

/// The command line of a live process ("" for a zombie or a process that is gone).
let cmdline (pid: int) =
    try (File.ReadAllText(sprintf "/proc/%d/cmdline" pid)).Replace('\000', ' ').Trim() with _ -> ""

/// The parent of a process (0 when it is gone).
let parentOf (pid: int) =
    try
        let stat = File.ReadAllText(sprintf "/proc/%d/stat" pid)
        let fields = stat.Substring(stat.LastIndexOf ')' + 2).Split ' '
        int fields[1]
    with _ -> 0

/// Live processes (zombies excluded: they have no command line) whose command line is exactly `line`.
let processesRunning (line: string) =
    Directory.GetDirectories "/proc"
    |> Array.choose (fun d ->
        match Int32.TryParse(Path.GetFileName d) with
        | true, pid when cmdline pid = line -> Some pid
        | _ -> None)
    |> List.ofArray

/// The live children of a process.
let childrenOf (pid: int) =
    Directory.GetDirectories "/proc"
    |> Array.choose (fun d ->
        match Int32.TryParse(Path.GetFileName d) with
        | true, p when parentOf p = pid && cmdline p <> "" -> Some p
        | _ -> None)
    |> List.ofArray

/// Whether a process is alive (a zombie is not).
let alive (pid: int) = cmdline pid <> ""

/// The worker process running a shell app: the nearest ancestor started with `--worker`.
let rec workerOf (pid: int) =
    let p = parentOf pid
    if p <= 1 then 0 elif (cmdline p).Contains "--worker" then p else workerOf p

/// A command line no other test (or run) uses: `sleep 60.<unique>`.
let uniqueSleep (seconds: int) = sprintf "sleep %d.%d" seconds (Random.Shared.Next(100000, 999999))

let private sigkill = 9
let private sigterm = 15

/// The HTEx of a test with `ExitMode` and `Retries` of its own.
let withHtexConfig (o: HtexOptions -> HtexOptions) (c: Config -> Config) =
    let htex = HighThroughputExecutor(fastOptions o)
    htex, load (fun cfg -> c { cfg with Executors = [ htex ] })

/// Disposes on another thread and fails the test if that does not return: a dispose that waits for a try that never
/// ends would hang here.
let disposeWithin (seconds: float) (d: IDisposable) =
    let t = Task.Run(fun () -> d.Dispose())
    Expect.isTrue (t.Wait(TimeSpan.FromSeconds seconds)) (sprintf "dispose returned (within %g s)" seconds)

let lostNodes =
    testList "Block errors: lost nodes" [
        testProperty "blocks that ran tasks and then ended never put the executor in a bad state" (fun (codes: byte list) (running: bool) ->
            let statuses =
                [ for i, c in List.indexed codes -> string i, { JobStatus.ofState JobState.Failed with ExitCode = Some(int c) } ]
                @ (if running then [ string codes.Length, JobStatus.ofState JobState.Running ] else [])
            let served = statuses |> List.map fst |> List.filter (fun id -> id <> string codes.Length) |> Set.ofList
            let judged = ErrorHandlers.withoutLostNodes served statuses
            [ BlockErrorHandler.Simple; BlockErrorHandler.Windowed 1; BlockErrorHandler.Windowed 3 ]
            |> List.forall (fun h -> ErrorHandlers.decide h 1 judged = Healthy))
        testProperty "blocks that never ran a task are judged as before" (fun (codes: byte list) ->
            let statuses = [ for i, c in List.indexed codes -> string i, { JobStatus.ofState JobState.Failed with ExitCode = Some(int c) } ]
            ErrorHandlers.withoutLostNodes Set.empty statuses = statuses)
        testProperty "a worker's messages round-trip through the wire encoding" (fun (key: int64) (pgid: int) (v: byte[]) ->
            let group = GroupStarted(key, pgid)
            let results = Done [ { Key = key; Outcome = Value v }; { Key = key; Outcome = WorkerDied(1, "h") } ]
            Protocol.decodeFromWorker (Protocol.encodeFromWorker group) = group
            && Protocol.decodeFromWorker (Protocol.encodeFromWorker results) = results)
        testProperty "function app walltimes round-trip through the wire encoding" (fun (key: int64) (wall: int64) (args: byte[]) ->
            let t = { WireTask.Key = key; AppName = "a"; Body = Call(1, null, args, max -1L wall); Resources = [] }
            Protocol.decodeToManager (Protocol.encodeToManager (Tasks [ t ])) = Tasks [ t ])
    ]

let crashes =
    testList "HTEx faults: crashes" [
        test "the only manager SIGKILLed mid-run is a lost node: with Retries = 2 every task completes on a new block" {
            let htex, dfk =
                withHtexConfig
                    (fun o -> { o with Provider = LocalProvider { LocalProvider.Defaults with MinBlocks = 1; StatusPollingInterval = TimeSpan.FromMilliseconds 200.0 } })
                    (fun c -> { c with Retries = 2 })
            let groups =
                use _ = dfk
                let work = App.func dfk (fun (i: int) -> Thread.Sleep 50; i)
                let futures = [ for i in 1..120 -> work (Arg.value i) ]
                // Killed once it has been running tasks: a node lost mid-run, not a block that never worked.
                waitUntil 60.0 "20 tasks to complete" (fun () -> futures |> List.filter (fun f -> f.IsCompleted) |> List.length >= 20)
                let m = (await (htex.ConnectedManagersAsync())).Head
                HtexTests.kill (m.Pid, sigkill) |> ignore
                let outcomes = futures |> List.map (fun f -> try Ok(await f.Task) with e -> Error e)
                let failed = outcomes |> List.choose (function Error e -> Some e | Ok _ -> None)
                Expect.isEmpty failed (sprintf "no task failed (first: %A)" (List.tryHead failed))
                Expect.equal (outcomes |> List.choose (function Ok v -> Some v | Error _ -> None)) [ 1..120 ] "120 of 120 completed"
                let blocks = await (htex.BlocksAsync())
                Expect.isGreaterThanOrEqual blocks.Length 2 "a second block took over"
                blockGroups htex
            expectNoLeftovers groups
        }
        test "workers SIGKILLed while running shell apps: the tries fail WorkerLost and their commands are killed" {
            let htex, dfk = withHtex id
            let lines = [ uniqueSleep 41; uniqueSleep 42 ]
            let groups =
                use _ = dfk
                let sleeper = App.shell dfk (fun (line: string) -> line)
                let futures = lines |> List.map (fun l -> sleeper (Arg.value l))
                waitUntil 60.0 "both sleeps to run" (fun () -> lines |> List.forall (fun l -> not (processesRunning l).IsEmpty))
                let workers = lines |> List.collect processesRunning |> List.map workerOf
                Expect.equal (List.length (List.distinct workers)) 2 (sprintf "two workers run them: %A" workers)
                for w in workers do
                    HtexTests.kill (w, sigkill) |> ignore
                for f in futures do
                    match errorOf f with
                    | :? WorkerLost -> ()
                    | e -> failtestf "expected WorkerLost, got %O" e
                waitUntil 20.0 "no sleep left after its worker died" (fun () -> lines |> List.forall (fun l -> (processesRunning l).IsEmpty))
                blockGroups htex
            expectNoLeftovers groups
        }
        test "a process a worker started and never reported to its manager is killed and reaped when the worker is SIGKILLed" {
            // The window between a command's start and its report, held open: a worker command that starts a process in
            // the worker itself (the wrapper execs the worker, so the process is the worker's child) and never reports it.
            let line = uniqueSleep 47
            let script = tmpFile "worker-with-child.sh"
            File.WriteAllText(
                script,
                String.concat "\n"
                    [ sprintf "for a in \"$@\"; do if [ \"$a\" = --worker ]; then %s & break; fi; done" line
                      sprintf "exec dotnet %s \"$@\"" (HtexOptions.defaultWorkerDll ())
                      "" ])
            let htex, dfk = withHtex (fun o -> { o with MaxWorkersPerNode = Some 1; WorkerCommand = Some [ "/bin/bash"; script ] })
            let groups =
                use _ = dfk
                let pid = App.func dfk (fun (_: int) -> Environment.ProcessId)
                let worker = await (pid (Arg.value 0)).Task
                let child = processesRunning line |> List.filter (fun p -> parentOf p = worker)
                Expect.equal child.Length 1 (sprintf "the worker %d runs the unreported process" worker)
                HtexTests.kill (worker, sigkill) |> ignore
                waitUntil 30.0 "the unreported process to be killed and reaped" (fun () -> not (Directory.Exists(sprintf "/proc/%d" child.Head)))
                // The pool goes on with a new worker.
                waitUntil 30.0 "the worker to be replaced" (fun () -> try (await (pid (Arg.value 1)).Task) <> worker with _ -> false)
                blockGroups htex
            expectNoLeftovers groups
        }
        test "a command that double-forks out of its process group dies with its worker; one from a live worker's try runs on" {
            let htex, dfk = withHtex id
            let escaped, held = uniqueSleep 43, uniqueSleep 44
            let other, otherHeld = uniqueSleep 48, uniqueSleep 49
            let groups =
                use _ = dfk
                // `( … &)` leaves the daemon's parent at once and `setsid` its group: neither the group kill nor the walk
                // down from the group reaches it.
                let sleeper = App.shell dfk (fun (command: string) -> command)
                let victim = sleeper (Arg.value (sprintf "(setsid %s &); %s" escaped held))
                let survivor = sleeper (Arg.value (sprintf "(setsid %s &); %s" other otherHeld))
                waitUntil 60.0 "both tries and their daemons to run" (fun () ->
                    [ escaped; held; other; otherHeld ] |> List.forall (fun l -> not (processesRunning l).IsEmpty))
                let worker = workerOf (processesRunning held).Head
                Expect.notEqual worker (workerOf (processesRunning otherHeld).Head) "two workers run them"
                HtexTests.kill (worker, sigkill) |> ignore
                Expect.isTrue (errorOf victim :? WorkerLost) "the try fails WorkerLost"
                waitUntil 20.0 "the dead worker's daemon to be killed" (fun () -> (processesRunning escaped).IsEmpty)
                Expect.isNonEmpty (processesRunning other) "the daemon of the live worker's try still runs"
                Expect.isNonEmpty (processesRunning otherHeld) "and so does its try"
                Expect.isFalse survivor.IsCompleted "which has not ended"
                blockGroups htex
            expectNoLeftovers groups
            waitUntil 20.0 "every daemon to be gone once the run has ended" (fun () -> (processesRunning other).IsEmpty)
        }
        test "a manager SIGKILLed while its workers run shell apps: the workers and their commands end by themselves" {
            let htex, dfk = withHtex id
            let lines = [ uniqueSleep 45; uniqueSleep 46 ]
            let groups =
                use _ = dfk
                let sleeper = App.shell dfk (fun (line: string) -> line)
                let futures = lines |> List.map (fun l -> sleeper (Arg.value l))
                waitUntil 60.0 "both sleeps to run" (fun () -> lines |> List.forall (fun l -> not (processesRunning l).IsEmpty))
                let workers = lines |> List.collect processesRunning |> List.map workerOf
                let manager = (await (htex.ConnectedManagersAsync())).Head.Pid
                Expect.equal (workers |> List.map parentOf |> List.distinct) [ manager ] "the manager runs both workers"
                HtexTests.kill (manager, sigkill) |> ignore
                // The client cancels no block before it closes: only the workers themselves can end this.
                waitUntil 30.0 "the workers and their commands to end" (fun () ->
                    workers |> List.forall (alive >> not) && lines |> List.forall (fun l -> (processesRunning l).IsEmpty))
                for f in futures do
                    Expect.isTrue (errorOf f :? ManagerLost) "the tries fail ManagerLost"
                blockGroups htex
            expectNoLeftovers groups
        }
        test "killed workers and managers leave no .NET runtime files in the temp directory" {
            // Files older than this run belong to earlier processes whose pid was reused (left before this fix).
            let since = DateTime.UtcNow.AddSeconds -1.0
            let htex, dfk = withHtex id
            let groups =
                use _ = dfk
                let pid = App.func dfk (fun (_: int) -> Environment.ProcessId)
                let worker = await (pid (Arg.value 0)).Task
                let manager = (await (htex.ConnectedManagersAsync())).Head.Pid
                let filesOf (p: int) =
                    Directory.GetFiles(Path.GetTempPath())
                    |> Array.filter (fun f ->
                        let n = Path.GetFileName f
                        (n.StartsWith "clr-debug-pipe-" || n.StartsWith "dotnet-diagnostic-") && n.Contains(sprintf "-%d-" p)
                        && File.GetLastWriteTimeUtc f >= since)
                let mine () = filesOf worker
                Expect.isEmpty (filesOf manager) "the manager opened no debugger or diagnostics pipes"
                Expect.isEmpty (mine ()) "the worker opened no debugger or diagnostics pipes"
                HtexTests.kill (worker, sigkill) |> ignore
                // A call may still reach the dying worker (WorkerLost): ask again.
                waitUntil 30.0 "the worker to be replaced" (fun () -> try (await (pid (Arg.value 1)).Task) <> worker with _ -> false)
                Expect.isEmpty (mine ()) "nothing of the killed worker's is left"
                blockGroups htex
            expectNoLeftovers groups
        }
    ]

/// A wrapper around the worker executable: as a manager it runs; as a worker it fails at once, saying why.
let brokenWorkerCommand () =
    let script = tmpFile "broken-worker.sh"
    File.WriteAllText(
        script,
        String.concat "\n"
            [ "for a in \"$@\"; do if [ \"$a\" = --worker ]; then echo 'cannot-start: runtimeconfig.json is missing' >&2; exit 3; fi; done"
              sprintf "exec dotnet %s \"$@\"" (HtexOptions.defaultWorkerDll ())
              "" ])
    [ "/bin/bash"; script ]

let starts =
    testList "HTEx faults: workers that cannot start" [
        test "a worker that keeps failing at start fails the block with its stderr, after a few restarts, not thousands" {
            let htex, dfk = withHtexConfig (fun o -> { o with WorkerCommand = Some(brokenWorkerCommand ()) }) id
            let runDir = dfk.RunDir
            let groups =
                use _ = dfk
                let app = App.func dfk (fun (x: int) -> x)
                match errorOf (app (Arg.value 1)) with
                | :? BadStateException as b ->
                    Expect.stringContains b.Message "cannot-start: runtimeconfig.json is missing" "the worker's own words"
                    Expect.stringContains b.Message "could not start" "says what failed"
                | e -> failtestf "expected BadStateException, got %O" e
                blockGroups htex
            expectNoLeftovers groups
            let err =
                Directory.GetFiles(Path.Combine(runDir, "submit_scripts"), "*.err") |> Array.map File.ReadAllText |> String.concat ""
            let restarts = err.Split('\n') |> Array.filter (fun l -> l.Contains "before connecting; restarting it in") |> Array.length
            Expect.isLessThanOrEqual restarts 10 (sprintf "restarted with back-off and a cap (%d restarts)" restarts)
            Expect.isGreaterThanOrEqual restarts 1 "restarted at least once (with the configured WorkerCommand)"
        }
    ]

let walltimes =
    testList "Function app walltime" [
        test "thread pool: at the walltime the try fails AppTimeout and an async body's token is cancelled" {
            use dfk = load id
            let cancelled = TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously)
            let waits =
                App.asyncWith dfk { AppOptions.defaults with Walltime = Some(TimeSpan.FromMilliseconds 300.0) } (fun (_: int) (ct: CancellationToken) ->
                    task {
                        use _ = ct.Register(fun () -> cancelled.TrySetResult true |> ignore)
                        do! Task.Delay(Timeout.Infinite, ct)
                        return 1
                    })
            Expect.isTrue (errorOf (waits (Arg.value 0)) :? AppTimeout) "AppTimeout"
            Expect.isTrue (await cancelled.Task) "the body's token was cancelled"
            let gate = new ManualResetEventSlim(false)
            let stubborn = App.funcWith dfk { AppOptions.defaults with Walltime = Some(TimeSpan.FromMilliseconds 300.0) } (fun (x: int) -> gate.Wait(); x)
            Expect.isTrue (errorOf (stubborn (Arg.value 1)) :? AppTimeout) "a body that ignores its token still times out"
            gate.Set()
            let quick = App.funcWith dfk { AppOptions.defaults with Walltime = Some(TimeSpan.FromSeconds 30.0) } (fun (x: int) -> x + 1)
            Expect.equal (await (quick (Arg.value 1)).Task) 2 "a try within its walltime returns its value"
        }
        test "a walltime of zero is refused when the app is made, naming the field" {
            use dfk = load id
            match (try App.funcWith dfk { AppOptions.defaults with Walltime = Some TimeSpan.Zero } (fun (x: int) -> x) |> ignore; None with :? ConfigurationError as c -> Some c) with
            | Some c -> Expect.equal c.Field "AppOptions.Walltime" "field"
            | None -> failtest "accepted"
        }
        test "HTEx: at the walltime the try fails AppTimeout and the worker running it is stopped and replaced" {
            let htex, dfk = withHtex id
            let pidFile = tmpFile "pid"
            let groups =
                use _ = dfk
                let slow =
                    App.funcWith dfk { AppOptions.defaults with Walltime = Some(TimeSpan.FromSeconds 1.0) } (fun (p: string) ->
                        File.WriteAllText(p, string Environment.ProcessId)
                        Thread.Sleep 60000
                        0)
                match errorOf (slow (Arg.value pidFile)) with
                | :? AppTimeout -> ()
                | e -> failtestf "expected AppTimeout, got %O" e
                let worker = int (File.ReadAllText pidFile)
                waitUntil 30.0 "the worker that ran it to be gone" (fun () -> not (alive worker))
                let square = App.func dfk (fun (x: int) -> x * x)
                Expect.equal ([ for i in 1..6 -> square (Arg.value i) ] |> List.map (fun f -> await f.Task)) [ 1; 4; 9; 16; 25; 36 ] "the pool goes on"
                blockGroups htex
            expectNoLeftovers groups
        }
    ]

let skip =
    testList "ExitMode.Skip" [
        test "thread pool: dispose returns at once, unfinished futures fail KernelShutdownError, shell apps are killed" {
            let dfk = load (fun c -> { c with ExitMode = Skip })
            let gate = new ManualResetEventSlim(false)
            let started = new ManualResetEventSlim(false)
            let line = uniqueSleep 60
            let stuck = App.func dfk (fun (x: int) -> started.Set(); gate.Wait(); x)
            let sleeper = App.shell dfk (fun (l: string) -> l)
            let a = stuck (Arg.value 1)
            let b = sleeper (Arg.value line)
            Expect.isTrue (started.Wait(TimeSpan.FromSeconds 60.0)) "the function app runs"
            waitUntil 60.0 "the shell app to run" (fun () -> not (processesRunning line).IsEmpty)
            disposeWithin 30.0 dfk
            for f in [ a :> AppFuture; b :> AppFuture ] do
                let _ = (try f.AsTask.Wait(TimeSpan.FromSeconds 30.0) with _ -> false)
                Expect.isTrue f.IsFaulted "failed"
                Expect.isTrue (f.Exception :? KernelShutdownError) (sprintf "KernelShutdownError, got %O" f.Exception)
            waitUntil 10.0 "the shell app to be killed" (fun () -> (processesRunning line).IsEmpty)
            gate.Set()
        }
        test "HTEx: dispose returns at once, the running shell app is killed, its future fails KernelShutdownError" {
            let htex, dfk = withHtexConfig id (fun c -> { c with ExitMode = Skip })
            let line = uniqueSleep 60
            let sleeper = App.shell dfk (fun (l: string) -> l)
            let f = sleeper (Arg.value line)
            waitUntil 60.0 "the shell app to run" (fun () -> not (processesRunning line).IsEmpty)
            let groups = blockGroups htex
            disposeWithin 30.0 dfk
            Expect.isTrue (errorOf f :? KernelShutdownError) "KernelShutdownError"
            waitUntil 15.0 "the shell app to be killed" (fun () -> (processesRunning line).IsEmpty)
            expectNoLeftovers groups
        }
    ]

/// The child process of the SIGTERM test: an HTEx with its manager on TCP (as on a cluster) running a shell app,
/// then waiting to be signalled. Prints `ready <manager pid> <shell app line>` once all of it runs.
let signalChild (runBase: string) =
    let htex =
        HighThroughputExecutor(
            fastOptions (fun o ->
                { o with
                    SameHostSocket = false
                    // Far beyond the parent's wait: only the client's own cleanup can stop the manager in time.
                    HeartbeatPeriod = TimeSpan.FromSeconds 1.0
                    HeartbeatThreshold = TimeSpan.FromSeconds 300.0 }))
    let dfk = DataFlowKernel.Load { Config.defaults with RunDir = runBase; Executors = [ htex ] }
    let line = uniqueSleep 60
    let sleeper = App.shell dfk (fun (l: string) -> l)
    let f = sleeper (Arg.value line)
    let deadline = DateTime.UtcNow.AddSeconds 60.0
    while ((processesRunning line).IsEmpty || (await (htex.ConnectedManagersAsync())).IsEmpty) && DateTime.UtcNow < deadline do
        Thread.Sleep 20
    eprintfn "child: the shell app runs: %b" (not (processesRunning line).IsEmpty)
    let m = (await (htex.ConnectedManagersAsync())).Head
    printfn "ready %d %s" m.Pid line
    Console.Out.Flush()
    // Until the signal ends this process.
    f.Task.Wait()
    1

// Alone, after the tests that run in parallel: its child process starts a kernel, a manager and workers of its own.
let signals =
    testSequenced <| testList "Signals" [
        test "SIGTERM of the client stops its managers (over TCP), their workers and shell apps, then the client ends" {
            let psi = ProcessStartInfo("dotnet")
            psi.ArgumentList.Add(Reflection.Assembly.GetExecutingAssembly().Location)
            psi.ArgumentList.Add "--signal-child"
            let runBase = tempRunDir ()
            psi.ArgumentList.Add runBase
            psi.RedirectStandardOutput <- true
            psi.RedirectStandardError <- true
            use child = Process.Start psi
            // The child must not outlive a failed test.
            use _ = { new IDisposable with member _.Dispose() = if not child.HasExited then (try child.Kill true with _ -> ()) }
            let err = child.StandardError.ReadToEndAsync()
            let ready =
                let read = Task.Run(fun () ->
                    let mutable l = child.StandardOutput.ReadLine()
                    while not (isNull l) && not (l.StartsWith "ready ") do
                        l <- child.StandardOutput.ReadLine()
                    l)
                let log () =
                    let files = Directory.GetFiles(runBase, "*.*", SearchOption.AllDirectories) |> Array.filter (fun f -> f.EndsWith ".log" || f.EndsWith ".err")
                    files |> Array.map (fun f -> f + ":\n" + (try File.ReadAllText f with _ -> "")) |> String.concat "\n"
                if not (read.Wait(TimeSpan.FromSeconds 90.0)) || isNull read.Result then
                    (try child.Kill true with _ -> ())
                    let _ = err.Wait(TimeSpan.FromSeconds 10.0)
                    failtestf "the child did not get ready; its stderr:\n%s\n%s" (if err.IsCompleted then err.Result else "") (log ())
                read.Result
            let parts = ready.Trim().Split(' ', 3)
            let manager, line = int parts[1], parts[2]
            let workers = childrenOf manager
            let sleeps = processesRunning line
            Expect.isNonEmpty workers "the manager has workers"
            Expect.isNonEmpty sleeps "the shell app runs"
            HtexTests.kill (child.Id, sigterm) |> ignore
            Expect.isTrue (child.WaitForExit 60000) "the client ended"
            Expect.notEqual child.ExitCode 0 "as a signal ends a process, not as a success"
            waitUntil 60.0 "the manager, its workers and the shell app to be gone" (fun () ->
                not (alive manager) && workers |> List.forall (alive >> not) && (processesRunning line).IsEmpty)
        }
    ]

let config =
    testList "Configuration faults" [
        test "an Address that is not one is refused at load, naming the field" {
            match (try load (fun c -> { c with Executors = [ HighThroughputExecutor({ HtexOptions.defaults () with Address = "not an address" }) ] }) |> ignore; None with :? ConfigurationError as c -> Some c) with
            | Some c -> Expect.equal c.Field "HighThroughputExecutor.Address" "field"
            | None -> failtest "loaded"
        }
        test "a RunDir under a path that cannot hold directories is refused, naming the field" {
            let file = tmpFile "a-file"
            File.WriteAllText(file, "")
            match (try load (fun c -> { c with RunDir = Path.Combine(file, "runinfo") }) |> ignore; None with :? ConfigurationError as c -> Some c) with
            | Some c ->
                Expect.equal c.Field "Config.RunDir" "field"
                Expect.stringContains c.Message "choose a directory" "the fix"
            | None -> failtest "loaded"
        }
        test "run directories are private to the user (0700), and so are task output files (0600)" {
            let runDir, out, err =
                use dfk = load id
                let echo = App.shellWith dfk { AppOptions.defaults with Stdout = Some Auto; Stderr = Some Auto } (fun (s: string) -> "echo " + s)
                let f = echo (Arg.value "hi")
                Expect.equal (await f.Task) 0 "ran"
                let logs = Directory.GetFiles(Path.Combine(dfk.RunDir, "task_logs"), "*", SearchOption.AllDirectories)
                dfk.RunDir, logs |> Array.find (fun p -> p.EndsWith ".stdout"), logs |> Array.find (fun p -> p.EndsWith ".stderr")
            Expect.equal (File.GetUnixFileMode runDir) (UnixFileMode.UserRead ||| UnixFileMode.UserWrite ||| UnixFileMode.UserExecute) "run directory 0700"
            for f in [ out; err ] do
                Expect.equal (File.GetUnixFileMode f) (UnixFileMode.UserRead ||| UnixFileMode.UserWrite) (sprintf "%s 0600" f)
            Expect.stringContains (File.ReadAllText out) "hi" "the output is there"
        }
    ]

let tests = testList "HTEx faults" [ lostNodes; crashes; starts; walltimes; skip; signals; config ]
