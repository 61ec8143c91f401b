module Parsl.Tests.AppTests

open System
open System.IO
open System.Threading
open System.Threading.Tasks
open Expecto
open Parsl
open Parsl.Executors
open Parsl.Tests.TestUtil

let private boom (x: int) : int = failwithf "boom %d" x

let functionApps =
    testList "function apps" [
        test "a call returns a future at once; futures chain as dependencies" {
            use dfk = load id
            let square = App.func dfk (fun (x: int) -> x * x)
            let a = square (Arg.value 3)
            let b = square (Arg.future a)
            Expect.equal (await b.Task) 81 "9 squared"
            Expect.equal a.TaskId.Value 0 "ids start at 0"
            Expect.equal b.TaskId.Value 1 "ids increase"
            Expect.equal b.State ExecDone "final state"
        }
        test "plain Tasks are dependencies too" {
            use dfk = load id
            let gate = TaskCompletionSource<int>()
            let inc = App.func dfk (fun (x: int) -> x + 1)
            let f = inc (Arg.task gate.Task)
            Expect.equal f.State Pending "waits for the task"
            gate.SetResult 41
            Expect.equal (await f.Task) 42 "got the task's result"
        }
        test "Arg.all gathers several futures in order" {
            use dfk = load id
            let id' = App.func dfk (fun (x: int) -> x)
            let sum = App.func dfk (fun (xs: int[]) -> Array.sum xs)
            let parts = [ for i in 1..10 -> id' (Arg.value i) ]
            Expect.equal (await (sum (Arg.all parts)).Task) 55 "sum of 1..10"
        }
        test "an exception fails that task only; the kernel keeps running" {
            use dfk = load id
            let bad = App.func dfk boom
            let good = App.func dfk (fun (x: int) -> x * 2)
            let e = errorOf (bad (Arg.value 7))
            Expect.stringContains e.Message "boom 7" "the app's own exception"
            Expect.equal (await (good (Arg.value 4)).Task) 8 "next task runs"
        }
        test "async bodies are awaited" {
            use dfk = load id
            let slow =
                App.async dfk (fun (x: int) (_: CancellationToken) ->
                    task {
                        do! Task.Delay 1
                        return x + 1
                    })
            Expect.equal (await (slow (Arg.value 1)).Task) 2 "awaited"
        }
        test "apps of two and three arguments" {
            use dfk = load id
            let add = App.func2 dfk (fun (a: int) (b: string) -> sprintf "%d%s" a b)
            let three = App.func3 dfk (fun (a: int) (b: int) (c: int) -> a * b * c)
            let x = three (Arg.value 2) (Arg.value 3) (Arg.value 4)
            Expect.equal (await (add (Arg.future x) (Arg.value "!")).Task) "24!" "combined"
        }
    ]

let dependencies =
    testList "dependencies" [
        test "a failed dependency fails the task with DependencyError naming it, with the root cause" {
            use dfk = load id
            let bad = App.func dfk boom
            let inc = App.func dfk (fun (x: int) -> x + 1)
            let a = bad (Arg.value 1)
            let b = inc (Arg.future a)
            let c = inc (Arg.future b)
            match errorOf c with
            | :? DependencyError as d ->
                Expect.equal (List.ofSeq d.Dependencies) [ b.TaskId ] "names its failed dependency"
                Expect.stringContains d.Message (sprintf "task %d" b.TaskId.Value) "message names the task"
                Expect.stringContains d.InnerException.Message "boom 1" "root cause carried"
            | e -> failtestf "expected DependencyError, got %O" e
            Expect.equal b.State DepFail "middle is dep_fail"
            Expect.equal c.State DepFail "last is dep_fail"
        }
        test "dependency failures are never retried" {
            let runs = ref 0
            use dfk = load (fun c -> { c with Retries = 3 })
            let bad = App.func dfk boom
            let counted = App.func dfk (fun (x: int) -> Interlocked.Increment runs |> ignore; x)
            let e = errorOf (counted (Arg.future (bad (Arg.value 0))))
            Expect.isTrue (e :? DependencyError) "DependencyError"
            Expect.equal runs.Value 0 "the dependent never ran"
        }
        test "a dependency that already failed before the call is seen" {
            use dfk = load id
            let bad = App.func dfk boom
            let inc = App.func dfk (fun (x: int) -> x + 1)
            let a = bad (Arg.value 2)
            errorOf a |> ignore
            Expect.isTrue (errorOf (inc (Arg.future a)) :? DependencyError) "DependencyError"
        }
        test "a failed plain Task dependency gives DependencyError too" {
            use dfk = load id
            let inc = App.func dfk (fun (x: int) -> x + 1)
            let e = errorOf (inc (Arg.task (Task.FromException<int>(InvalidOperationException "outside"))))
            Expect.isTrue (e :? DependencyError) "DependencyError"
            Expect.stringContains e.InnerException.Message "outside" "cause"
        }
    ]

let retries =
    testList "retries" [
        test "retries: a task that fails twice then succeeds, with retries = 2" {
            let tries = ref 0
            use dfk = load (fun c -> { c with Retries = 2 })
            let flaky = App.func dfk (fun (x: int) -> if Interlocked.Increment tries < 3 then failwith "flaky" else x)
            Expect.equal (await (flaky (Arg.value 5)).Task) 5 "third try succeeds"
            Expect.equal tries.Value 3 "three tries"
        }
        test "retry handler cost 0.5 with retries = 2 gives 5 tries; the final exception is the app's own" {
            let tries = ref 0
            use dfk = load (fun c -> { c with Retries = 2; RetryHandler = Some(fun _ _ -> 0.5) })
            let always = App.func dfk (fun (_: int) -> Interlocked.Increment tries |> ignore; raise (ArgumentException "mine") : int)
            let e = errorOf (always (Arg.value 0))
            Expect.equal tries.Value 5 "5 tries in all"
            Expect.isTrue (e :? ArgumentException) "the app's own exception"
        }
        test "a retry handler that throws means no retry, and its exception is the task's" {
            let tries = ref 0
            use dfk = load (fun c -> { c with Retries = 5; RetryHandler = Some(fun _ _ -> failwith "handler broke") })
            let always = App.func dfk (fun (_: int) -> Interlocked.Increment tries |> ignore; failwith "app" : int)
            let e = errorOf (always (Arg.value 0))
            Expect.equal tries.Value 1 "no retry"
            Expect.stringContains e.Message "handler broke" "handler's exception"
        }
        test "the retry handler sees the failure and the task" {
            let seen = Collections.Concurrent.ConcurrentBag<string * int>()
            use dfk =
                load (fun c ->
                    { c with
                        Retries = 1
                        RetryHandler = Some(fun e info -> seen.Add((e.Message, info.Try)); 1.0) })
            let always = App.func dfk (fun (_: int) -> failwith "nope" : int)
            errorOf (always (Arg.value 0)) |> ignore
            Expect.equal (seen |> Seq.sortBy snd |> List.ofSeq) [ ("nope", 0); ("nope", 1) ] "both tries"
        }
    ]

let joins =
    testList "join apps" [
        test "a join app completes with the result of the future its body returns" {
            use dfk = load id
            let inc = App.func dfk (fun (x: int) -> x + 1)
            let twice = App.join dfk (fun (x: int) -> inc (Arg.future (inc (Arg.value x))))
            Expect.equal (await (twice (Arg.value 1)).Task) 3 "1 + 1 + 1"
        }
        test "joinAll completes with every result in order" {
            use dfk = load id
            let sq = App.func dfk (fun (x: int) -> x * x)
            let fan = App.joinAll dfk (fun (n: int) -> seq { for i in 1..n -> sq (Arg.value i) })
            Expect.equal (await (fan (Arg.value 4)).Task) [| 1; 4; 9; 16 |] "squares"
        }
        test "a failure inside gives JoinError naming the failed tasks" {
            use dfk = load id
            let bad = App.func dfk boom
            let sq = App.func dfk (fun (x: int) -> x * x)
            let fan = App.joinAll dfk (fun (_: int) -> seq { sq (Arg.value 1); bad (Arg.value 2) })
            let f = fan (Arg.value 0)
            match errorOf f with
            | :? JoinError as j ->
                Expect.equal j.FailedTasks.Count 1 "one failed"
                Expect.stringContains j.InnerException.Message "boom 2" "cause"
            | e -> failtestf "expected JoinError, got %O" e
            Expect.equal f.State Failed "join failed"
        }
    ]

let cancellation =
    testList "cancellation" [
        test "cancelling a pending task cancels it and fails its dependents with DependencyError" {
            use dfk = load id
            let gate = TaskCompletionSource<int>()
            let inc = App.func dfk (fun (x: int) -> x + 1)
            let a = inc (Arg.task gate.Task)
            let b = inc (Arg.future a)
            a.Cancel()
            errorOf b |> ignore
            Expect.isTrue a.Task.IsCanceled "cancelled"
            Expect.equal a.State Failed "failed state"
            Expect.isTrue (b.Exception :? DependencyError) "dependent: DependencyError"
            Expect.isTrue (b.Exception.InnerException :? OperationCanceledException) "cause: cancellation"
            gate.SetResult 1
        }
        test "cancelling a running async task cancels its token" {
            use dfk = load id
            let started = TaskCompletionSource()
            let wait =
                App.async dfk (fun (_: int) (ct: CancellationToken) ->
                    task {
                        started.SetResult()
                        do! Task.Delay(Timeout.Infinite, ct)
                        return 0
                    })
            let f = wait (Arg.value 0)
            started.Task.Wait(TimeSpan.FromSeconds 30.0) |> ignore
            f.Cancel()
            errorOf f |> ignore
            Expect.isTrue f.Task.IsCanceled "cancelled"
        }
        test "cancelling a final task does nothing" {
            use dfk = load id
            let inc = App.func dfk (fun (x: int) -> x + 1)
            let f = inc (Arg.value 1)
            Expect.equal (await f.Task) 2 "done"
            f.Cancel()
            dfk.WaitForCurrentTasks()
            Expect.equal f.State ExecDone "unchanged"
        }
    ]

let threadPool =
    testList "thread pool" [
        test "a task may submit further tasks and wait on them with max_threads = 1" {
            use dfk = load (fun c -> { c with Executors = [ ThreadPoolExecutor("one", 1) ] })
            let inc = App.func dfk (fun (x: int) -> x + 1)
            let outer = App.func dfk (fun (x: int) -> (inc (Arg.value x)).Result + (inc (Arg.value (x * 10))).Result)
            Expect.equal (await (outer (Arg.value 1)).Task) 13 "2 + 11"
        }
        test "at most max_threads tries run at once" {
            let running = ref 0
            let peak = ref 0
            use dfk = load (fun c -> { c with Executors = [ ThreadPoolExecutor("two", 2) ] })
            let work =
                App.func dfk (fun (_: int) ->
                    let n = Interlocked.Increment running
                    lock peak (fun () -> peak.Value <- max peak.Value n)
                    Thread.SpinWait 200000
                    Interlocked.Decrement running |> ignore
                    0)
            let fs = [ for i in 1..40 -> work (Arg.value i) ]
            for f in fs do await f.Task |> ignore
            Expect.isLessThanOrEqual peak.Value 2 "never more than 2"
        }
        test "a resource specification is refused with InvalidResourceSpecification naming the keys" {
            use dfk = load id
            let app = App.funcWith dfk { AppOptions.defaults with Resources = Map [ "cores", box 2 ] } (fun (x: int) -> x)
            match errorOf (app (Arg.value 1)) with
            | :? InvalidResourceSpecification as e -> Expect.equal (List.ofSeq e.InvalidKeys) [ "cores" ] "names the key"
            | e -> failtestf "expected InvalidResourceSpecification, got %O" e
        }
        test "several executors: an app runs only on the labels it names" {
            use dfk = load (fun c -> { c with Executors = [ ThreadPoolExecutor("a", 1); ThreadPoolExecutor("b", 1) ] })
            let release = TaskCompletionSource()
            let started = TaskCompletionSource()
            let holdA =
                App.funcWith dfk { AppOptions.defaults with Executors = [ "a" ] } (fun (_: int) ->
                    started.TrySetResult() |> ignore
                    release.Task.Wait()
                    0)
            let onB = App.funcWith dfk { AppOptions.defaults with Executors = [ "b" ] } (fun (x: int) -> x)
            let onA = App.funcWith dfk { AppOptions.defaults with Executors = [ "a" ] } (fun (x: int) -> x)
            let held = holdA (Arg.value 0)
            started.Task.Wait(TimeSpan.FromSeconds 30.0) |> ignore
            // "a" has its only thread busy: work pinned to "b" still runs, work pinned to "a" waits.
            let b = onB (Arg.value 2)
            let a = onA (Arg.value 1)
            Expect.equal (await b.Task) 2 "ran on b while a was busy"
            Expect.isFalse a.IsCompleted "a's queue is blocked"
            release.SetResult()
            Expect.equal (await a.Task) 1 "a runs once released"
            Expect.equal (await held.Task) 0 "held finished"
        }
    ]

let configAndLifecycle =
    testList "config and lifecycle" [
        test "bad configs fail at load with the field named" {
            let expectField field (f: Config -> Config) =
                match Expect.throwsC (fun () -> (load f :> IDisposable).Dispose()) id with
                | :? ConfigurationError as e -> Expect.equal e.Field field (sprintf "field %s named: %s" field e.Message)
                | e -> failtestf "expected ConfigurationError, got %O" e
            expectField "ThreadPoolExecutor.MaxThreads" (fun c -> { c with Executors = [ ThreadPoolExecutor("t", 0) ] })
            expectField "Config.Retries" (fun c -> { c with Retries = -1 })
            expectField "Config.Executors" (fun c -> { c with Executors = [ ThreadPoolExecutor("x", 1); ThreadPoolExecutor("x", 2) ] })
        }
        test "FinalCounts read on another thread while tasks end: never throws, counts only grow, and add up" {
            use dfk = load (fun c -> { c with Executors = [ ThreadPoolExecutor("threads", 4) ] })
            let ok = App.func dfk (fun (x: int) -> x)
            let bad = App.func dfk (fun (x: int) -> if x >= 0 then failwith "deliberate" else x)
            let n = 3000
            let mutable finished = false
            // The reader signals after its first read, and the tasks start only then: on a loaded machine the pool
            // may otherwise start it after every task has ended, and it would read nothing while tasks end.
            let started = TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously)
            let reader =
                Task.Run(fun () ->
                    let mutable last = Map.empty
                    let mutable reads = 0
                    while not (Volatile.Read &finished) do
                        let now = dfk.FinalCounts |> Seq.map (fun (KeyValue(k, v)) -> k, v) |> Map.ofSeq
                        for KeyValue(k, v) in last do
                            let v' = defaultArg (now.TryFind k) 0
                            if v' < v then failwithf "%A went down from %d to %d" k v v'
                        last <- now
                        reads <- reads + 1
                        started.TrySetResult() |> ignore
                    reads)
            Expect.isTrue (started.Task.Wait(TimeSpan.FromSeconds 60.0)) "the reader read once within 60 s"
            // Each kind of final state appears for the first time while the reader is reading.
            let futures = [| for i in 1..n -> if i % 3 = 0 then (bad (Arg.value i)).AsTask else (ok (Arg.value i)).AsTask |]
            let allEnded = try Task.WaitAll(futures, TimeSpan.FromSeconds 60.0) with _ -> Array.forall (fun (t: Task) -> t.IsCompleted) futures
            Expect.isTrue allEnded "every task ended within 60 s"
            Volatile.Write(&finished, true)
            Expect.isGreaterThan (await reader) 0 "the reader read"
            let counts = dfk.FinalCounts
            Expect.equal counts[ExecDone] (n - n / 3) "every success counted"
            Expect.equal counts[Failed] (n / 3) "every failure counted"
            Expect.isFalse (counts.ContainsKey DepFail) "no state that did not happen"
        }
        test "an app naming an unknown label fails when it is made, naming the label" {
            use dfk = load id
            let e = Expect.throwsC (fun () -> App.funcWith dfk { AppOptions.defaults with Executors = [ "gpu" ] } (fun (x: int) -> x) |> ignore) id
            Expect.stringContains e.Message "'gpu'" "names the label"
            Expect.isTrue (e :? ConfigurationError) "ConfigurationError"
        }
        test "calling an app after cleanup is NoDataFlowKernelError; a second cleanup too" {
            let dfk = load id
            let inc = App.func dfk (fun (x: int) -> x + 1)
            dfk.CleanupAsync().Wait()
            Expect.throwsT<NoDataFlowKernelError> (fun () -> inc (Arg.value 1) |> ignore) "after cleanup"
            Expect.throwsT<NoDataFlowKernelError> (fun () -> dfk.CleanupAsync().Wait()) "second cleanup"
        }
        test "wait_for_current_tasks waits for every task" {
            use dfk = load id
            let gate = TaskCompletionSource<int>()
            let inc = App.func dfk (fun (x: int) -> x + 1)
            let fs = [ for _ in 1..5 -> inc (Arg.task gate.Task) ]
            let waiting = dfk.WaitForCurrentTasksAsync()
            Expect.isFalse waiting.IsCompleted "tasks pending"
            gate.SetResult 1
            waiting.Wait(TimeSpan.FromSeconds 60.0) |> ignore
            Expect.isTrue (fs |> List.forall (fun f -> f.State = ExecDone)) "all final"
        }
        test "exit mode wait finishes every task before shutdown" {
            let gate = TaskCompletionSource<int>()
            let dfk = load (fun c -> { c with ExitMode = Wait })
            let inc = App.func dfk (fun (x: int) -> x + 1)
            let f = inc (Arg.task gate.Task)
            let cleanup = (dfk :> IAsyncDisposable).DisposeAsync().AsTask()
            Expect.isFalse cleanup.IsCompleted "waits"
            gate.SetResult 1
            cleanup.Wait(TimeSpan.FromSeconds 60.0) |> ignore
            Expect.equal f.Result 2 "finished"
        }
        test "exit mode skip fails unfinished futures with KernelShutdownError instead of hanging" {
            let gate = TaskCompletionSource<int>()
            let dfk = load (fun c -> { c with ExitMode = Skip })
            let inc = App.func dfk (fun (x: int) -> x + 1)
            let f = inc (Arg.task gate.Task)
            (dfk :> IDisposable).Dispose()
            Expect.isTrue (errorOf f :? KernelShutdownError) "KernelShutdownError"
        }
        test "exit mode cleanup lets running tries finish" {
            let started = TaskCompletionSource()
            let release = TaskCompletionSource()
            let dfk = load id
            let hold = App.func dfk (fun (x: int) -> started.SetResult(); release.Task.Wait(); x)
            let f = hold (Arg.value 7)
            started.Task.Wait(TimeSpan.FromSeconds 30.0) |> ignore
            let cleanup = dfk.CleanupAsync()
            release.SetResult()
            cleanup.Wait(TimeSpan.FromSeconds 60.0) |> ignore
            Expect.equal f.Result 7 "the running try finished"
        }
        test "run directories are numbered 000, 001, ... numerically past 999, with parsl.log" {
            let baseDir = tempRunDir ()
            Directory.CreateDirectory(Path.Combine(baseDir, "999")) |> ignore
            Directory.CreateDirectory(Path.Combine(baseDir, "1000")) |> ignore
            use dfk = DataFlowKernel.Load { Config.defaults with RunDir = baseDir }
            Expect.equal (Path.GetFileName dfk.RunDir) "1001" "max + 1"
            (dfk :> IDisposable).Dispose()
            Expect.isTrue (File.Exists(Path.Combine(dfk.RunDir, "parsl.log"))) "log file"
            let first = DataFlowKernel.Load { Config.defaults with RunDir = tempRunDir () }
            Expect.equal (Path.GetFileName first.RunDir) "000" "first is 000"
            (first :> IDisposable).Dispose()
        }
    ]

let backPressure =
    testList "back-pressure" [
        test "with MaxTasksInFlight = 2 a third call blocks until a task finishes" {
            use dfk = load (fun c -> { c with MaxTasksInFlight = 2 })
            let gate = TaskCompletionSource<int>()
            let inc = App.func dfk (fun (x: int) -> x + 1)
            let first = inc (Arg.task gate.Task)
            let second = inc (Arg.task gate.Task)
            let third = Task.Run(fun () -> inc (Arg.value 10))
            // A bounded wait for something that must not happen: without back-pressure the call returns at once.
            Expect.isFalse (third.Wait(TimeSpan.FromMilliseconds 300.0)) "third call blocked while two are in flight"
            gate.SetResult 1
            Expect.equal (await (await third).Task) 11 "third ran once a slot was free"
            Expect.equal (first.Result, second.Result) (2, 2) "the first two finished"
        }
        test "calls from inside a task are never blocked, so nested workflows cannot deadlock" {
            use dfk = load (fun c -> { c with MaxTasksInFlight = 1 })
            let inc = App.func dfk (fun (x: int) -> x + 1)
            let outer = App.func dfk (fun (x: int) -> (inc (Arg.value x)).Result)
            Expect.equal (await (outer (Arg.value 1)).Task) 2 "nested call ran"
        }
        test "a negative bound is a configuration error naming the field" {
            let e = Expect.throwsC (fun () -> (load (fun c -> { c with MaxTasksInFlight = -1 }) :> IDisposable).Dispose()) id
            Expect.equal (e :?> ConfigurationError).Field "Config.MaxTasksInFlight" "field"
        }
    ]

let tests =
    testList "Apps" [ functionApps; dependencies; retries; joins; cancellation; threadPool; configAndLifecycle; backPressure ]
