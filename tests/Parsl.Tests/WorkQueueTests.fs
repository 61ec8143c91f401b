/// The WorkQueueExecutor against CCTools' real `work_queue_worker` on loopback: Debian's (protocol 9) and the one
/// built from the CCTools source beside the repository (protocol 11), both set up by tests/harness/workqueue.sh.
module Parsl.Tests.WorkQueueTests

open System
open System.Collections.Generic
open System.Diagnostics
open System.IO
open System.Threading
open Expecto
open Parsl
open Parsl.Data
open Parsl.Executors
open Parsl.Executors.WorkQueue
open Parsl.Providers
open Parsl.Tests.TestUtil
open FsCheck

/// A worker process this test started, killed (with its children) when disposed.
type WorkerProcess(exe: string, port: int, args: string list) =
    let dir = Path.Combine(Path.GetTempPath(), "parsl-wq-workers", Guid.NewGuid().ToString("N"))
    do Directory.CreateDirectory dir |> ignore
    let psi = ProcessStartInfo(exe)
    do
        // -t: a worker left behind by a crashed test run gives up on its own after a minute.
        for a in [ "-s"; dir; "-t"; "60"; yield! args; "127.0.0.1"; string port ] do
            psi.ArgumentList.Add a
        psi.RedirectStandardOutput <- true
        psi.RedirectStandardError <- true
    let p = Process.Start psi
    let err = p.StandardError.ReadToEndAsync()
    let out = p.StandardOutput.ReadToEndAsync()
    member _.Process = p
    member _.WorkDir = dir
    /// What the worker printed (after it exited).
    member _.Output = out.Result + err.Result
    interface IDisposable with
        member _.Dispose() =
            if not p.HasExited then (try p.Kill true with _ -> ())
            p.WaitForExit(10000) |> ignore
            try Directory.Delete(dir, true) with _ -> ()

/// Waits for a condition that a real event makes true (a worker joining, a file appearing), checking every 50 ms,
/// and fails the test after `seconds`.
let waitFor (seconds: float) (what: string) (cond: unit -> bool) =
    let sw = Stopwatch.StartNew()
    while not (cond ()) do
        if sw.Elapsed.TotalSeconds > seconds then failtestf "timed out after %g s waiting for %s" seconds what
        Thread.Sleep 50

let private harness () =
    let line = Harness.require "workqueue"
    Harness.field line "wq9", Harness.field line "wq11"

/// The two workers: name and path.
let flavours () =
    let wq9, wq11 = harness ()
    [ "protocol 9 (Debian)", wq9; "protocol 11 (built)", wq11 ]

let withWq (f: WorkQueueOptions -> WorkQueueOptions) =
    let wq = WorkQueueExecutor(f { WorkQueueOptions.defaults () with KeepalivePeriod = TimeSpan.FromSeconds 2.0; KeepaliveTimeout = TimeSpan.FromSeconds 30.0 })
    let dfk = load (fun c -> { c with Executors = [ wq ]; Retries = 1 })
    wq, dfk

let readyWorkers (wq: WorkQueueExecutor) =
    (await (wq.WorkersAsync())) |> List.filter (fun w -> w.Cores > 0L)

/// Function and shell apps on a real worker of `dfk`'s executor, whose `Env` sets `variable` to "from-env": a closure
/// twice in a chain, in another process, with that environment; the app's own exception comes back as itself; a shell
/// app's stdout is brought back and appended; a non-zero exit is a `BashExitFailure` with its code.
let appsRunOnWorker (dfk: DataFlowKernel) (variable: string) =
    let offset = 1000 + Environment.ProcessId % 1
    let shift = App.func dfk (fun (x: int) -> x + offset)
    let pid = App.func dfk (fun (_: int) -> Environment.ProcessId)
    let env = App.func dfk (fun (_: int) -> Environment.GetEnvironmentVariable variable)
    let boom = App.func dfk (fun (x: int) -> if x > 0 then invalidOp (sprintf "boom %d" x) else x)
    let b = shift (Arg.future (shift (Arg.value 7)))
    Expect.equal (await b.Task) 2007 "a closure ran twice, the second on the first's result"
    Expect.notEqual (await (pid (Arg.value 0)).Task) Environment.ProcessId "ran in another process"
    Expect.equal (await (env (Arg.value 0)).Task) "from-env" "Env reached the task"
    let e = errorOf (boom (Arg.value 3))
    Expect.isTrue (e :? InvalidOperationException) (sprintf "the app's own exception, not a wrapper: %O" e)
    Expect.stringContains e.Message "boom 3" "its message"
    let out = Path.Combine(tempRunDir (), "hello.out")
    let echo = App.shellWith dfk { AppOptions.defaults with Stdout = Some(Path out) } (fun (x: int) -> sprintf "echo hello $%s %d" variable x)
    Expect.equal (await (echo (Arg.value 1)).Task) 0 "exit 0"
    Expect.equal (await (echo (Arg.value 2)).Task) 0 "exit 0"
    Expect.equal (File.ReadAllText out) "hello from-env 1\nhello from-env 2\n" "stdout brought back and appended"
    let fail = App.shell dfk (fun (code: int) -> sprintf "exit %d" code)
    match errorOf (fail (Arg.value 3)) with
    | :? BashExitFailure as f -> Expect.equal f.ExitCode 3 "exit code"
    | e -> failtestf "expected BashExitFailure, got %O" e

/// One worker block of a CCTools executor on the real one-node Slurm: `start` makes the executor (label, provider,
/// worker options with a scratch folder) and says how many workers are ready. A function app and a shell app run
/// inside the block's job, the block is in squeue, one worker joined; after shutdown no job of it is left.
let slurmBlock (prefix: string) (start: string -> IExecutionProvider -> string list -> DataFlowKernel * (unit -> int)) =
    Harness.require "slurm" |> ignore
    let name = HtexSlurmTests.label (prefix + "-slurm")
    let work = Path.Combine(Path.GetTempPath(), sprintf "parsl-%s-slurm-%s" prefix (Guid.NewGuid().ToString("N")))
    Directory.CreateDirectory work |> ignore
    let dfk, ready = start name (slurmForTests id :> IExecutionProvider) [ "-s"; work; "--cores"; "1"; "-t"; "60" ]
    let () =
        use _ = dfk
        let jobOf = App.func dfk (fun (_: int) -> Environment.GetEnvironmentVariable "SLURM_JOB_ID")
        let out = Path.Combine(tempRunDir (), "job")
        let shell = App.shellWith dfk { AppOptions.defaults with Stdout = Some(Path out) } (fun (_: int) -> "echo $SLURM_JOB_ID")
        let job = await (jobOf (Arg.value 0)).Task
        Expect.isFalse (String.IsNullOrEmpty job) "the function app ran inside a Slurm job"
        Expect.equal (await (shell (Arg.value 0)).Task) 0 "the shell app ran"
        Expect.equal (File.ReadAllText(out).Trim()) job "in the same job"
        Expect.contains (HtexSlurmTests.queuedJobsOf name |> List.map (fun l -> l.Split(' ')[0])) job "the block is in squeue"
        Expect.equal (ready ()) 1 "one worker, from the block"
    HtexSlurmTests.waitQueueEmpty name
    try Directory.Delete(work, true) with _ -> ()

let tests =
    let flavoured (name: string) (body: string -> unit) =
        testList name [
            testCase "protocol 9 (Debian)" (fun () -> body (fst (harness ())))
            testCase "protocol 11 (built)" (fun () -> body (snd (harness ())))
        ]
    let slurm (exe: string) =
        slurmBlock "wq" (fun name provider workerOptions ->
            let wq, dfk = withWq (fun o -> { o with Label = name; Provider = Some provider; WorkerExecutable = exe; WorkerOptions = workerOptions })
            dfk, (fun () -> (readyWorkers wq).Length))

    testList "WorkQueue" [
      testSequencedGroup "provider-daemons" <| testList "on Slurm" [
          testCase "a worker started in a Slurm block connects and runs tasks (protocol 9)" (fun () -> slurm (fst (harness ())))
          testCase "a worker started in a Slurm block connects and runs tasks (protocol 11)" (fun () -> slurm (snd (harness ())))
      ]
      testSequencedGroup "work queue" <| testList "real workers" [
        flavoured "function and shell apps run on a real worker" (fun exe ->
            let wq, dfk = withWq (fun o -> { o with Env = Map [ "PARSL_WQ_TEST", "from-env" ] })
            use _ = dfk
            use _w = new WorkerProcess(exe, wq.Port.Value, [ "--password"; wq.PasswordPath; "--cores"; "2" ])
            appsRunOnWorker dfk "PARSL_WQ_TEST")

        testCase "the long-lived runner (a protocol-11 coprocess) runs function apps without a runner start each" (fun () ->
            let exe = snd (harness ())
            let wq, dfk = withWq (fun o -> { o with Env = Map [ "PARSL_WQ_TEST", "env-in-runner" ] })
            use _ = dfk
            use _w = new WorkerProcess(exe, wq.Port.Value, [ "--password"; wq.PasswordPath; "--cores"; "1"; "--coprocess"; wq.CoprocessScript ])
            waitFor 60.0 "the worker with its runner" (fun () -> readyWorkers wq |> List.exists (fun w -> w.LongLivedRunner))
            let pid = App.func dfk (fun (_: int) -> Environment.ProcessId)
            let env = App.func dfk (fun (_: int) -> Environment.GetEnvironmentVariable "PARSL_WQ_TEST")
            let boom = App.func dfk (fun (x: int) -> if x > 0 then invalidOp "boom in runner" else x)
            let first = await (pid (Arg.value 1)).Task
            let second = await (pid (Arg.value 2)).Task
            Expect.notEqual first Environment.ProcessId "ran in another process"
            Expect.equal second first "the same long-lived process ran both"
            Expect.equal (await (env (Arg.value 0)).Task) "env-in-runner" "Env reached the runner"
            Expect.isTrue (errorOf (boom (Arg.value 1)) :? InvalidOperationException) "the app's exception as itself"
            let dir = tempRunDir ()
            let input = Path.Combine(dir, "in.txt")
            File.WriteAllText(input, "xyz")
            let output = Path.Combine(dir, "out.txt")
            let upper = App.func2 dfk (fun (i: File) (o: File) -> File.WriteAllText(o.Filepath, (File.ReadAllText i.Filepath).ToUpperInvariant()); 0)
            Expect.equal (await (upper (Arg.file (File.Of input)) (Arg.output (File.Of output))).Task) 0 "ran"
            Expect.equal (File.ReadAllText output) "XYZ" "files staged in and out through the runner's sandbox"
            // SIGKILL of the worker: the runner notices its worker's pipe close and ends too.
            Expect.equal (HtexTests.kill (_w.Process.Id, 9)) 0 "SIGKILL the worker"
            let alive () =
                try
                    let stat = File.ReadAllText(sprintf "/proc/%d/stat" first)
                    stat.Substring(stat.LastIndexOf ')' + 2, 1) <> "Z"
                with _ -> false
            waitFor 30.0 "the runner to end with its worker" (fun () -> not (alive ())))

        flavoured "a File is staged in and out through the worker" (fun exe ->
            let wq, dfk = withWq id
            use _ = dfk
            use _w = new WorkerProcess(exe, wq.Port.Value, [ "--password"; wq.PasswordPath; "--cores"; "1" ])
            let dir = tempRunDir ()
            let input = Path.Combine(dir, "in.txt")
            File.WriteAllText(input, "abc")
            let output = Path.Combine(dir, "out", "upper.txt")
            let upper =
                App.func2 dfk (fun (i: File) (o: File) ->
                    // The app sees the sandbox's copies, not the client's paths.
                    if i.Filepath = input then failwith "the input was not staged"
                    File.WriteAllText(o.Filepath, (File.ReadAllText i.Filepath).ToUpperInvariant())
                    Path.GetFileName(Directory.GetCurrentDirectory()))
            let r = upper (Arg.file (File.Of input)) (Arg.output (File.Of output))
            let sandbox = await r.Task
            Expect.notEqual sandbox (Path.GetFileName dir) "ran in the worker's sandbox"
            Expect.equal (File.ReadAllText output) "ABC" "the output came back to its path"
            Expect.equal (await r.Outputs[0].Task).Filepath output "the DataFuture names the client's file")

        flavoured "a task exceeding its declared run time gets the typed error" (fun exe ->
            let wq, dfk = withWq id
            use _ = dfk
            use _w = new WorkerProcess(exe, wq.Port.Value, [ "--password"; wq.PasswordPath; "--cores"; "2"; "--disk"; "2000"; "--memory"; "2000" ])
            let slow = App.shellWith dfk { AppOptions.defaults with Resources = Map [ "running_time_min", box 0.02 ] } (fun (_: int) -> "sleep 60")
            match errorOf (slow (Arg.value 0)) with
            | :? WorkQueueMaxRunTime as e -> Expect.equal e.ResultCode 56 "max run time"
            | e -> failtestf "expected WorkQueueMaxRunTime, got %O" e)

        flavoured "a task exceeding its declared memory gets the typed error (under the resource monitor)" (fun exe ->
            let wq, dfk = withWq (fun o -> { o with ResourceMonitor = Some "resource_monitor" })
            use _ = dfk
            use _w = new WorkerProcess(exe, wq.Port.Value, [ "--password"; wq.PasswordPath; "--cores"; "2"; "--disk"; "2000"; "--memory"; "2000" ])
            let res mb = { AppOptions.defaults with Resources = Map [ "cores", box 1; "memory", box mb; "disk", box 100 ] }
            // 300 MB of touched memory, held for a while: the monitor samples, then kills at the limit.
            let hog = "python3 -c \"x = b'x' * (300 * 1024 * 1024); import time; time.sleep(20)\""
            let over = App.shellWith dfk (res 50) (fun (_: int) -> hog)
            match errorOf (over (Arg.value 0)) with
            | :? WorkQueueResourceExhaustion as e -> Expect.stringContains e.Message "memory" "names memory"
            | e -> failtestf "expected WorkQueueResourceExhaustion, got %O" e
            let within = App.shellWith dfk (res 1000) (fun (x: int) -> sprintf "exit %d" x)
            Expect.equal (await (within (Arg.value 0)).Task) 0 "a task within its memory runs under the monitor")


        flavoured "a task on a worker killed with SIGKILL is retried on another worker" (fun exe ->
            let wq, dfk = withWq id
            use _ = dfk
            let dir = tempRunDir ()
            let marks = Path.Combine(dir, "starts")
            use first = new WorkerProcess(exe, wq.Port.Value, [ "--password"; wq.PasswordPath; "--cores"; "1" ])
            let job = App.shell dfk (fun (_: int) -> sprintf "echo $PWD >> %s; sleep 3; echo done" marks)
            let r = job (Arg.value 0)
            waitFor 60.0 "the task to start on the first worker" (fun () -> File.Exists marks)
            use _second = new WorkerProcess(exe, wq.Port.Value, [ "--password"; wq.PasswordPath; "--cores"; "1" ])
            waitFor 60.0 "the second worker to join" (fun () -> (readyWorkers wq).Length = 2)
            first.Process.Kill true
            Expect.equal (await r.Task) 0 "completed after the retry"
            let starts = File.ReadAllLines marks
            Expect.equal starts.Length 2 "ran twice"
            Expect.notEqual starts[0] starts[1] "in two sandboxes")

        flavoured "a worker that stops answering keepalives is dropped and its task runs elsewhere" (fun exe ->
            let wq, dfk = withWq (fun o -> { o with KeepalivePeriod = TimeSpan.FromMilliseconds 500.0; KeepaliveTimeout = TimeSpan.FromSeconds 4.0 })
            use _ = dfk
            let dir = tempRunDir ()
            let marks = Path.Combine(dir, "starts")
            use first = new WorkerProcess(exe, wq.Port.Value, [ "--password"; wq.PasswordPath; "--cores"; "1" ])
            let job = App.shell dfk (fun (_: int) -> sprintf "echo $PWD >> %s; sleep 2" marks)
            let r = job (Arg.value 0)
            waitFor 60.0 "the task to start on the first worker" (fun () -> File.Exists marks)
            use _second = new WorkerProcess(exe, wq.Port.Value, [ "--password"; wq.PasswordPath; "--cores"; "1" ])
            waitFor 60.0 "the second worker to join" (fun () -> (readyWorkers wq).Length = 2)
            // Frozen, not dead: its connection stays open, only the keepalive timeout can tell.
            Expect.equal (HtexTests.kill (first.Process.Id, 19)) 0 "SIGSTOP"
            try
                Expect.equal (await r.Task) 0 "completed on the other worker"
                Expect.equal (File.ReadAllLines marks).Length 2 "ran twice"
                Expect.equal (readyWorkers wq).Length 1 "the frozen worker was dropped"
            finally
                HtexTests.kill (first.Process.Id, 18) |> ignore)

        test "a peer that is not a worker, or speaks another protocol, is refused before anything is decoded" {
            let wq, dfk = withWq id
            use _ = dfk
            let send (lines: string) =
                use c = new Net.Sockets.TcpClient("127.0.0.1", wq.Port.Value)
                let s = c.GetStream()
                let b = Text.Encoding.ASCII.GetBytes lines
                s.Write(b, 0, b.Length)
                // The manager closes the connection: the read ends.
                let buffer = Array.zeroCreate<byte> 256
                s.ReadTimeout <- 30000
                try s.Read(buffer, 0, buffer.Length) |> ignore with _ -> ()
            send "workqueue 5 host Linux x86_64 6.0.0\n"
            send "GET / HTTP/1.1\n"
            send (String('x', 10000))
            waitFor 30.0 "three refusals" (fun () -> wq.RejectedConnections >= 3)
            Expect.isEmpty (await (wq.WorkersAsync())) "none joined"
        }

        flavoured "a worker with a wrong password gets no task" (fun exe ->
            let dir = tempRunDir ()
            let good = Path.Combine(dir, "pw")
            let bad = Path.Combine(dir, "bad")
            File.WriteAllText(good, "sesame")
            File.WriteAllText(bad, "not-sesame")
            let wq, dfk = withWq (fun o -> { o with PasswordFile = Some good })
            use _ = dfk
            let ran = Path.Combine(dir, "ran")
            let job = App.shell dfk (fun (_: int) -> sprintf "touch %s" ran)
            let r = job (Arg.value 0)
            use wrong = new WorkerProcess(exe, wq.Port.Value, [ "--password"; bad ])
            waitFor 60.0 "the wrong-password worker to be refused" (fun () -> wq.RejectedConnections >= 1)
            Expect.isEmpty (await (wq.WorkersAsync())) "no worker joined"
            Expect.isFalse r.IsCompleted "the task did not run"
            Expect.isFalse (File.Exists ran) "nothing ran"
            use _right = new WorkerProcess(exe, wq.Port.Value, [ "--password"; good ])
            Expect.equal (await r.Task) 0 "the right password gets the task"
            Expect.isTrue (File.Exists ran) "it ran")

        flavoured "two workers share a workload" (fun exe ->
            let wq, dfk = withWq id
            use _ = dfk
            use a = new WorkerProcess(exe, wq.Port.Value, [ "--password"; wq.PasswordPath; "--cores"; "1" ])
            use b = new WorkerProcess(exe, wq.Port.Value, [ "--password"; wq.PasswordPath; "--cores"; "1" ])
            waitFor 60.0 "two workers" (fun () -> (readyWorkers wq).Length = 2)
            let dir = tempRunDir ()
            let job = App.shellWith dfk { AppOptions.defaults with Stdout = Some(Path(Path.Combine(dir, "pwd"))) } (fun (_: int) -> "pwd; sleep 1")
            let rs = [ for i in 1..4 -> job (Arg.value i) ]
            for r in rs do
                Expect.equal (await r.Task) 0 "ok"
            let lines = File.ReadAllLines(Path.Combine(dir, "pwd"))
            Expect.equal lines.Length 4 "four tasks"
            Expect.isTrue (lines |> Array.exists (fun l -> l.StartsWith a.WorkDir)) "the first worker ran some"
            Expect.isTrue (lines |> Array.exists (fun l -> l.StartsWith b.WorkDir)) "the second worker ran some")

        flavoured "the strategy starts a worker block when tasks arrive, and scales it in when they are done" (fun exe ->
            let work = Path.Combine(Path.GetTempPath(), "parsl-wq-scale-" + Guid.NewGuid().ToString("N"))
            Directory.CreateDirectory work |> ignore
            let provider =
                LocalProvider { LocalProvider.Defaults with InitBlocks = 0; MinBlocks = 0; MaxBlocks = 1; StatusPollingInterval = TimeSpan.FromMilliseconds 200.0 }
            let wq, dfk =
                withWq (fun o ->
                    { o with
                        Provider = Some(provider :> IExecutionProvider)
                        StrategyPeriod = TimeSpan.FromMilliseconds 200.0
                        MaxIdleTime = TimeSpan.Zero
                        WorkerExecutable = exe
                        WorkerOptions = [ "-s"; work; "--cores"; "1"; "-t"; "60" ] })
            use _ = dfk
            Expect.isEmpty (await (wq.BlocksAsync())) "no block before any task"
            let job = App.shell dfk (fun (x: int) -> sprintf "exit %d" x)
            Expect.equal (await (job (Arg.value 0)).Task) 0 "ran on the block the strategy started"
            Expect.equal (await (wq.BlocksAsync())).Length 1 "one block"
            waitFor 60.0 "the idle block to be scaled in" (fun () ->
                await (wq.BlocksAsync()) |> List.forall (fun (_, _, st) -> JobState.isTerminal st))
            try Directory.Delete(work, true) with _ -> ())

        flavoured "shutdown sends exit to every worker and cancels the blocks it started" (fun exe ->
            let work = Path.Combine(Path.GetTempPath(), "parsl-wq-block-" + Guid.NewGuid().ToString("N"))
            Directory.CreateDirectory work |> ignore
            let provider = LocalProvider { LocalProvider.Defaults with StatusPollingInterval = TimeSpan.FromMilliseconds 200.0 }
            let wq, dfk =
                withWq (fun o ->
                    { o with
                        Provider = Some(provider :> IExecutionProvider)
                        WorkerExecutable = exe
                        WorkerOptions = [ "-s"; work; "--cores"; "1"; "-t"; "60" ] })
            let byHand = new WorkerProcess(exe, wq.Port.Value, [ "--password"; wq.PasswordPath; "--cores"; "1" ])
            use _ = byHand
            waitFor 60.0 "the block's worker and the hand-started one" (fun () -> (readyWorkers wq).Length = 2)
            let job = App.shell dfk (fun (x: int) -> sprintf "exit %d" x)
            Expect.equal (await (job (Arg.value 0)).Task) 0 "ran"
            (dfk :> IDisposable).Dispose()
            Expect.isTrue (byHand.Process.WaitForExit 30000) "the hand-started worker left on `exit`"
            let left () =
                Process.GetProcesses()
                |> Array.exists (fun p ->
                    try File.ReadAllText(sprintf "/proc/%d/cmdline" p.Id).Contains work with _ -> false)
            waitFor 30.0 "the block's worker to end" (fun () -> not (left ()))
            try Directory.Delete(work, true) with _ -> ())

        flavoured "without a PasswordFile a run's own password keeps other workers out" (fun exe ->
            let wq, dfk = withWq id
            use _ = dfk
            Expect.isTrue (File.Exists wq.PasswordPath) "the run's password file"
            Expect.equal (File.GetUnixFileMode wq.PasswordPath) (UnixFileMode.UserRead ||| UnixFileMode.UserWrite) "private to the user"
            use _stranger = new WorkerProcess(exe, wq.Port.Value, [ "--cores"; "1" ])
            waitFor 60.0 "the worker without the password to be refused" (fun () -> wq.RejectedConnections >= 1)
            Expect.isEmpty (await (wq.WorkersAsync())) "it did not join")

        test "options are validated at load, naming the field" {
            let bad = WorkQueueExecutor({ WorkQueueOptions.defaults () with Port = -1; MaxRetries = 0; PasswordFile = Some "/nonexistent/pw" })
            let errors = (bad :> IExecutor).Validate() |> List.map (fun e -> e.Field)
            Expect.containsAll errors [ "WorkQueueExecutor.Port"; "WorkQueueExecutor.MaxRetries"; "WorkQueueExecutor.PasswordFile" ] "each field named"
        }

        test "resource specifications follow Parsl's all-or-none rule" {
            let check (m: (string * obj) list) = WqProtocol.request "wq" (dict m |> Dictionary :> IReadOnlyDictionary<_, _>)
            Expect.isOk (check [ "cores", box 1; "memory", box 100; "disk", box 10 ]) "all three"
            Expect.isOk (check [ "priority", box 5; "running_time_min", box 1.5 ]) "none of the three"
            match check [ "cores", box 1 ] with
            | Error(:? InvalidResourceSpecification as e) -> Expect.containsAll e.InvalidKeys [ "memory"; "disk" ] "names the missing keys"
            | r -> failtestf "expected an error, got %A" r
            match check [ "walltime", box 1 ] with
            | Error(:? InvalidResourceSpecification as e) -> Expect.equal (List.ofSeq e.InvalidKeys) [ "walltime" ] "unknown key"
            | r -> failtestf "expected an error, got %A" r
        }

        testProperty "a task description renders the command's exact byte count" <| fun (cmd: NonNull<string>) (id: PositiveInt) ->
            let cmd = cmd.Get.Replace("\000", "")
            let bytes =
                WqProtocol.renderTask
                    { TaskId = int64 id.Get; Command = cmd; Coprocess = None; Category = "c d"; Cores = 1.0; Memory = 10L; Disk = 10L; Gpus = 0L
                      WallTime = 0L; Env = []; Inputs = []; Outputs = [] }
            let text = Text.Encoding.UTF8.GetString bytes
            let header = sprintf "task %d\ncmd %d\n" id.Get (Text.Encoding.UTF8.GetByteCount cmd)
            text.StartsWith(header + cmd + "category c%20d\n") && text.EndsWith "\nend\n"

        testProperty "placing tasks by fitsNow never exceeds a worker, and releasing them frees it all" <| fun (cores: PositiveInt) (mem: PositiveInt) (asks: (byte * byte * bool) list) ->
            let total = { Cores = int64 (cores.Get % 64 + 1); Memory = int64 (mem.Get % 10000 + 1); Disk = 1000L; Gpus = 0L }
            let requests =
                asks
                |> List.map (fun (c, m, whole) ->
                    { Cores = (if whole then None else Some(float (c % 8uy)))
                      MemoryMB = (if whole then None else Some(int64 m * 10L))
                      DiskMB = (if whole then None else Some 1L)
                      Gpus = None
                      Priority = 0.0
                      RunningTimeMin = None })
            let zero = { Cores = 0L; Memory = 0L; Disk = 0L; Gpus = 0L }
            let used, placed =
                requests
                |> List.fold (fun (used, placed) r ->
                    let need = WqProtocol.allocation r total
                    if WqProtocol.fitsNow need total used then WqProtocol.add 1L used need, need :: placed else used, placed) (zero, [])
            let within = used.Cores <= total.Cores && used.Memory <= total.Memory && used.Disk <= total.Disk
            let freed = placed |> List.fold (WqProtocol.add -1L) used
            within && freed = zero

        testProperty "password responses match only for the same password and nonce" <| fun (pw: NonEmptyString) (nonce: NonEmptyString) (other: NonEmptyString) ->
            let r = WqProtocol.authResponse pw.Get nonce.Get
            r.Length = 40 && (pw.Get = other.Get || WqProtocol.authResponse other.Get nonce.Get <> r)

        test "worker lines parse, and result codes map to typed errors" {
            Expect.equal (WqProtocol.parse "workqueue 9 vm Linux x86_64 8.0.0") (Hello(9, "vm", "Linux", "x86_64", "8.0.0")) "hello"
            Expect.equal (WqProtocol.parse "result 0 0 12 11222 1") (Result(0, 0, 12L, 11222L, 1L)) "result"
            Expect.equal (WqProtocol.payloadLength (WqProtocol.parse "file file-2-x%20y 22")) 22L "file payload"
            Expect.equal (WqProtocol.parse "file a%20b 3") (FileData("a b", 3L)) "names are decoded"
            Expect.isTrue (WqProtocol.failure 1 0 "" :? WorkQueueInputMissing) "1"
            Expect.isTrue (WqProtocol.failure 2 0 "" :? WorkQueueOutputMissing) "2"
            Expect.isTrue (WqProtocol.failure 16 0 "" :? WorkQueueResourceExhaustion) "16"
            Expect.isTrue (WqProtocol.failure 56 9 "" :? WorkQueueMaxRunTime) "56"
            Expect.throwsT<FormatException> (fun () -> WqProtocol.parse "result x 0 0 0 1" |> ignore) "bad number"
        }
    ]
    ]
