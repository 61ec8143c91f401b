module Parsl.Tests.WorkflowTests

open System
open System.Threading
open System.Threading.Tasks
open Expecto
open Parsl
open Parsl.Executors
open Parsl.Tests.TestUtil

let private threads n (c: Config) = { c with Executors = [ ThreadPoolExecutor("threads", n) :> IExecutor ] }

/// An app that returns true only if `count` calls of it are running at the same time (waits up to 30 s).
let private meeting (dfk: DataFlowKernel) (count: int) =
    let gate = new CountdownEvent(count)
    App.func dfk (fun (_: int) ->
        gate.Signal() |> ignore
        gate.Wait(TimeSpan.FromSeconds 30.0))

let tests =
    testList "Workflow" [
        test "let! binds results without blocking and the workflow returns a value" {
            use dfk = load id
            let square = App.func dfk (fun (x: int) -> x * x)
            let wf =
                parsl dfk {
                    let! a = square (Arg.value 3)
                    let! b = square (Arg.value a)
                    return a + b
                }
            Expect.equal (await wf.Task) 90 "9 + 81"
            Expect.equal wf.State ExecDone "the workflow is a tracked task"
            Expect.equal wf.AppName "workflow" "default app name"
            Expect.equal wf.TaskId.Value 0 "the workflow's task is submitted first, with its own id"
        }

        test "and! runs its branches in parallel" {
            use dfk = load (threads 2)
            let meet = meeting dfk 2
            let wf =
                parsl dfk {
                    let! a = meet (Arg.value 1)
                    and! b = meet (Arg.value 2)
                    return a && b
                }
            Expect.isTrue (await wf.Task) "both branches were running at once"
        }

        test "for starts every iteration at once" {
            use dfk = load (threads 4)
            let meet = meeting dfk 4
            let met = Collections.Concurrent.ConcurrentBag<bool>()
            let wf =
                parsl dfk {
                    for i in 1..4 do
                        let! ok = meet (Arg.value i)
                        met.Add ok
                    return met.Count
                }
            Expect.equal (await wf.Task) 4 "every iteration finished"
            Expect.allEqual met true "all four iterations were running at once"
        }

        test "a failed branch fails the workflow with JoinError carrying the cause" {
            use dfk = load id
            let boom = App.func dfk (fun (x: int) -> if x > 0 then failwith "boom" else x)
            let ok = App.func dfk (fun (x: int) -> x)
            let wf =
                parsl dfk {
                    let! a = ok (Arg.value 1)
                    and! b = boom (Arg.value 1)
                    return a + b
                }
            let e = errorOf wf
            Expect.isTrue (e :? JoinError) (sprintf "JoinError expected, got %O" e)
            Expect.equal e.InnerException.Message "boom" "the app's exception is the cause"
            Expect.equal wf.State Failed "the workflow's task failed"
        }

        test "a shell app's exit code reaches the workflow's JoinError" {
            use dfk = load id
            let exitWith = App.shell dfk (fun (code: int) -> sprintf "exit %d" code)
            let wf =
                parsl dfk {
                    let! _ = exitWith (Arg.value 3)
                    return "unreachable"
                }
            let e = errorOf wf
            match e.InnerException with
            | :? BashExitFailure as b -> Expect.equal b.ExitCode 3 "exit code"
            | other -> failtestf "BashExitFailure expected, got %O" other
        }

        test "an exception before the first let! also fails with JoinError" {
            use dfk = load id
            let wf : AppFuture<int> = parsl dfk { return failwith "early" }
            let e = errorOf wf
            Expect.isTrue (e :? JoinError) "JoinError"
            Expect.equal e.InnerException.Message "early" "cause"
        }

        test "try/with recovers from a failed app and try/finally always runs" {
            use dfk = load id
            let boom = App.func dfk (fun (x: int) -> if x > 0 then invalidOp "bad" else x)
            let mutable cleaned = false
            let wf =
                parsl dfk {
                    try
                        try
                            let! v = boom (Arg.value 1)
                            return v
                        with :? InvalidOperationException as e ->
                            return e.Message.Length
                    finally
                        cleaned <- true
                }
            Expect.equal (await wf.Task) 3 "the handler's value"
            Expect.isTrue cleaned "finally ran"
        }

        test "match! and return! compose, and workflows nest" {
            use dfk = load id
            let half = App.func dfk (fun (x: int) -> if x % 2 = 0 then Some(x / 2) else None)
            let inc = App.func dfk (fun (x: int) -> x + 1)
            let inner x = parsl dfk { return! inc (Arg.value x) }
            let wf =
                parsl dfk {
                    match! half (Arg.value 8) with
                    | Some h ->
                        let! i = inner h
                        return i
                    | None -> return -1
                }
            Expect.equal (await wf.Task) 5 "8/2 + 1"
        }

        test "a waiting workflow holds no thread" {
            // Two internal threads, fifty workflows: each must start (and wait) before any can finish.
            use dfk = load (fun c -> { c with InternalTasksMaxThreads = 2 })
            let release = TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously)
            let started = new CountdownEvent(50)
            let flows =
                [ for i in 1..50 ->
                      parsl dfk {
                          started.Signal() |> ignore
                          let! v = release.Task
                          return v + i
                      } ]
            Expect.isTrue (started.Wait(TimeSpan.FromSeconds 60.0)) "all fifty workflows started while none could finish"
            Expect.isTrue (flows |> List.forall (fun f -> not f.IsCompleted)) "none finished before the release"
            release.SetResult 100
            let results = flows |> List.map (fun f -> await f.Task)
            Expect.equal results [ for i in 1..50 -> 100 + i ] "each workflow's result"
        }

        test "use, while and do! on a plain Task work as in task { }" {
            use dfk = load id
            let inc = App.func dfk (fun (x: int) -> x + 1)
            let disposed = ref false
            let wf =
                parsl dfk {
                    use _ = { new IDisposable with member _.Dispose() = disposed.Value <- true }
                    let mutable x = 0
                    while x < 5 do
                        let! next = inc (Arg.value x)
                        x <- next
                    do! Task.CompletedTask
                    let! fromTask = Task.FromResult 10
                    return x + fromTask
                }
            Expect.equal (await wf.Task) 15 "five increments, then 10"
            Expect.isTrue disposed.Value "use disposed its resource"
        }

        test "Workflow.all gathers results in order and named workflows carry their name" {
            use dfk = load id
            let square = App.func dfk (fun (x: int) -> x * x)
            let wf =
                Workflow.named "sum-of-squares" dfk {
                    let! xs = Workflow.all [ for i in 1..10 -> square (Arg.value i) ]
                    return Array.sum xs
                }
            Expect.equal (await wf.Task) 385 "1² + ... + 10²"
            Expect.equal wf.AppName "sum-of-squares" "name"
        }
    ]
