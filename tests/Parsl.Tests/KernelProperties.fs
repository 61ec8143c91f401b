module Parsl.Tests.KernelProperties

// Model-based properties of the pure kernel: a random DAG and a random interleaving of events, interpreted
// against a model of what the shell and the executors know, with every invariant checked after every step.

open System
open System.Collections.Generic
open Expecto
open FsCheck
open FsCheck.FSharp
open Parsl
open Parsl.Core

/// An external future (a plain `Task`, not a kernel task) that a generated task depends on, as it stands
/// when the task is submitted.
type External =
    | AlreadyOk
    | AlreadyFailed
    | Open

/// One task of the generated DAG: dependencies only on earlier tasks.
type GenTask =
    { Kind: AppKind
      Retries: int
      Deps: int list
      Externals: External list }

/// A DAG and the raw choices that drive the interleaving. Each op is interpreted against the current model,
/// so every op list (and every sub-list, for shrinking) is a well-formed run.
type Scenario =
    { Tasks: GenTask[]
      Ops: (int * int * int) list
      /// Every failed try costs 1, so a task has at most 1 + retries tries.
      UnitCost: bool }

let private genTask (i: int) =
    gen {
        let! kind = Gen.frequency [ 8, Gen.constant FunctionApp; 1, Gen.constant ShellApp; 2, Gen.constant JoinApp ]
        let! retries = Gen.choose (0, 3)
        let! deps =
            if i = 0 then Gen.constant []
            else
                gen {
                    let! k = Gen.choose (0, min 3 i)
                    return! Gen.listOfLength k (Gen.choose (0, i - 1))
                }
        let! nExt = Gen.frequency [ 6, Gen.constant 0; 2, Gen.constant 1; 1, Gen.constant 2 ]
        let! exts =
            Gen.listOfLength nExt (Gen.frequency [ 1, Gen.constant AlreadyOk; 1, Gen.constant AlreadyFailed; 5, Gen.constant Open ])
        return
            { Kind = kind
              Retries = retries
              Deps = deps |> List.distinct |> List.sort
              Externals = exts }
    }

let private genScenario =
    gen {
        let! n = Gen.choose (1, 40)
        let! tasks = [ 0 .. n - 1 ] |> List.map genTask |> Gen.sequenceToList
        let! nOps = Gen.choose (0, 300)
        let op =
            gen {
                let! k = Gen.choose (0, 99)
                let! a = Gen.choose (0, 1_000_000)
                let! b = Gen.choose (0, 1_000_000)
                return k, a, b
            }
        let! ops = Gen.listOfLength nOps op
        let! unitCost = Gen.elements [ true; false ]
        return
            { Tasks = Array.ofList tasks
              Ops = ops
              UnitCost = unitCost }
    }

/// Shrinks towards fewer ops and fewer tasks. A prefix of the DAG is a DAG (dependencies point backwards).
let private shrink (s: Scenario) =
    seq {
        let ops = s.Ops
        if not ops.IsEmpty then
            yield { s with Ops = List.truncate (ops.Length / 2) ops }
            yield { s with Ops = List.skip (ops.Length / 2) ops }
            if ops.Length <= 40 then
                for i in 0 .. ops.Length - 1 do
                    yield { s with Ops = List.removeAt i ops }
        if s.Tasks.Length > 1 then
            yield { s with Tasks = Array.truncate (s.Tasks.Length / 2) s.Tasks }
            yield { s with Tasks = Array.truncate (s.Tasks.Length - 1) s.Tasks }
    }

let arbScenario = Arb.fromGenShrink (genScenario, shrink)

/// The shell and the executors as the kernel sees them, plus everything the invariants need to know.
type private Model(scn: Scenario) =
    let n = scn.Tasks.Length
    let mutable state = Kernel.empty
    let mutable nextSubmit = 0
    let mutable stepNo = 0
    let final = Dictionary<int, TaskState * Completion>()
    /// Launched task -> its current try.
    let current = Dictionary<int, int>()
    let launches = Dictionary<int, int>()
    let failCost = Dictionary<int, float>()
    let cancelRequested = HashSet<int>()
    /// Made final by Cancel or Abandon (so they need not end dep_fail).
    let cancelledOrAbandoned = HashSet<int>()
    /// Task -> unfinished external futures it waits on (before launch, or while joining).
    let externalsOpen = Dictionary<int, int>()
    let externalFailed = HashSet<int>()
    let joinInner = Dictionary<int, int list>()
    let joinExternalFailed = HashSet<int>()
    let tryRaised = Dictionary<int, exn>()
    /// Tries that are no longer current: answers to them are stale.
    let stale = List<int * int>()
    let recent = Queue<int * Event>()
    let commands = List<Command>()

    let fail fmt =
        Printf.kprintf
            (fun msg ->
                failwith (sprintf "step %d: %s\nrecent events (oldest first):\n  %s" stepNo msg (String.Join("\n  ", recent |> Seq.map (fun (i, e) -> sprintf "%d: %A" i e)))))
            fmt

    let isFailed d =
        match final.TryGetValue d with
        | true, (s, _) -> TaskState.isFailure s
        | _ -> false

    let isSucceeded d =
        match final.TryGetValue d with
        | true, ((ExecDone | MemoDone), _) -> true
        | _ -> false

    let failureOf d =
        match final.TryGetValue d with
        | true, (s, Completion.Error e) when TaskState.isFailure s -> Some(Some(TaskId d), e)
        | _ -> None

    let isLive i = i < nextSubmit && not (final.ContainsKey i)

    let checkDependencyError i (e: exn) =
        match tryRaised.TryGetValue i with
        | true, raised when obj.ReferenceEquals(raised, e) -> ()
        | _ ->
            match e with
            | :? DependencyError as de ->
                let deps = scn.Tasks[i].Deps
                if not (deps |> List.forall final.ContainsKey) then
                    fail "task %d went dep_fail before all its dependencies were final" i
                let failedDeps = deps |> List.filter isFailed
                let named = de.Dependencies |> Seq.map (fun t -> t) |> List.ofSeq |> List.map (fun t -> t.Value)
                if set named <> set failedDeps then
                    fail "task %d's DependencyError names %A, but its failed dependencies are %A" i named failedDeps
                if failedDeps.IsEmpty && not (externalFailed.Contains i) then
                    fail "task %d went dep_fail with no failed dependency" i
                if de.TaskId.Value <> i then fail "task %d's DependencyError names task %d" i de.TaskId.Value
                if isNull de.InnerException then fail "task %d's DependencyError has no cause" i
            | e -> fail "task %d went dep_fail with %s, not a DependencyError" i (e.GetType().Name)

    let observe (c: Command) =
        match c with
        | Rejected r -> fail "a well-formed event was rejected: %A" r
        | StateChanged(id, s) ->
            if final.ContainsKey id.Value then fail "final task %d changed state to %s" id.Value (TaskState.name s)
            if s = Joining then
                // The body returned: its try is over, answers to it are stale from now on.
                match current.TryGetValue id.Value with
                | true, t ->
                    stale.Add((id.Value, t))
                    current.Remove id.Value |> ignore
                | _ -> fail "task %d entered joining without a running try" id.Value
        | Launch(id, t, _, payload) ->
            let i = id.Value
            if final.ContainsKey i then fail "final task %d was launched again" i
            if unbox<int> payload <> i then fail "task %d launched with another task's payload" i
            for d in scn.Tasks[i].Deps do
                if not (isSucceeded d) then fail "task %d launched before its dependency %d succeeded" i d
            if externalsOpen.GetValueOrDefault i > 0 then fail "task %d launched while waiting on external futures" i
            if externalFailed.Contains i then fail "task %d launched although an external dependency failed" i
            let expected = launches.GetValueOrDefault i
            if t.Value <> expected then fail "task %d launched try %d, expected try %d" i t.Value expected
            if scn.UnitCost && t.Value > scn.Tasks[i].Retries then
                fail "task %d launched %d tries with retries = %d" i (t.Value + 1) scn.Tasks[i].Retries
            match current.TryGetValue i with
            | true, old -> stale.Add((i, old))
            | _ -> ()
            current[i] <- t.Value
            launches[i] <- expected + 1
        | Complete(id, payload, s, completion) ->
            let i = id.Value
            if final.ContainsKey i then fail "task %d completed twice" i
            if unbox<int> payload <> i then fail "task %d completed with another task's payload" i
            match s, completion with
            | ExecDone, (Value _ | JoinResults)
            | MemoDone, Value _
            | (Failed | DepFail), Completion.Error _ -> ()
            | _ -> fail "task %d completed %s with %A" i (TaskState.name s) completion
            match s, completion with
            | DepFail, Completion.Error e -> checkDependencyError i e
            | Failed, Completion.Error(:? JoinError as je) ->
                let inner = joinInner.GetValueOrDefault(i, [])
                let failedInner = inner |> List.filter isFailed
                let named = je.FailedTasks |> List.ofSeq |> List.map (fun t -> t.Value)
                if set named <> set failedInner then
                    fail "join %d's JoinError names %A, but its failed inner tasks are %A" i named failedInner
                if failedInner.IsEmpty && not (joinExternalFailed.Contains i) then
                    fail "join %d failed with JoinError though nothing it joined failed" i
            | _ -> ()
            final[i] <- (s, completion)
            match current.TryGetValue i with
            | true, t ->
                stale.Add((i, t))
                current.Remove i |> ignore
            | _ -> ()
            externalsOpen.Remove i |> ignore
        | CancelTry(id, t, _) ->
            match current.TryGetValue id.Value with
            | true, c when c = t.Value -> ()
            | _ -> fail "CancelTry for task %d try %d, which is not running" id.Value t.Value

    let checkGlobal () =
        if state.Live <> state.Tasks.Count then fail "Live = %d but %d records" state.Live state.Tasks.Count
        let liveModel = nextSubmit - final.Count
        if state.Live <> liveModel then fail "Live = %d but %d tasks are submitted and not final" state.Live liveModel
        for KeyValue(k, r) in state.Tasks do
            if not (isLive k) then fail "the kernel holds a record for task %d, which is not live" k
            match r.State with
            | Launched ->
                if current.GetValueOrDefault(k, -1) <> r.Try then fail "task %d's record is at try %d" k r.Try
            | Pending
            | Joining -> ()
            | s -> fail "task %d rests in state %s" k (TaskState.name s)

    let has pred (cmds: Command list) = List.exists pred cmds

    let completes i s (cmds: Command list) =
        cmds
        |> List.tryPick (fun c ->
            match c with
            | Complete(id, _, s', completion) when id.Value = i && s' = s -> Some completion
            | _ -> None)

    let expectError i s (e: exn) cmds what =
        match completes i s cmds with
        | Some(Completion.Error e') when obj.ReferenceEquals(e, e') -> ()
        | other -> fail "%s: task %d should end %s with the given exception, got %A" what i (TaskState.name s) other

    /// Checks what a well-formed event must do, beyond the invariants.
    let checkExpected (ev: Event) (cmds: Command list) (wasCancelRequested: bool) (costBefore: float) =
        match ev with
        | Submit spec ->
            let i = spec.Id.Value
            match cmds with
            | StateChanged(id, Pending) :: _ when id.Value = i -> ()
            | _ -> fail "Submit of task %d did not start with pending" i
            if spec.Deps.IsEmpty && spec.ExternalDeps = 0 then
                let decided =
                    cmds
                    |> has (fun c ->
                        match c with
                        | Launch(id, _, _, _) -> id.Value = i
                        | Complete(id, _, DepFail, _) -> id.Value = i
                        | _ -> false)
                if not decided then fail "task %d had nothing to wait for but neither launched nor failed" i
        | TryEnded(id, _, Succeeded v) ->
            match completes id.Value ExecDone cmds with
            | Some(Value v') when obj.ReferenceEquals(v, v') -> ()
            | other -> fail "a successful try of task %d should end exec_done with its value, got %A" id.Value other
        | TryEnded(id, t, Threw(e, cost)) ->
            let i = id.Value
            let retries = scn.Tasks[i].Retries
            if wasCancelRequested then expectError i Failed e cmds "cancelled task's try failed"
            else
                match e, cost with
                | :? DependencyError, _ -> expectError i DepFail e cmds "a try raised DependencyError"
                | _, HandlerFailed h -> expectError i Failed h cmds "the retry handler threw"
                | _, Cost c when costBefore + c <= float retries ->
                    let relaunched =
                        cmds
                        |> has (fun c ->
                            match c with
                            | Launch(id', t', _, _) -> id'.Value = i && t'.Value = t.Value + 1
                            | _ -> false)
                    let retryable = cmds |> has ((=) (StateChanged(id, FailRetryable)))
                    if not (relaunched && retryable) then
                        fail "task %d (cost %g + %g <= retries %d) should be retried" i costBefore c retries
                    if (completes i Failed cmds).IsSome then fail "task %d was both retried and failed" i
                    failCost[i] <- costBefore + c
                | _, Cost c ->
                    ignore c
                    expectError i Failed e cmds "out of retries"
        | JoinReturned(id, _, inner, failed, external) ->
            let i = id.Value
            if wasCancelRequested then
                match completes i Failed cmds with
                | Some(Completion.Error(:? OperationCanceledException)) -> ()
                | other -> fail "a cancelled join %d should fail as cancelled when its body returns, got %A" i other
            else
                if not (cmds |> has ((=) (StateChanged(id, Joining)))) then fail "join %d did not enter joining" i
                if inner.IsEmpty && external = 0 then
                    match failed with
                    | [] ->
                        if (completes i ExecDone cmds) <> Some JoinResults then
                            fail "join %d with nothing to wait for should end exec_done" i
                    | _ ->
                        match completes i Failed cmds with
                        | Some(Completion.Error(:? JoinError)) -> ()
                        | other -> fail "join %d with failed inner futures should fail with JoinError, got %A" i other
        | MemoHit(id, _, v) ->
            match completes id.Value MemoDone cmds with
            | Some(Value v') when obj.ReferenceEquals(v, v') -> ()
            | other -> fail "a memo hit for task %d should end memo_done, got %A" id.Value other
        | Cancel _ -> () // checked by the caller, which knows the task's state before the step
        | Abandon(id, e) -> expectError id.Value Failed e cmds "abandoned"
        | ExternalDone _ -> ()

    member _.State = state
    /// Every command of the well-formed events, in order.
    member _.Commands = commands
    member _.Final = final
    member _.Submitted = nextSubmit

    member private _.Note(ev: Event) =
        stepNo <- stepNo + 1
        recent.Enqueue((stepNo, ev))
        if recent.Count > 12 then recent.Dequeue() |> ignore

    /// A well-formed event: no rejection, every invariant holds afterwards.
    member this.Fresh(ev: Event) =
        this.Note ev
        let wasCancelRequested =
            match ev with
            | TryEnded(id, _, _)
            | JoinReturned(id, _, _, _, _) -> cancelRequested.Contains id.Value
            | _ -> false
        let costBefore =
            match ev with
            | TryEnded(id, _, _) -> failCost.GetValueOrDefault(id.Value, 0.0)
            | _ -> 0.0
        let s, cmds = Kernel.step state ev
        state <- s
        for c in cmds do
            observe c
        commands.AddRange cmds
        checkExpected ev cmds wasCancelRequested costBefore
        checkGlobal ()
        cmds

    /// A stale or duplicate event: rejected, and nothing changes.
    member this.Stale(ev: Event) =
        this.Note ev
        let s, cmds = Kernel.step state ev
        match cmds with
        | [ Rejected _ ] -> ()
        | _ -> fail "a stale event should be rejected and do nothing else, got %A" cmds
        if not (obj.ReferenceEquals(s, state) || s = state) then fail "a rejected event changed the kernel state"

    member _.Spec(i: int) =
        let t = scn.Tasks[i]
        let preFailed =
            t.Externals
            |> List.filter ((=) AlreadyFailed)
            |> List.map (fun _ -> (None: TaskId option), (exn "an external future failed before submission"))
        { Id = TaskId i
          AppName = sprintf "app%d" i
          Executor = "x"
          Kind = t.Kind
          Deps = t.Deps |> List.filter (fun d -> not (final.ContainsKey d)) |> List.map TaskId
          FailedDeps = (t.Deps |> List.choose failureOf) @ preFailed
          ExternalDeps = t.Externals |> List.filter ((=) Open) |> List.length
          Retries = t.Retries
          Payload = box i }

    member this.SubmitNext() =
        let i = nextSubmit
        let spec = this.Spec i
        nextSubmit <- i + 1
        externalsOpen[i] <- spec.ExternalDeps
        if scn.Tasks[i].Externals |> List.contains AlreadyFailed then externalFailed.Add i |> ignore
        this.Fresh(Submit spec) |> ignore

    member this.JoinReturn(i: int, t: int, b: int) =
        let inner =
            if i = 0 then []
            else [ for s in 0 .. (b / 100) % 4 - 1 -> (b / (7 + s * 13)) % i ] |> List.distinct
        let live = inner |> List.filter (fun d -> not (final.ContainsKey d)) |> List.map TaskId
        let failed = inner |> List.choose failureOf
        let external = (b / 10_000) % 3
        joinInner[i] <- inner
        externalsOpen[i] <- external
        this.Fresh(JoinReturned(TaskId i, TryId t, live, failed, external)) |> ignore

    member this.Answer(i: int, t: int, b: int) =
        let cost () =
            let costs = [| 0.0; 0.5; 1.0; 1.5; 2.5 |]
            if scn.UnitCost then Cost 1.0 else Cost(costs[(b / 100) % 5])
        let threw () =
            this.Fresh(TryEnded(TaskId i, TryId t, Threw(InvalidOperationException(sprintf "task %d try %d failed" i t), cost ())))
            |> ignore
        let r = b % 100
        match scn.Tasks[i].Kind with
        | JoinApp ->
            if r < 55 then this.JoinReturn(i, t, b)
            elif r < 90 then threw ()
            else this.Fresh(MemoHit(TaskId i, TryId t, box (i * 1000 + t))) |> ignore
        | _ ->
            if r < 45 then this.Fresh(TryEnded(TaskId i, TryId t, Succeeded(box (i * 1000 + t)))) |> ignore
            elif r < 80 then threw ()
            elif r < 88 then
                let h = exn "the retry handler failed"
                this.Fresh(TryEnded(TaskId i, TryId t, Threw(InvalidOperationException "body", HandlerFailed h))) |> ignore
            elif r < 93 then
                let e = DependencyError([], TaskId i, exn "a future awaited inside the body failed") :> exn
                tryRaised[i] <- e
                this.Fresh(TryEnded(TaskId i, TryId t, Threw(e, Cost 1.0))) |> ignore
            else this.Fresh(MemoHit(TaskId i, TryId t, box (i * 1000 + t))) |> ignore

    member this.ExternalDone(i: int, failed: bool) =
        externalsOpen[i] <- externalsOpen[i] - 1
        if failed then
            if joinInner.ContainsKey i then joinExternalFailed.Add i |> ignore
            else externalFailed.Add i |> ignore
        let failure = if failed then Some(exn (sprintf "external future of task %d failed" i)) else None
        this.Fresh(ExternalDone(TaskId i, failure)) |> ignore

    member this.Cancel(i: int) =
        let cmds =
            if final.ContainsKey i then
                let cmds = this.Fresh(Cancel(TaskId i))
                if not cmds.IsEmpty then fail "cancelling final task %d did something: %A" i cmds
                cmds
            elif current.ContainsKey i then
                let already = cancelRequested.Contains i
                let t = current[i]
                let cmds = this.Fresh(Cancel(TaskId i))
                if already then
                    if not cmds.IsEmpty then fail "a second cancel of running task %d did something: %A" i cmds
                else
                    match cmds with
                    | [ CancelTry(id, t', _) ] when id.Value = i && t'.Value = t -> ()
                    | _ -> fail "cancelling running task %d should only emit CancelTry, got %A" i cmds
                cancelRequested.Add i |> ignore
                cmds
            else
                cancelledOrAbandoned.Add i |> ignore
                let cmds = this.Fresh(Cancel(TaskId i))
                match completes i Failed cmds with
                | Some(Completion.Error(:? OperationCanceledException)) -> ()
                | other -> fail "cancelling waiting task %d should fail it as cancelled, got %A" i other
                cmds
        ignore cmds

    member this.Abandon(i: int) =
        cancelledOrAbandoned.Add i |> ignore
        this.Fresh(Abandon(TaskId i, KernelShutdownError(TaskId i))) |> ignore

    member this.StaleEvent(a: int, b: int) =
        match a % 5 with
        | 0 when stale.Count > 0 ->
            let i, t = stale[b % stale.Count]
            this.Stale(TryEnded(TaskId i, TryId t, Succeeded(box -1)))
        | 1 ->
            let idle =
                [ for i in 0 .. n - 1 do
                      if final.ContainsKey i || i >= nextSubmit || externalsOpen.GetValueOrDefault i = 0 then i ]
            if not idle.IsEmpty then this.Stale(ExternalDone(TaskId idle[b % idle.Length], None))
        | 2 ->
            let live = [ for i in 0 .. nextSubmit - 1 do if not (final.ContainsKey i) then i ]
            if not live.IsEmpty then this.Stale(Submit(this.Spec live[b % live.Length]))
        | 3 when stale.Count > 0 ->
            let i, t = stale[b % stale.Count]
            this.Stale(JoinReturned(TaskId i, TryId t, [], [], 0))
        | 4 when stale.Count > 0 ->
            let i, t = stale[b % stale.Count]
            this.Stale(MemoHit(TaskId i, TryId t, box -1))
        | _ -> ()

    member this.Op(k: int, a: int, b: int) =
        if k < 25 then
            if nextSubmit < n then this.SubmitNext()
        elif k < 60 then
            if current.Count > 0 then
                let running = current |> Seq.map (fun kv -> kv.Key, kv.Value) |> Seq.sort |> Array.ofSeq
                let i, t = running[a % running.Length]
                this.Answer(i, t, b)
        elif k < 75 then
            let waiting =
                [ for KeyValue(i, c) in externalsOpen do
                      if c > 0 && not (final.ContainsKey i) then i ]
                |> List.sort
            if not waiting.IsEmpty then this.ExternalDone(waiting[a % waiting.Length], b % 4 = 0)
        elif k < 83 then
            if nextSubmit > 0 then this.Cancel(a % nextSubmit)
        elif k < 86 then
            let live = [ for i in 0 .. nextSubmit - 1 do if not (final.ContainsKey i) then i ]
            if not live.IsEmpty then this.Abandon(live[a % live.Length])
        else
            this.StaleEvent(a, b)

    /// Submits what is left, answers every launch with success and completes every external future, until
    /// nothing is outstanding; then every task must be final.
    member this.Drain() =
        let outstanding () =
            nextSubmit < n
            || current.Count > 0
            || externalsOpen |> Seq.exists (fun kv -> kv.Value > 0 && not (final.ContainsKey kv.Key))
        let mutable rounds = 0
        while outstanding () && rounds < 4 * n + 10 do
            rounds <- rounds + 1
            while nextSubmit < n do
                this.SubmitNext()
            for i, t in current |> Seq.map (fun kv -> kv.Key, kv.Value) |> Seq.sort |> Array.ofSeq do
                if current.GetValueOrDefault(i, -1) = t then
                    match scn.Tasks[i].Kind with
                    | JoinApp -> this.JoinReturn(i, t, i * 7919 + 100 * rounds)
                    | _ -> this.Fresh(TryEnded(TaskId i, TryId t, Succeeded(box (i * 1000 + t)))) |> ignore
            for i in externalsOpen.Keys |> Seq.sort |> Array.ofSeq do
                while externalsOpen.GetValueOrDefault i > 0 && not (final.ContainsKey i) do
                    this.ExternalDone(i, false)
        for i in 0 .. n - 1 do
            if not (final.ContainsKey i) then fail "task %d was lost: everything was answered but it is not final" i
        if state.Live <> 0 || not state.Tasks.IsEmpty then fail "records remain after every task is final"
        if not state.Dependents.IsEmpty then fail "dependents remain after every task is final: %A" state.Dependents
        for i in 0 .. n - 1 do
            let t = scn.Tasks[i]
            let depFailed = t.Deps |> List.exists isFailed || t.Externals |> List.contains AlreadyFailed
            if depFailed && not (cancelledOrAbandoned.Contains i) then
                match final[i] with
                | DepFail, _ -> ()
                | s, _ -> fail "task %d has a failed dependency but ended %s" i (TaskState.name s)

let private runModel (scn: Scenario) =
    let m = Model scn
    for k, a, b in scn.Ops do
        m.Op(k, a, b)
    m.Drain()
    m

/// Runs a scenario: the ops, then the drain. Fails with the recent events on a violation.
let run (scn: Scenario) = runModel scn |> ignore

// A failing property prints "Focus on error: etestPropertyWithConfig (seed1, seed2, Some size) ...": pin it as
// a regression test by adding `etestPropertyWithConfig (seed1, seed2, Some size) config "<what it pins>" <| ...`
// with the same body, or keep the shrunk scenario it prints and call `run` on it in KernelTests.
let private config =
    { FsCheckConfig.defaultConfig with
        maxTest = 300
        endSize = 100 }

/// The outcomes the generated runs reach (a passing property proves little if they never reach some).
let private coverage () =
    let seen = HashSet<string>()
    for scn in Gen.sample 200 genScenario do
        let m = runModel scn
        for c in m.Commands do
            match c with
            | Complete(_, _, s, Completion.Error(:? JoinError)) -> seen.Add(TaskState.name s + " JoinError") |> ignore
            | Complete(_, _, s, Completion.Error(:? OperationCanceledException)) -> seen.Add(TaskState.name s + " cancelled") |> ignore
            | Complete(_, _, s, JoinResults) -> seen.Add(TaskState.name s + " join results") |> ignore
            | Complete(_, _, s, _) -> seen.Add(TaskState.name s) |> ignore
            | StateChanged(id, FailRetryable) -> seen.Add(sprintf "%A retried" scn.Tasks[id.Value].Kind) |> ignore
            | CancelTry _ -> seen.Add "CancelTry" |> ignore
            | Launch(_, t, _, _) when t.Value >= 2 -> seen.Add "third try" |> ignore
            | _ -> ()
    seen

let tests =
    testList "Kernel properties" [
        // Shrunk by FsCheck from the first failure of the property below (the kernel refused launched -> dep_fail
        // and kept the task live forever).
        test "pinned: a try that raises DependencyError ends dep_fail, not lost" {
            run
                { Tasks = [| { Kind = FunctionApp; Retries = 2; Deps = []; Externals = [] } |]
                  Ops = [ (1, 895948, 163069); (44, 865904, 208290) ]
                  UnitCost = false }
        }
        test "the generator reaches every outcome" {
            let seen = coverage ()
            for outcome in
                [ "exec_done"; "memo_done"; "failed"; "dep_fail"; "failed JoinError"; "failed cancelled"
                  "exec_done join results"; "FunctionApp retried"; "JoinApp retried"; "CancelTry"; "third try" ] do
                Expect.contains seen outcome (sprintf "no generated run reached %s" outcome)
        }

        testPropertyWithConfig config "every invariant holds after every step of a random run"
        <| Prop.forAll arbScenario (fun scn -> run scn)

        testPropertyWithConfig config "without failures, cancels or aborts every task ends exec_done or memo_done"
        <| Prop.forAll arbScenario (fun scn ->
            let scn =
                { scn with
                    Tasks = scn.Tasks |> Array.map (fun t -> { t with Externals = t.Externals |> List.filter ((<>) AlreadyFailed) })
                    Ops = [] }
            let m = Model scn
            m.Drain()
            for KeyValue(i, (s, _)) in m.Final do
                if s <> ExecDone && s <> MemoDone then failwithf "task %d ended %s" i (TaskState.name s))
    ]
