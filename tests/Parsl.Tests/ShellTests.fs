module Parsl.Tests.ShellTests

open System
open System.Diagnostics
open System.IO
open System.Runtime.InteropServices
open System.Text
open System.Threading
open System.Threading.Tasks
open Expecto
open FsCheck
open Parsl
open Parsl.Executors
open Parsl.Node
open Parsl.Runtime
open Parsl.Node.Runtime
open Parsl.Tests.TestUtil

let private call cmd : ShellCall =
    { AppName = "sh"
      BuildCommand = fun () -> cmd
      Stdout = None
      Stderr = None
      Walltime = None
      Outputs = [] }

let private run (c: ShellCall) = Shell.run c CancellationToken.None

/// The exit code a command fails with (0 when it succeeds).
let private exitCodeOf cmd =
    try
        // Quiet: the codes under test come with bash error messages.
        unbox<int> (run { call cmd with Stderr = Some(Append "/dev/null") })
    with :? BashExitFailure as e ->
        e.ExitCode

let private raises<'E when 'E :> exn> (f: unit -> obj) : 'E =
    try
        let v = f ()
        failtestf "expected %s, got the result %A" typeof<'E>.Name v
    with
    | :? 'E as e -> e
    | e -> failtestf "expected %s, got %s: %s" typeof<'E>.Name (e.GetType().Name) e.Message

let private tempDir () =
    let d = Path.Combine(Path.GetTempPath(), "parsl-shell-tests", Guid.NewGuid().ToString("N"))
    Directory.CreateDirectory d |> ignore
    d

let private header cmd = sprintf "--> executable follows <--\n%s\n--> end executable <--\n" cmd

/// Polls a condition with a generous bound: for observing another process, which offers nothing to wait on.
let private waitUntil (what: string) (condition: unit -> bool) =
    let sw = Stopwatch.StartNew()
    while not (condition ()) do
        if sw.Elapsed > TimeSpan.FromSeconds 30.0 then failtestf "timed out after 30 s waiting for %s" what
        Thread.Sleep 10

/// Whether a process no longer runs. A killed orphan whose new parent (pid 1) does not reap it stays a zombie
/// ('Z'): dead, holding only its pid, so it counts as gone.
let private gone (pid: int) =
    try
        let stat = File.ReadAllText(sprintf "/proc/%d/stat" pid)
        let state = stat[stat.LastIndexOf ')' + 2]
        state = 'Z' || state = 'X'
    with
    | :? FileNotFoundException
    | :? DirectoryNotFoundException -> true

let private readPid path = Int32.Parse((File.ReadAllText path).Trim())

let private direct =
    testList "direct" [
        test "exit code 0 gives 0" { Expect.equal (unbox<int> (run (call "true"))) 0 "result" }

        test "exit codes are Parsl's: exit 15, command not found, not executable, division by zero" {
            Expect.equal (exitCodeOf "exit 15") 15 "exit 15"
            Expect.equal (exitCodeOf "catdogcat") 127 "unknown command"
            Expect.equal (exitCodeOf "/dev/null") 126 "not executable"
            Expect.equal (exitCodeOf "echo $((5/0))") 1 "division by zero"
        }

        test "BashExitFailure names the app and the code" {
            let e = raises<BashExitFailure> (fun () -> run { call "exit 3" with AppName = "myapp" })
            Expect.equal e.AppName "myapp" "app"
            Expect.equal e.ExitCode 3 "code"
            Expect.stringContains e.Message "bash_app myapp failed with unix exit code 3" "Parsl's message"
        }

        test "a command killed by a signal fails with minus the signal number" {
            Expect.equal (exitCodeOf "kill -TERM $$") -15 "SIGTERM"
            Expect.equal (exitCodeOf "kill -KILL $$") -9 "SIGKILL"
        }

        test "SIGPIPE has its default action in the command (.NET ignores it)" {
            // With SIGPIPE ignored, `yes` would see EPIPE and exit 1 instead of dying by the signal (128 + 13).
            Expect.equal (exitCodeOf "yes | head -1 > /dev/null; exit ${PIPESTATUS[0]}") 141 "yes killed by SIGPIPE"
            Expect.equal (exitCodeOf "yes | head -1 > /dev/null") 0 "the pipeline succeeds"
        }

        test "the command starts with no signal blocked or ignored" {
            let d = tempDir ()
            let out = Path.Combine(d, "status")
            run { call "grep -E '^Sig(Blk|Ign)' /proc/self/status" with Stdout = Some(Append out) } |> ignore
            let masks =
                File.ReadAllLines out
                |> Array.map (fun l -> let kv = l.Split(':') in kv[0], Convert.ToUInt64(kv[1].Trim(), 16))
                |> Map.ofArray
            Expect.equal masks["SigBlk"] 0UL "nothing blocked"
            // Only signals 1..31: glibc's posix_spawn leaves its two internal signals (32, 33) ignored, and every
            // glibc program installs its own handlers for them at startup.
            Expect.equal (masks["SigIgn"] &&& 0x7fffffffUL) 0UL "no standard signal ignored"
        }

        test "the command leads its own process group" {
            Expect.equal (exitCodeOf "test \"$(cut -d' ' -f5 /proc/$$/stat)\" = \"$$\"") 0 "pgid = pid"
        }

        test "the command runs in the current directory" {
            let cwd = Directory.GetCurrentDirectory()
            let d = tempDir ()
            let out = Path.Combine(d, "pwd")
            run { call "pwd -P" with Stdout = Some(Append out) } |> ignore
            Expect.equal (File.ReadAllText out) (cwd + "\n") "pwd"
        }

        test "environment variables set in .NET reach the command" {
            let name = "PARSL_SHELL_TEST_" + Guid.NewGuid().ToString("N")
            Environment.SetEnvironmentVariable(name, "héllo wörld")
            try
                let d = tempDir ()
                let out = Path.Combine(d, "env")
                run { call (sprintf "printf '%%s' \"$%s\"" name) with Stdout = Some(Append out) } |> ignore
                Expect.equal (File.ReadAllText out) "héllo wörld" "value"
            finally
                Environment.SetEnvironmentVariable(name, null)
        }

        test "stdout Append keeps earlier content; Truncate clears it" {
            let d = tempDir ()
            let out = Path.Combine(d, "out.txt")
            run { call "echo one" with Stdout = Some(Append out) } |> ignore
            run { call "echo two" with Stdout = Some(Append out) } |> ignore
            Expect.equal (File.ReadAllText out) "one\ntwo\n" "appended"
            run { call "echo three" with Stdout = Some(Truncate out) } |> ignore
            Expect.equal (File.ReadAllText out) "three\n" "truncated"
        }

        test "stderr gets Parsl's header, then the command's error output" {
            let d = tempDir ()
            let err = Path.Combine(d, "err.txt")
            let cmd = "echo oops >&2; exit 2"
            let e = raises<BashExitFailure> (fun () -> run { call cmd with Stderr = Some(Truncate err) })
            Expect.equal e.ExitCode 2 "code"
            Expect.equal (File.ReadAllText err) (header cmd + "oops\n") "header then output"
        }

        test "stdout and stderr may be the same file: header first, then both streams in order" {
            let d = tempDir ()
            let both = Path.Combine(d, "both.txt")
            let cmd = "echo out; echo err >&2; echo out2"
            run { call cmd with Stdout = Some(Append both); Stderr = Some(Append both) } |> ignore
            Expect.equal (File.ReadAllText both) (header cmd + "out\nerr\nout2\n") "content"
            run { call cmd with Stdout = Some(Truncate both); Stderr = Some(Truncate both) } |> ignore
            Expect.equal (File.ReadAllText both) (header cmd + "out\nerr\nout2\n") "truncated once, then written"
        }

        test "missing parent directories of stream files are created" {
            let d = tempDir ()
            let out = Path.Combine(d, "a", "b", "out.txt")
            let err = Path.Combine(d, "c", "err.txt")
            run { call "echo hi" with Stdout = Some(Append out); Stderr = Some(Append err) } |> ignore
            Expect.equal (File.ReadAllText out) "hi\n" "stdout"
            Expect.isTrue (File.Exists err) "stderr"
        }

        test "a stream file that cannot be created fails with BadStdStreamFile naming it" {
            let d = tempDir ()
            let blocker = Path.Combine(d, "file")
            File.WriteAllText(blocker, "")
            let bad = Path.Combine(blocker, "out.txt")
            let e = raises<BadStdStreamFile> (fun () -> run { call "true" with Stdout = Some(Append bad) })
            Expect.stringContains e.Message bad "names the path"
            Expect.stringContains e.Message "stdout" "names the stream"
        }

        test "outputs that exist pass; a missing one fails with MissingOutputs listing only it" {
            let d = tempDir ()
            let a = Path.Combine(d, "a.txt")
            let b = Path.Combine(d, "b.txt")
            Expect.equal (unbox<int> (run { call (sprintf "touch '%s'" a) with Outputs = [ a ] })) 0 "present"
            let e = raises<MissingOutputs> (fun () -> run { call (sprintf "touch '%s'" a) with Outputs = [ a; b ] })
            Expect.equal (List.ofSeq e.Outputs) [ b ] "only the missing one"
        }

        test "a failing command reports its exit code, not missing outputs" {
            let e = raises<BashExitFailure> (fun () -> run { call "exit 4" with Outputs = [ "/nonexistent/x" ] })
            Expect.equal e.ExitCode 4 "exit code first"
        }

        test "command builders: formatting errors, no command, and other exceptions" {
            let builder f = { call "" with BuildCommand = f; AppName = "b" }
            let e1 = raises<AppBadFormatting> (fun () -> run (builder (fun () -> [| "x" |].[3])))
            Expect.isTrue (e1.InnerException :? IndexOutOfRangeException) "index"
            raises<AppBadFormatting> (fun () -> run (builder (fun () -> String.Format("{1}", "x")))) |> ignore
            raises<AppBadFormatting> (fun () -> run (builder (fun () -> raise (ArgumentNullException "x")))) |> ignore
            let e2 = raises<BashAppNoReturn> (fun () -> run (builder (fun () -> null)))
            Expect.equal e2.AppName "b" "app"
            raises<BashAppNoReturn> (fun () -> run (builder (fun () -> "  \n"))) |> ignore
            raises<InvalidOperationException> (fun () -> run (builder (fun () -> invalidOp "mine"))) |> ignore
            raises<AppBadFormatting> (fun () -> run (builder (fun () -> "echo a\000b"))) |> ignore
        }

        test "a non-positive walltime is refused, naming the field" {
            let e =
                raises<ArgumentOutOfRangeException> (fun () -> run { call "true" with Walltime = Some TimeSpan.Zero })
            Expect.equal e.ParamName "Walltime" "field"
        }

        test "walltime kills the whole process group, background children included, and raises AppTimeout" {
            let d = tempDir ()
            let pidFile = Path.Combine(d, "pid")
            let cmd = sprintf "sleep 1000 & echo $! > '%s'; wait" pidFile
            let e =
                raises<AppTimeout> (fun () ->
                    run { call cmd with AppName = "slow"; Walltime = Some(TimeSpan.FromSeconds 1.0) })
            Expect.stringContains e.Message "slow" "names the app"
            Expect.stringContains e.Message "1 s" "names the walltime"
            let pid = readPid pidFile
            waitUntil (sprintf "background sleep %d to die" pid) (fun () -> gone pid)
        }

        test "a command that ends within its walltime succeeds" {
            Expect.equal (unbox<int> (run { call "true" with Walltime = Some(TimeSpan.FromSeconds 60.0) })) 0 "result"
        }

        test "cancellation kills the process group and raises OperationCanceledException" {
            let d = tempDir ()
            let pidFile = Path.Combine(d, "pid")
            let started = Path.Combine(d, "started")
            let cmd = sprintf "sleep 1000 & echo $! > '%s'; touch '%s'; wait" pidFile started
            use cts = new CancellationTokenSource()
            let running = Task.Run(fun () -> Shell.run (call cmd) cts.Token)
            waitUntil "the command to start" (fun () -> File.Exists started || running.IsCompleted)
            cts.Cancel()
            let e =
                try
                    await running |> ignore
                    failtest "expected cancellation"
                with :? AggregateException as a ->
                    a.InnerException
            Expect.isTrue (e :? OperationCanceledException) (sprintf "cancelled, got %O" e)
            let pid = readPid pidFile
            waitUntil (sprintf "background sleep %d to die" pid) (fun () -> gone pid)
        }

        test "an already cancelled token starts nothing" {
            let d = tempDir ()
            let marker = Path.Combine(d, "ran")
            use cts = new CancellationTokenSource()
            cts.Cancel()
            raises<OperationCanceledException> (fun () -> Shell.run (call (sprintf "touch '%s'" marker)) cts.Token)
            |> ignore
            Expect.isFalse (File.Exists marker) "not run"
        }

        test "reaping shell apps leaves other children (System.Diagnostics.Process) alone" {
            let psi = ProcessStartInfo("/bin/sh", [| "-c"; "sleep 0.3; exit 3" |])
            use p = Process.Start psi
            let codes = Array.Parallel.init 8 (fun i -> exitCodeOf (sprintf "exit %d" i))
            Expect.equal codes [| 0..7 |] "each shell app got its own exit code"
            Expect.isTrue (p.WaitForExit 60000) "process ended"
            Expect.equal p.ExitCode 3 "Process still sees its child's exit code"
        }
    ]

let private native =
    testList "native" [
        testProperty "stringArray round-trips strings as NUL-terminated UTF-8, with a null terminator" <| fun (xs: NonNull<string>[]) ->
            let items = xs |> Array.map (fun s -> s.Get.Replace("\000", ""))
            let block = Native.stringArray items
            try
                let back =
                    Array.init items.Length (fun i -> Marshal.PtrToStringUTF8(Marshal.ReadIntPtr(block, i * IntPtr.Size)))
                let expected = items |> Array.map (fun s -> Encoding.UTF8.GetString(Encoding.UTF8.GetBytes s))
                back = expected && Marshal.ReadIntPtr(block, items.Length * IntPtr.Size) = 0n
            finally
                Native.freeBlock block

        testProperty "exitCode decodes exit statuses and signal terminations as Python's returncode" <| fun (code: byte) (signal: byte) ->
            let signal = int signal % 126 + 1 // 1..126; 0x7f would mean stopped
            Native.exitCode (int code <<< 8) = int code && Native.exitCode signal = -signal
                && Native.exitCode (signal ||| 0x80) = -signal // core dumped
    ]

let private roundTrip =
    testList "round trip" [
        testPropertyWithConfig { FsCheckConfig.defaultConfig with maxTest = 25 }
            "any text reaches the command intact as UTF-8 through its command line" <| fun (text: NonNull<string>) ->
            let text = text.Get.Replace("\000", "")
            let d = tempDir ()
            let out = Path.Combine(d, "out")
            let quoted = "'" + text.Replace("'", "'\\''") + "'"
            run { call ("printf '%s' " + quoted) with Stdout = Some(Truncate out) } |> ignore
            File.ReadAllBytes out = Encoding.UTF8.GetBytes text
    ]

let private throughKernel =
    testList "kernel" [
        test "a shell app's future gives 0; a failing one BashExitFailure with the code" {
            use dfk = load id
            let sh = App.shell dfk (fun (code: int) -> sprintf "exit %d" code)
            Expect.equal (await (sh (Arg.value 0)).Task) 0 "success"
            match errorOf (sh (Arg.value 15)) with
            | :? BashExitFailure as e -> Expect.equal e.ExitCode 15 "code"
            | e -> failtestf "expected BashExitFailure, got %O" e
        }

        test "many shell apps at once each get their own exit code" {
            use dfk = load (fun c -> { c with Executors = [ ThreadPoolExecutor("threads", 8) ] })
            let sh = App.shell dfk (fun (code: int) -> sprintf "exit %d" code)
            let futures = [ for i in 0..39 -> i, sh (Arg.value (i % 4)) ]
            for i, f in futures do
                if i % 4 = 0 then Expect.equal (await f.Task) 0 "success"
                else
                    match errorOf f with
                    | :? BashExitFailure as e -> Expect.equal e.ExitCode (i % 4) (sprintf "task %d" i)
                    | e -> failtestf "task %d: %O" i e
        }

        test "stdout path appends across calls; mode \"w\" truncates" {
            use dfk = load id
            let d = tempDir ()
            let out = Path.Combine(d, "out.txt")
            let echoA = App.shellWith dfk { AppOptions.defaults with Stdout = Some(Path out) } (fun (s: string) -> "echo " + s)
            await (echoA (Arg.value "first")).Task |> ignore
            await (echoA (Arg.value "second")).Task |> ignore
            Expect.equal (File.ReadAllText out) "first\nsecond\n" "both lines"
            let echoW =
                App.shellWith dfk { AppOptions.defaults with Stdout = Some(PathMode(out, "w")) } (fun (s: string) -> "echo " + s)
            await (echoW (Arg.value "third")).Task |> ignore
            Expect.equal (File.ReadAllText out) "third\n" "truncated"
        }

        test "Auto stdout and stderr go to task_logs under the run directory" {
            use dfk = load id
            let opts = { AppOptions.defaults with Name = Some "hello"; Stdout = Some Auto; Stderr = Some Auto }
            let sh = App.shellWith dfk opts (fun (s: string) -> sprintf "echo %s; echo warn >&2" s)
            await (sh (Arg.value "world")).Task |> ignore
            let dir = Path.Combine(dfk.RunDir, "task_logs", "0000")
            Expect.equal (File.ReadAllText(Path.Combine(dir, "task_0000_hello.stdout"))) "world\n" "stdout"
            Expect.equal
                (File.ReadAllText(Path.Combine(dir, "task_0000_hello.stderr")))
                (header "echo world; echo warn >&2" + "warn\n")
                "stderr"
        }

        test "walltime through the kernel: AppTimeout, and the background child is killed" {
            use dfk = load id
            let d = tempDir ()
            let pidFile = Path.Combine(d, "pid")
            let opts = { AppOptions.defaults with Walltime = Some(TimeSpan.FromSeconds 1.0) }
            let sh = App.shellWith dfk opts (fun (p: string) -> sprintf "sleep 1000 & echo $! > '%s'; wait" p)
            match errorOf (sh (Arg.value pidFile)) with
            | :? AppTimeout -> ()
            | e -> failtestf "expected AppTimeout, got %O" e
            let pid = readPid pidFile
            waitUntil (sprintf "background sleep %d to die" pid) (fun () -> gone pid)
        }

        test "AppFuture.Cancel on a running shell app kills its process group and cancels the future" {
            use dfk = load id
            let d = tempDir ()
            let pidFile = Path.Combine(d, "pid")
            let started = Path.Combine(d, "started")
            let sh =
                App.shell dfk (fun (dir: string) ->
                    sprintf "sleep 1000 & echo $! > '%s'; touch '%s'; wait" pidFile started)
            let f = sh (Arg.value d)
            waitUntil "the command to start" (fun () -> File.Exists started || f.IsCompleted)
            f.Cancel()
            await (Task.WhenAny(f.Task)) |> ignore
            Expect.isTrue f.Task.IsCanceled (sprintf "cancelled, state %O" f.State)
            let pid = readPid pidFile
            waitUntil (sprintf "background sleep %d to die" pid) (fun () -> gone pid)
        }

        test "MissingOutputs through the kernel" {
            use dfk = load id
            let d = tempDir ()
            let made = Path.Combine(d, "made")
            let notMade = Path.Combine(d, "not-made")
            let sh = App.shellWith dfk { AppOptions.defaults with Outputs = [ made; notMade ] } (fun (p: string) -> "touch " + p)
            match errorOf (sh (Arg.value made)) with
            | :? MissingOutputs as e -> Expect.equal (List.ofSeq e.Outputs) [ notMade ] "missing"
            | e -> failtestf "expected MissingOutputs, got %O" e
        }

        test "a command builder that throws fails only its task; the next one runs" {
            use dfk = load id
            let sh =
                App.shell dfk (fun (i: int) ->
                    if i = 1 then String.Format("{5}", i) else sprintf "exit %d" i)
            let bad = sh (Arg.value 1)
            match errorOf bad with
            | :? AppBadFormatting -> ()
            | e -> failtestf "expected AppBadFormatting, got %O" e
            Expect.equal (await (sh (Arg.value 0)).Task) 0 "next task runs"
        }

        test "an environment variable set in .NET is seen by the command" {
            use dfk = load id
            let name = "PARSL_SHELL_TEST_" + Guid.NewGuid().ToString("N")
            Environment.SetEnvironmentVariable(name, "42")
            try
                let sh = App.shell dfk (fun (n: string) -> sprintf "test \"$%s\" = 42" n)
                Expect.equal (await (sh (Arg.value name)).Task) 0 "seen"
            finally
                Environment.SetEnvironmentVariable(name, null)
        }
    ]

let tests = testList "Shell" [ direct; native; roundTrip; throughKernel ]
