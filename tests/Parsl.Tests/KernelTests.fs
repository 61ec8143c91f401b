module Parsl.Tests.KernelTests

// Example tests of the pure kernel: states, transitions, retries, dependency failures, joins, cancellation.

open System
open System.Collections.Generic
open Expecto
open Parsl
open Parsl.Core

let private spec (id: int) (deps: int list) =
    { Id = TaskId id
      AppName = sprintf "app%d" id
      Executor = "x"
      Kind = FunctionApp
      Deps = deps |> List.map TaskId
      FailedDeps = []
      ExternalDeps = 0
      Retries = 0
      Payload = box id }

/// Feeds events to the kernel and keeps every command.
type private Driver() =
    let mutable state = Kernel.empty
    let all = List<Command>()
    member _.State = state
    member _.All = all
    member _.Step(e: Event) =
        let s, cmds = Kernel.step state e
        state <- s
        all.AddRange cmds
        cmds
    member this.Run(events: Event list) =
        for e in events do
            this.Step e |> ignore
    member _.Launches(id: int) =
        all |> Seq.filter (fun c -> match c with Launch(t, _, _, _) -> t.Value = id | _ -> false) |> Seq.length
    member _.Final(id: int) =
        all
        |> Seq.tryPick (fun c ->
            match c with
            | Complete(t, _, s, completion) when t.Value = id -> Some(s, completion)
            | _ -> None)
    member this.ErrorOf(id: int) =
        match this.Final id with
        | Some(_, Completion.Error e) -> e
        | other -> failtestf "task %d should have failed, got %A" id other
    member _.Count(state: TaskState) =
        all |> Seq.filter (fun c -> match c with Complete(_, _, s, _) -> s = state | _ -> false) |> Seq.length

let private fails (id: int) (tryNo: int) (e: exn) = TryEnded(TaskId id, TryId tryNo, Threw(e, Cost 1.0))
let private succeeds (id: int) (tryNo: int) (v: obj) = TryEnded(TaskId id, TryId tryNo, Succeeded v)
let private boom () = InvalidOperationException "Deliberate failure" :> exn

let private states =
    testList "states" [
        test "Parsl's state names and values" {
            let expected =
                [ Pending, "pending", 0; Running, "running", 2; ExecDone, "exec_done", 3; Failed, "failed", 4
                  DepFail, "dep_fail", 5; Launched, "launched", 7; FailRetryable, "fail_retryable", 8
                  MemoDone, "memo_done", 9; Joining, "joining", 10; RunningEnded, "running_ended", 11 ]
            for s, name, value in expected do
                Expect.equal (TaskState.name s) name "name"
                Expect.equal (TaskState.value s) value (sprintf "value of %s" name)
            Expect.equal (List.length TaskState.all) expected.Length "every state listed"
            Expect.equal (TaskState.all |> List.filter TaskState.isFinal |> set) (set [ ExecDone; MemoDone; Failed; DepFail ]) "FINAL_STATES"
            Expect.equal (TaskState.all |> List.filter TaskState.isFailure |> set) (set [ Failed; DepFail ]) "FINAL_FAILURE_STATES"
        }
        test "the transition table: exactly these transitions are allowed, all others are error values" {
            let allowed =
                set
                    [ Pending, Launched; Pending, MemoDone; Pending, DepFail; Pending, Failed
                      Launched, Running; Launched, ExecDone; Launched, Failed; Launched, DepFail; Launched, FailRetryable
                      Launched, Joining; Launched, MemoDone
                      Running, RunningEnded; Running, ExecDone; Running, Failed; Running, DepFail; Running, FailRetryable
                      Running, Joining
                      RunningEnded, ExecDone; RunningEnded, Failed; RunningEnded, DepFail; RunningEnded, FailRetryable
                      RunningEnded, Joining
                      FailRetryable, Pending
                      Joining, ExecDone; Joining, Failed ]
            let task = TaskId 7
            for from in TaskState.all do
                for into in TaskState.all do
                    match Transition.check task from into with
                    | Ok s ->
                        Expect.isTrue (allowed.Contains(from, into)) (sprintf "%A -> %A should be refused" from into)
                        Expect.equal s into "Ok carries the new state"
                    | Result.Error e ->
                        Expect.isFalse (allowed.Contains(from, into)) (sprintf "%A -> %A should be allowed" from into)
                        Expect.equal e { Task = task; From = from; To = into } "the error names the task and both states"
        }
        test "final states have no way out" {
            for s in TaskState.all |> List.filter TaskState.isFinal do
                for into in TaskState.all do
                    Expect.isFalse (TaskState.canTransition s into) (sprintf "%A -> %A" s into)
        }
    ]

let private retries =
    testList "retries" [
        test "cost 0.5 with retries = 2 gives 5 tries, then failed with the last try's exception" {
            let d = Driver()
            d.Step(Submit { spec 0 [] with Retries = 2 }) |> ignore
            let mutable last = null
            for t in 0..4 do
                last <- InvalidOperationException(sprintf "try %d" t) :> exn
                d.Step(TryEnded(TaskId 0, TryId t, Threw(last, Cost 0.5))) |> ignore
            Expect.equal (d.Launches 0) 5 "tries: costs 0.5, 1.0, 1.5, 2.0 are <= 2; 2.5 is not"
            Expect.equal (d.Final 0) (Some(Failed, Completion.Error last)) "failed with the fifth try's exception"
            Expect.equal (d.All |> Seq.filter ((=) (StateChanged(TaskId 0, FailRetryable))) |> Seq.length) 4 "four fail_retryable"
        }
        test "cost 1 per failure: 1 + retries tries" {
            let d = Driver()
            d.Step(Submit { spec 0 [] with Retries = 3 }) |> ignore
            for t in 0..3 do
                d.Step(fails 0 t (boom ())) |> ignore
            Expect.equal (d.Launches 0) 4 "1 + 3 tries"
            Expect.equal (fst (d.Final 0).Value) Failed "then failed"
        }
        test "a retry handler that throws: no retry, and its exception is the task's" {
            let d = Driver()
            d.Step(Submit { spec 0 [] with Retries = 3 }) |> ignore
            let handlerError = ArgumentException "handler broke" :> exn
            d.Step(TryEnded(TaskId 0, TryId 0, Threw(boom (), HandlerFailed handlerError))) |> ignore
            Expect.equal (d.Launches 0) 1 "no retry"
            Expect.equal (d.Final 0) (Some(Failed, Completion.Error handlerError)) "the handler's exception"
        }
        test "DependencyError raised by a try is never retried and ends dep_fail (regression: launched -> dep_fail was refused, losing the task)" {
            let d = Driver()
            d.Step(Submit { spec 0 [] with Retries = 3 }) |> ignore
            let e = DependencyError([ TaskId 99 ], TaskId 0, boom ()) :> exn
            let cmds = d.Step(fails 0 0 e)
            Expect.isFalse (cmds |> List.exists (fun c -> match c with Rejected _ -> true | _ -> false)) "not refused"
            Expect.equal (d.Launches 0) 1 "no retry"
            Expect.equal (d.Final 0) (Some(DepFail, Completion.Error e)) "dep_fail"
            Expect.equal d.State.Live 0 "the record is released"
        }
        test "a join app body that throws is retried like any try (regression: joins were never retried)" {
            let d = Driver()
            d.Step(Submit { spec 0 [] with Kind = JoinApp; Retries = 1 }) |> ignore
            d.Step(fails 0 0 (boom ())) |> ignore
            Expect.equal (d.Launches 0) 2 "retried once"
            d.Step(JoinReturned(TaskId 0, TryId 1, [], [], 0)) |> ignore
            Expect.equal (d.Final 0) (Some(ExecDone, JoinResults)) "then joined"
        }
        test "a result for an old try is rejected as stale, and changes nothing" {
            let d = Driver()
            d.Step(Submit { spec 0 [] with Retries = 1 }) |> ignore
            d.Step(fails 0 0 (boom ())) |> ignore
            let before = d.State
            let cmds = d.Step(succeeds 0 0 (box 1))
            Expect.equal cmds [ Rejected(StaleTry(TaskId 0, TryId 0)) ] "stale"
            Expect.isTrue (obj.ReferenceEquals(before, d.State)) "state unchanged"
        }
        test "a task id submitted twice is rejected" {
            let d = Driver()
            d.Step(Submit(spec 0 [ 5 ])) |> ignore
            Expect.equal (d.Step(Submit(spec 0 []))) [ Rejected(DuplicateTask(TaskId 0)) ] "duplicate"
        }
        test "MemoHit ends memo_done with the memo's value" {
            let d = Driver()
            d.Step(Submit(spec 0 [])) |> ignore
            let v = box "from the memo table"
            d.Step(MemoHit(TaskId 0, TryId 0, v)) |> ignore
            Expect.equal (d.Final 0) (Some(MemoDone, Value v)) "memo_done"
        }
    ]

let private dependencies =
    testList "dependencies" [
        // The shapes of Parsl's test_depfail_propagation.py: fails() at the root, depends(parent) below it.
        test "depfail once: 1 dep_fail" {
            let d = Driver()
            d.Run [ Submit(spec 0 []); Submit(spec 1 [ 0 ]); fails 0 0 (boom ()) ]
            Expect.equal (d.Count DepFail) 1 "one dep_fail"
            Expect.equal (fst (d.Final 0).Value) Failed "the root failed"
            Expect.isFalse (d.ErrorOf 0 :? DependencyError) "the root's error is its own"
            match d.ErrorOf 1 with
            | :? DependencyError as e ->
                Expect.equal (List.ofSeq e.Dependencies) [ TaskId 0 ] "names the failed dependency"
                Expect.equal e.TaskId (TaskId 1) "names the task"
                Expect.equal e.InnerException.Message "Deliberate failure" "carries the root cause"
            | e -> failtestf "expected DependencyError, got %O" e
        }
        test "depfail chain: 3 dep_fail, each naming its own parent" {
            let d = Driver()
            d.Run [ Submit(spec 0 []); Submit(spec 1 [ 0 ]); Submit(spec 2 [ 1 ]); Submit(spec 3 [ 2 ]); fails 0 0 (boom ()) ]
            Expect.equal (d.Count DepFail) 3 "three dep_fail"
            for i in 1..3 do
                Expect.equal (List.ofSeq (d.ErrorOf i :?> DependencyError).Dependencies) [ TaskId(i - 1) ] "names the parent"
        }
        test "depfail branches: 2 dep_fail" {
            let d = Driver()
            d.Run [ Submit(spec 0 []); Submit(spec 1 [ 0 ]); Submit(spec 2 [ 0 ]); fails 0 0 (boom ()) ]
            Expect.equal (d.Count DepFail) 2 "two dep_fail"
        }
        test "a dependency that failed before submission fails the task at once" {
            let d = Driver()
            d.Step(Submit { spec 1 [] with FailedDeps = [ Some(TaskId 0), boom () ] }) |> ignore
            Expect.equal (fst (d.Final 1).Value) DepFail "dep_fail without launching"
            Expect.equal (d.Launches 1) 0 "never launched"
        }
        test "a task waits for every dependency, even after one failed" {
            let d = Driver()
            d.Run [ Submit(spec 0 []); Submit(spec 1 []); Submit(spec 2 [ 0; 1 ]); fails 0 0 (boom ()) ]
            Expect.isNone (d.Final 2) "still waiting for task 1"
            d.Step(succeeds 1 0 (box 1)) |> ignore
            Expect.equal (List.ofSeq (d.ErrorOf 2 :?> DependencyError).Dependencies) [ TaskId 0 ] "names only the failed one"
        }
        test "external futures: launched only after all are done" {
            let d = Driver()
            d.Step(Submit { spec 0 [] with ExternalDeps = 2 }) |> ignore
            d.Step(ExternalDone(TaskId 0, None)) |> ignore
            Expect.equal (d.Launches 0) 0 "one still open"
            d.Step(ExternalDone(TaskId 0, None)) |> ignore
            Expect.equal (d.Launches 0) 1 "launched"
        }
        test "a stale ExternalDone cannot release a task still waiting on a kernel dependency (regression)" {
            let d = Driver()
            d.Run [ Submit(spec 0 []); Submit(spec 1 [ 0 ]) ]
            let cmds = d.Step(ExternalDone(TaskId 1, None))
            Expect.equal cmds [ Rejected(UnknownTask(TaskId 1)) ] "refused: task 1 waits on no external future"
            Expect.equal (d.Launches 1) 0 "not launched"
        }
        test "a 100,000-deep chain failing at its root does not overflow the stack" {
            let n = 100_000
            let d = Driver()
            d.Step(Submit(spec 0 [])) |> ignore
            for i in 1 .. n - 1 do
                d.Step(Submit(spec i [ i - 1 ])) |> ignore
            d.Step(fails 0 0 (boom ())) |> ignore
            Expect.equal (d.Count DepFail) (n - 1) "every descendant dep_fail"
            Expect.equal d.State.Live 0 "every record released"
            Expect.isTrue d.State.Dependents.IsEmpty "no dependents left"
            Expect.equal (List.ofSeq (d.ErrorOf(n - 1) :?> DependencyError).Dependencies) [ TaskId(n - 2) ] "the last names its parent"
        }
    ]

let private joins =
    testList "joins" [
        test "a join completes with its inner futures' results once they are done" {
            let d = Driver()
            d.Run [ Submit(spec 0 []); Submit { spec 1 [] with Kind = JoinApp } ]
            d.Step(JoinReturned(TaskId 1, TryId 0, [ TaskId 0 ], [], 1)) |> ignore
            Expect.isTrue (d.All.Contains(StateChanged(TaskId 1, Joining))) "joining"
            d.Step(succeeds 0 0 (box 1)) |> ignore
            Expect.isNone (d.Final 1) "still waiting on the external future"
            d.Step(ExternalDone(TaskId 1, None)) |> ignore
            Expect.equal (d.Final 1) (Some(ExecDone, JoinResults)) "exec_done with the results"
        }
        test "a join whose inner task fails ends failed with JoinError naming it" {
            let d = Driver()
            d.Run
                [ Submit(spec 0 []); Submit(spec 1 []); Submit { spec 2 [] with Kind = JoinApp; Retries = 3 }
                  JoinReturned(TaskId 2, TryId 0, [ TaskId 0; TaskId 1 ], [], 0)
                  succeeds 0 0 (box 0); fails 1 0 (boom ()) ]
            match d.Final 2 with
            | Some(Failed, Completion.Error(:? JoinError as e)) ->
                Expect.equal (List.ofSeq e.FailedTasks) [ TaskId 1 ] "names the failed inner task"
                Expect.equal e.TaskId (TaskId 2) "names the join"
            | other -> failtestf "expected failed with JoinError, got %A" other
            Expect.equal (d.Launches 2) 1 "join failures are not retried"
        }
        test "a join returning nothing to wait on completes at once" {
            let d = Driver()
            d.Run [ Submit { spec 0 [] with Kind = JoinApp }; JoinReturned(TaskId 0, TryId 0, [], [], 0) ]
            Expect.equal (d.Final 0) (Some(ExecDone, JoinResults)) "exec_done"
        }
    ]

let private cancellation =
    testList "cancellation and abandon" [
        test "cancelling a pending task fails it as cancelled and its dependents dep_fail" {
            let d = Driver()
            d.Run [ Submit(spec 0 []); Submit(spec 1 [ 0 ]); Submit(spec 2 [ 1 ]); Cancel(TaskId 1) ]
            match d.Final 1 with
            | Some(Failed, Completion.Error(:? OperationCanceledException)) -> ()
            | other -> failtestf "expected cancelled, got %A" other
            Expect.equal (List.ofSeq (d.ErrorOf 2 :?> DependencyError).Dependencies) [ TaskId 1 ] "dependent dep_fail naming it"
            Expect.isTrue (Kernel.isLive d.State (TaskId 0)) "the running dependency is untouched"
            d.Step(succeeds 0 0 (box 0)) |> ignore
            Expect.equal d.State.Live 0 "nothing left"
        }
        test "cancelling a launched task asks the executor, then its failure is final even with retries left" {
            let d = Driver()
            d.Step(Submit { spec 0 [] with Retries = 3 }) |> ignore
            Expect.equal (d.Step(Cancel(TaskId 0))) [ CancelTry(TaskId 0, TryId 0, "x") ] "CancelTry only"
            Expect.equal (d.Step(Cancel(TaskId 0))) [] "a second cancel does nothing"
            let e = OperationCanceledException "stopped" :> exn
            d.Step(fails 0 0 e) |> ignore
            Expect.equal (d.Launches 0) 1 "no retry"
            Expect.equal (d.Final 0) (Some(Failed, Completion.Error e)) "failed"
        }
        test "a cancelled join whose body then returns ends cancelled instead of joining (regression)" {
            let d = Driver()
            d.Run [ Submit(spec 0 []); Submit { spec 1 [] with Kind = JoinApp }; Cancel(TaskId 1) ]
            d.Step(JoinReturned(TaskId 1, TryId 0, [ TaskId 0 ], [], 0)) |> ignore
            match d.Final 1 with
            | Some(Failed, Completion.Error(:? OperationCanceledException)) -> ()
            | other -> failtestf "expected cancelled, got %A" other
        }
        test "cancelling a final or unknown task does nothing" {
            let d = Driver()
            d.Run [ Submit(spec 0 []); succeeds 0 0 (box 0) ]
            Expect.equal (d.Step(Cancel(TaskId 0))) [] "final"
            Expect.equal (d.Step(Cancel(TaskId 42))) [] "unknown"
        }
        test "Abandon fails a live task with the given exception, whatever its state, and its dependents dep_fail" {
            let d = Driver()
            d.Run [ Submit(spec 0 []); Submit(spec 1 [ 0 ]) ]
            let e = KernelShutdownError(TaskId 0) :> exn
            d.Step(Abandon(TaskId 0, e)) |> ignore
            Expect.equal (d.Final 0) (Some(Failed, Completion.Error e)) "launched task abandoned"
            Expect.equal (fst (d.Final 1).Value) DepFail "its dependent"
            Expect.equal (d.Step(Abandon(TaskId 1, e))) [ Rejected(UnknownTask(TaskId 1)) ] "no longer live"
            Expect.equal (d.Step(succeeds 0 0 (box 0))) [ Rejected(UnknownTask(TaskId 0)) ] "a late result is refused"
        }
    ]

/// The futex semaphore the kernel's mailbox and the thread pool's queue sleep on.
let semaphore =
    testList "light semaphore" [
        test "every release is taken exactly once by waiting threads, and none is lost" {
            let sem = Parsl.Node.Runtime.LightSemaphore()
            let consumers = 4
            let each = 5_000
            let missed = ref 0
            // Each consumer takes its share; a wake-up that went missing leaves one asleep with the count above zero
            // until its 30 s wait gives up (false), and the test fails.
            let threads =
                [ for _ in 1..consumers ->
                    Threading.Thread(fun () ->
                        for _ in 1..each do
                            if not (sem.Wait 30_000) then Threading.Interlocked.Increment(&missed.contents) |> ignore) ]
            for t in threads do t.Start()
            // Single releases and batches, as the queues use them: 10,000 + 100 × 100.
            for i in 1..10_000 do
                sem.Release()
                if i % 100 = 0 then sem.Release 100
            for t in threads do
                Expect.isTrue (t.Join(TimeSpan.FromSeconds 120.0)) "every consumer finished"
            Expect.equal missed.Value 0 "every wait was answered by a release"
            Expect.isFalse (sem.Wait 0) "and no release was taken twice or left over"
        }
        test "a wait with nothing released times out and returns false" {
            let sem = Parsl.Node.Runtime.LightSemaphore()
            let sw = Diagnostics.Stopwatch.StartNew()
            Expect.isFalse (sem.Wait 50) "nothing to take"
            Expect.isGreaterThanOrEqual sw.ElapsedMilliseconds 45L "it waited (about) the time asked"
            sem.Release 3
            Expect.isTrue (sem.Wait 0 && sem.Wait 0 && sem.Wait 0) "three taken"
            Expect.isFalse (sem.Wait 0) "then none"
        }
    ]

let tests = testList "Kernel" [ states; retries; dependencies; joins; cancellation; semaphore ]
