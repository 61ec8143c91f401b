/// The TaskVineExecutor against CCTools' real `vine_worker` (protocol 13), built from the CCTools source beside the
/// repository by tests/harness/taskvine.sh, on loopback.
module Parsl.Tests.TaskVineTests

open System
open System.Diagnostics
open System.IO
open Expecto
open FsCheck
open Parsl
open Parsl.Data
open Parsl.Executors
open Parsl.Executors.TaskVine
open Parsl.Providers
open Parsl.Tests.TestUtil
open Parsl.Tests.WorkQueueTests

let private vine () = Harness.field (Harness.require "taskvine") "vine"

let private withVine (f: TaskVineOptions -> TaskVineOptions) =
    let tv = TaskVineExecutor(f { TaskVineOptions.defaults () with KeepalivePeriod = TimeSpan.FromSeconds 2.0; KeepaliveTimeout = TimeSpan.FromSeconds 30.0 })
    let dfk = load (fun c -> { c with Executors = [ tv ]; Retries = 1 })
    tv, dfk

let private ready (tv: TaskVineExecutor) = (await (tv.WorkersAsync())) |> List.filter (fun w -> w.Cores > 0L)

/// A vine_worker for this test, with the run's password, on loopback.
let private worker (tv: TaskVineExecutor) (extra: string list) =
    new WorkerProcess(vine (), tv.Port.Value, [ "--password"; tv.PasswordPath; "--cores"; "2"; "--memory"; "2000"; "--disk"; "4000"; yield! extra ])

/// The pids of a process's children (the worker forks its transfer server and its tasks).
let private children (pid: int) =
    let f = sprintf "/proc/%d/task/%d/children" pid pid
    if File.Exists f then (File.ReadAllText f).Split(' ', StringSplitOptions.RemoveEmptyEntries) |> Array.map int |> List.ofArray
    else []

let private alive (pid: int) = Directory.Exists(sprintf "/proc/%d" pid) && not ((try File.ReadAllText(sprintf "/proc/%d/stat" pid) with _ -> "") .Contains ") Z ")

/// Every vine_worker process running now (pid, command line).
let private vineWorkers () =
    [ for d in Directory.GetDirectories "/proc" do
        match Int32.TryParse(Path.GetFileName d) with
        | true, pid ->
            let cmd = try (File.ReadAllText(Path.Combine(d, "cmdline"))).Replace('\000', ' ') with _ -> ""
            if cmd.Contains "vine_worker" then pid, cmd
        | _ -> () ]

let private slurm () =
    slurmBlock "tv" (fun name provider workerOptions ->
        let tv, dfk = withVine (fun o -> { o with Label = name; Provider = Some provider; WorkerExecutable = vine (); WorkerOptions = workerOptions })
        dfk, (fun () -> (ready tv).Length))

let tests =
    testList "TaskVine" [
      testSequencedGroup "provider-daemons" <| testList "on Slurm" [
          testCase "a vine_worker started in a Slurm block connects and runs tasks" slurm
      ]
      testList "protocol (pure)" [
        testProperty "every VINE_RESULT code becomes a TaskVineTaskFailure carrying that code" <| fun (i: NonNegativeInt) ->
            let code = VineProtocol.codes[i.Get % VineProtocol.codes.Length]
            match VineProtocol.failure code 1 "detail" with
            | :? TaskVineTaskFailure as f -> f.ResultCode = code && f.Message.Contains "detail" && f.Reason.StartsWith(VineProtocol.explain code)
            | _ -> false
        testCase "the typed errors name what happened" <| fun () ->
            Expect.isTrue (VineProtocol.failure 56 0 "" :? TaskVineMaxRunTime) "56: max wall time"
            Expect.isTrue (VineProtocol.failure 8 9 "" :? TaskVineSignal) "8: signal"
            Expect.isTrue (VineProtocol.failure 16 0 "" :? TaskVineResourceExhaustion) "16: resources"
            Expect.isTrue (VineProtocol.failure 112 0 "" :? TaskVineLibraryFailure) "112: missing library"
            Expect.isTrue (VineProtocol.failure 1 0 "" :? TaskVineInputMissing) "1: input missing"
            Expect.isTrue (VineProtocol.failure (2 ||| 8) 0 "" :? TaskVineSignal) "a signal or-ed with a missing output is the signal"
        testProperty "a complete line round-trips its fields" <| fun (r: NonNegativeInt) (e: NonNegativeInt) (n: NonNegativeInt) (t: PositiveInt) ->
            let line = sprintf "complete %d %d %d %d 1 2 0 %d" r.Get e.Get n.Get (min n.Get 1024) t.Get
            VineProtocol.parse line = Complete(r.Get, e.Get, int64 n.Get, int64 (min n.Get 1024), 1L, 2L, int64 t.Get)
        testProperty "a task description names every file once, in order" <| fun (names: NonEmptyString list) ->
            let files = names |> List.mapi (fun i n -> { CacheName = sprintf "c%d" i; SandboxName = n.Get; Level = CacheLevel.TaskLevel })
            let spec =
                { TaskId = 7L; Command = "echo hi\nthere"; NeedsLibrary = None; ProvidesLibrary = None; Category = "a b"; Cores = 1.0
                  Memory = 1L; Disk = 1L; Gpus = 0L; WallTime = 0L; Env = [ "A", "1" ]; Inputs = files; Outputs = [] }
            let text = Text.Encoding.UTF8.GetString(VineProtocol.renderTask spec)
            let lines = text.Split('\n')
            let infiles = lines |> Array.filter (fun l -> l.StartsWith "infile ")
            infiles.Length = files.Length
            && Array.forall2 (fun (l: string) (f: VineFile) -> l.Split(' ')[2] |> Uri.UnescapeDataString = f.SandboxName) infiles (Array.ofList files)
            && text.StartsWith "task 7\ncmd 13\necho hi\nthere" && text.EndsWith "end\n"
        testCase "options are validated with the field named" <| fun () ->
            let errors = TaskVineOptions.validate { TaskVineOptions.defaults () with Port = -1; KeepaliveTimeout = TimeSpan.FromSeconds 1.0 }
            let fields = errors |> List.map (fun e -> e.Field)
            Expect.contains fields "TaskVineExecutor.Port" "Port"
            Expect.contains fields "TaskVineExecutor.KeepaliveTimeout" "KeepaliveTimeout"
      ]
      testSequencedGroup "taskvine" <| testList "real vine_worker" [
        testCase "function and shell apps run on a real vine_worker; the app's exception comes back as itself" <| fun () ->
            let tv, dfk = withVine (fun o -> { o with Env = Map [ "PARSL_TV_TEST", "from-env" ] })
            let pid, kids =
                use _ = dfk
                use w = worker tv []
                appsRunOnWorker dfk "PARSL_TV_TEST"
                let slow = App.shellWith dfk { AppOptions.defaults with Resources = Map [ "running_time_min", box 0.02 ] } (fun (_: int) -> "sleep 60")
                match errorOf (slow (Arg.value 0)) with
                | :? TaskVineMaxRunTime as e -> Expect.equal e.ResultCode 56 "VINE_RESULT_MAX_WALL_TIME"
                | e -> failtestf "expected TaskVineMaxRunTime, got %O" e
                let workers = ready tv
                Expect.equal workers.Length 1 "one worker"
                Expect.isGreaterThan workers[0].TransferPort 0 "it announced its transfer server"
                w.Process.Id, children w.Process.Id
            // Shutdown sent `exit`: the worker and its transfer server are gone.
            let sw = Stopwatch.StartNew()
            while (alive pid || List.exists alive kids) && sw.Elapsed.TotalSeconds < 30.0 do
                Threading.Thread.Sleep 50
            Expect.isFalse (alive pid) "the worker exited at shutdown"
            Expect.isEmpty (kids |> List.filter alive) "its children (the transfer server) too"

        testCase "a worker with the wrong password gets no task" <| fun () ->
            let tv, dfk = withVine id
            use _ = dfk
            let wrong = Path.Combine(tempRunDir (), "wrong.password")
            File.WriteAllText(wrong, "not-the-password")
            use _w = new WorkerProcess(vine (), tv.Port.Value, [ "--password"; wrong; "--single-shot" ])
            waitFor 60.0 "the manager to refuse the worker" (fun () -> tv.RejectedConnections > 0)
            Expect.isEmpty (await (tv.WorkersAsync())) "no worker joined"
            let f = (App.func dfk (fun (x: int) -> x + 1)) (Arg.value 1)
            Expect.isFalse (f.Task.Wait(TimeSpan.FromSeconds 2.0)) "no task ran"
            use _good = worker tv []
            Expect.equal (await f.Task) 2 "a worker with the right password runs it"

        testCase "a task on a worker killed with SIGKILL completes on another worker" <| fun () ->
            let tv, dfk = withVine id
            use _ = dfk
            let marks = Path.Combine(tempRunDir (), "starts")
            use first = worker tv []
            let job = App.shell dfk (fun (_: int) -> sprintf "echo $PWD >> %s; sleep 3; echo done" marks)
            let r = job (Arg.value 0)
            waitFor 60.0 "the task to start on the first worker" (fun () -> File.Exists marks)
            use _second = worker tv []
            waitFor 60.0 "the second worker to join" (fun () -> (ready tv).Length = 2)
            let kids = children first.Process.Id
            Expect.equal (HtexTests.kill (first.Process.Id, 9)) 0 "SIGKILL the worker"
            Expect.equal (await r.Task) 0 "completed after the retry"
            let starts = File.ReadAllLines marks
            Expect.equal starts.Length 2 "ran twice"
            Expect.notEqual starts[0] starts[1] "in two sandboxes"
            // The killed worker's transfer server (it listens on all interfaces) is stopped by its pid.
            for k in kids do
                HtexTests.kill (k, 9) |> ignore

        testCase "a 20 MB input given to 20 tasks crosses to the worker once" <| fun () ->
            let tv, dfk = withVine id
            use _ = dfk
            use _w = worker tv []
            let big = Path.Combine(tempRunDir (), "big.bin")
            do
                let bytes = Array.init (20 * 1024 * 1024) (fun i -> byte (i * 7))
                File.WriteAllBytes(big, bytes)
            let size = App.func dfk (fun (f: File) -> FileInfo(f.Filepath).Length)
            let mb20 = 20L * 1024L * 1024L
            // A first task brings the runner and the assemblies (cached too); what follows is the file and the calls.
            let none = Path.Combine(tempRunDir (), "none.bin")
            File.WriteAllBytes(none, [| 1uy |])
            Expect.equal (await (size (Arg.value (File.Of none))).Task) 1L "warm-up"
            let before = (ready tv).Head.BytesSent
            let fs = [ for _ in 1..20 -> size (Arg.value (File.Of big)) ]
            for f in fs do
                Expect.equal (await f.Task) mb20 "each task saw the whole file"
            let sent = (ready tv).Head.BytesSent - before
            Expect.isGreaterThanOrEqual sent mb20 "the file was sent"
            Expect.isLessThan sent (mb20 + 1024L * 1024L) (sprintf "once, not 20 times (%d bytes sent)" sent)

        testCase "an output read by a later task stays on the worker: it is not sent back" <| fun () ->
            let tv, dfk = withVine id
            use _ = dfk
            use _w = worker tv []
            let dir = tempRunDir ()
            let mb5 = 5 * 1024 * 1024
            let write = App.func dfk (fun (f: File) -> File.WriteAllBytes(f.Filepath, Array.create mb5 42uy); f)
            let read = App.func dfk (fun (f: File) -> (File.ReadAllBytes f.Filepath) |> Array.sumBy int64)
            let out = File.Of(Path.Combine(dir, "inter.bin"))
            let made = write (Arg.value out)
            let madeFile = await made.Task
            Expect.equal (FileInfo(Path.Combine(dir, "inter.bin")).Length) (int64 mb5) "the output came back here too"
            let before = (ready tv).Head.BytesSent
            Expect.equal (await (read (Arg.value madeFile)).Task) (42L * int64 mb5) "the later task read it"
            let sent = (ready tv).Head.BytesSent - before
            Expect.isLessThan sent (1024L * 1024L) (sprintf "the 5 MB file was not sent back to the worker (%d bytes sent)" sent)

        testCase "with peer transfers, a kept output goes worker to worker, not through the manager" <| fun () ->
            let tv, dfk = withVine (fun o -> { o with PeerTransfers = true })
            use _ = dfk
            let dir = tempRunDir ()
            let mb5 = 5 * 1024 * 1024
            use first = new WorkerProcess(vine (), tv.Port.Value, [ "--password"; tv.PasswordPath; "--cores"; "1" ])
            let write = App.func dfk (fun (f: File) -> File.WriteAllBytes(f.Filepath, Array.create mb5 7uy); f)
            let read = App.func dfk (fun (f: File) -> (File.ReadAllBytes f.Filepath) |> Array.sumBy int64)
            let made = await (write (Arg.value (File.Of(Path.Combine(dir, "inter.bin"))))).Task
            // The first worker is kept busy until the read is done, so the read runs on the second.
            let release = Path.Combine(dir, "release")
            let hold = App.shell dfk (fun (_: int) -> sprintf "while [ ! -f %s ]; do sleep 0.1; done" release)
            let held = hold (Arg.value 0)
            waitFor 60.0 "the first worker to be busy" (fun () -> (ready tv) |> List.exists (fun w -> w.Running > 0))
            use _second = new WorkerProcess(vine (), tv.Port.Value, [ "--password"; tv.PasswordPath; "--cores"; "1" ])
            waitFor 60.0 "the second worker to join" (fun () -> (ready tv).Length = 2)
            Expect.equal (await (read (Arg.value made)).Task) (7L * int64 mb5) "the later task read it on the other worker"
            File.WriteAllText(release, "")
            Expect.equal (await held.Task) 0 "the hold ended"
            let second = ready tv |> List.maxBy (fun w -> w.Id)
            Expect.isGreaterThanOrEqual second.PeerBytes (int64 mb5) "the file was fetched from the first worker's transfer server"
            Expect.equal first.Process.HasExited false "the first worker served it"

        testCase "with SharedFs, Files are used in place: nothing is staged" <| fun () ->
            let tv, dfk = withVine (fun o -> { o with SharedFs = true })
            use _ = dfk
            use _w = worker tv []
            let dir = tempRunDir ()
            let input = Path.Combine(dir, "in.txt")
            File.WriteAllText(input, "shared")
            let copy = App.func dfk (fun (i: File, o: File) -> File.WriteAllText(o.Filepath, File.ReadAllText(i.Filepath) + "!"); o.Filepath)
            let path = await (copy (Arg.value (File.Of input, File.Of(Path.Combine(dir, "out.txt"))))).Task
            Expect.equal path (Path.Combine(dir, "out.txt")) "the app saw the client's own path"
            Expect.equal (File.ReadAllText path) "shared!" "and wrote there directly"
            Expect.isEmpty (Directory.GetDirectories(Path.Combine(tv.RunDirectory, "transfers")) |> Array.collect Directory.GetFiles) "nothing came back through the manager"

        testCase "workers as Local blocks: their logs are under the run directory, and shutdown leaves no worker" <| fun () ->
            let work = tempRunDir ()
            let tv, dfk =
                withVine (fun o ->
                    { o with
                        Provider = Some(LocalProvider { LocalProvider.Defaults with StatusPollingInterval = TimeSpan.FromMilliseconds 200.0 } :> IExecutionProvider)
                        StrategyPeriod = TimeSpan.FromMilliseconds 200.0
                        WorkerExecutable = vine ()
                        WorkerOptions = [ "-s"; work; "--cores"; "1"; "-t"; "60" ] })
            let mine () = vineWorkers () |> List.filter (fun (_, cmd) -> cmd.Contains work)
            let pids =
                use _ = dfk
                let f = App.func dfk (fun (x: int) -> x * 3)
                Expect.equal (await (f (Arg.value 5)).Task) 15 "ran in the block's worker"
                let workers = mine () |> List.map fst
                Expect.isNonEmpty workers "the block's worker runs"
                Expect.isTrue (File.Exists(Path.Combine(tv.RunDirectory, "workers", "block-0.log"))) "its log is under the run directory"
                workers @ List.collect children workers
            waitFor 30.0 "the block's worker and its transfer server to end" (fun () -> not (List.exists alive pids))

        testCase "serverless: a long-lived .NET library on the worker serves function calls" <| fun () ->
            let tv, dfk = withVine (fun o -> { o with FunctionExecMode = FunctionExecMode.Serverless; Env = Map [ "PARSL_TV_TEST", "lib-env" ] })
            use _ = dfk
            use _w = worker tv []
            let where = App.func dfk (fun (x: int) -> Environment.ProcessId + 0 * x)
            let env = App.func dfk (fun (_: int) -> Environment.GetEnvironmentVariable "PARSL_TV_TEST")
            let boom = App.func dfk (fun (x: int) -> if x > 0 then invalidOp (sprintf "boom %d" x) else x)
            let pids = [ for i in 1..10 -> where (Arg.value i) ] |> List.map (fun f -> await f.Task) |> List.distinct
            Expect.equal pids.Length 1 (sprintf "every call ran in the one library process: %A" pids)
            Expect.notEqual pids.Head Environment.ProcessId "not here"
            Expect.isTrue (ready tv).Head.Library "the worker runs our library"
            Expect.equal (await (env (Arg.value 0)).Task) "lib-env" "the library has the executor's Env"
            let e = errorOf (boom (Arg.value 2))
            Expect.isTrue (e :? InvalidOperationException) (sprintf "the app's own exception: %O" e)
            let echo = App.shell dfk (fun (x: int) -> sprintf "exit %d" x)
            Expect.equal (await (echo (Arg.value 0)).Task) 0 "shell apps run as ordinary tasks"
      ]
    ]
