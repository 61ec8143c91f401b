module Parsl.Tests.ThreadPoolExecutorTests

// The thread pool executor driven directly, as the kernel drives it (Submit from one thread, ShutdownAsync from
// another), with FsCheck choosing the thread count, the number of tries and where the shutdown comes: however
// they interleave, every try submitted is reported exactly once, so no future is left waiting forever.

open System
open System.Collections.Concurrent
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks
open Expecto
open FsCheck
open FsCheck.FSharp
open Parsl
open Parsl.Executors

type private Run =
    { Threads: int
      Tries: int
      ShutdownAfter: int
      Wait: bool
      /// The submitter holds back the tries after `ShutdownAfter` until `ShutdownAsync` has been called (so they
      /// must be refused and reported); otherwise it races on.
      Gate: bool }

let private genRun = gen {
    let! threads = Gen.choose (1, 4)
    let! tries = Gen.choose (0, 400)
    let! after = Gen.choose (0, tries)
    let! wait = Gen.elements [ true; false ]
    let! gate = Gen.elements [ true; false ]
    return { Threads = threads; Tries = tries; ShutdownAfter = after; Wait = wait; Gate = gate } }

let private call (i: int) =
    Function
        { AppName = "square"
          Function = Func<int, int>(fun x -> x * x)
          Args = [| box i |]
          TakesCancellation = false
          Invoke = fun args _ -> box (unbox<int> args[0] * unbox<int> args[0])
          Walltime = None }

let private runOnce (r: Run) =
    let events = ConcurrentQueue<ExecutorEvent>()
    let ex = ThreadPoolExecutor("threads", r.Threads) :> IExecutor
    let ctx = { RunDir = "."; Report = events.Enqueue; Log = Serilog.Core.Logger.None }
    ex.StartAsync(ctx, CancellationToken.None).Wait()
    let submitted = [| 0 |]
    let shutdown = TaskCompletionSource<Task>()
    let submitter =
        Thread(fun () ->
            for i in 0 .. r.Tries - 1 do
                if r.Gate && i = r.ShutdownAfter then shutdown.Task.Wait()
                ex.Submit { Id = TaskId i; Try = TryId 0; Body = call i; Resources = Dictionary() }
                Volatile.Write(&submitted[0], i + 1))
    let stopper =
        Thread(fun () ->
            let mutable sw = SpinWait()
            while Volatile.Read(&submitted[0]) < r.ShutdownAfter do sw.SpinOnce()
            shutdown.SetResult(ex.ShutdownAsync r.Wait))
    submitter.Start()
    stopper.Start()
    let limit = TimeSpan.FromSeconds 30.
    if not (submitter.Join limit && stopper.Join limit) then failwith "Submit or ShutdownAsync blocked"
    if not (shutdown.Task.Result.Wait limit) then failwith "ShutdownAsync did not finish"
    // Without wait (Skip), ShutdownAsync does not wait for running tries: they report when their bodies return.
    if not r.Wait then
        let deadline = DateTime.UtcNow + limit
        let mutable sw = SpinWait()
        while events.Count < r.Tries && DateTime.UtcNow < deadline do sw.SpinOnce()
    // Every try reported once: a value if it ran, KernelShutdownError if the shutdown refused or skipped it.
    let seen = Dictionary<int, ExecutorEvent>()
    for e in events do
        let id =
            match e with
            | TryDone(id, _, v) ->
                if unbox<int> v <> id.Value * id.Value then failwithf "try %d: wrong value %A" id.Value v
                id.Value
            | TryFailed(id, _, (:? KernelShutdownError)) -> id.Value
            | TryFailed(id, _, err) -> failwithf "try %d failed with %O" id.Value err
        if seen.ContainsKey id then failwithf "try %d reported twice" id
        seen[id] <- e
    let missing = [ for i in 0 .. r.Tries - 1 do if not (seen.ContainsKey i) then i ]
    if not missing.IsEmpty then failwithf "%d tries never reported (first: %d)" missing.Length missing.Head
    // With wait, the tries submitted before the shutdown began all ran.
    if r.Wait then
        for i in 0 .. r.ShutdownAfter - 1 do
            match seen[i] with
            | TryDone _ -> ()
            | e -> failwithf "try %d was submitted before ShutdownAsync(wait) but ended %A" i e

let tests =
    testList "ThreadPoolExecutor" [
        testPropertyWithConfig { FsCheckConfig.defaultConfig with maxTest = 40 } "submits racing a shutdown: every try reported exactly once"
        <| Prop.forAll (Arb.fromGen genRun) runOnce
    ]
