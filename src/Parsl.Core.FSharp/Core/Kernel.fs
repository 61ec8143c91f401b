namespace Parsl.Core

open Parsl

/// What kind of app a task runs.
type AppKind =
    /// A function app (Parsl's `python_app`).
    | FunctionApp
    /// A shell app (Parsl's `bash_app`).
    | ShellApp
    /// A join app: its body returns futures and the task completes with their results.
    | JoinApp

/// The cost of one failed try, as the retry handler judged it.
type RetryCost =
    /// Add this to the task's failure cost (1.0 without a handler).
    | Cost of float
    /// The handler itself threw: no retry, and this exception becomes the task's.
    | HandlerFailed of exn

/// How one try ended, as an executor reported it.
type TryResult =
    /// The body returned this value.
    | Succeeded of obj
    /// The body failed; the cost was computed by the shell (it runs the user's retry handler).
    | Threw of exn * RetryCost

/// A dependency that failed: the kernel task (None for a future from outside the kernel) and its exception.
type FailedDependency = TaskId option * exn

/// What the shell tells the kernel about a new task. Dependencies are split by the shell, which runs on the
/// kernel's loop: `Deps` are kernel tasks not yet final, `FailedDeps` those already failed (successful
/// ones are dropped), `ExternalDeps` the number of unfinished futures from outside the kernel.
type TaskSpec =
    { Id: TaskId
      AppName: string
      Executor: string
      Kind: AppKind
      Deps: TaskId list
      FailedDeps: FailedDependency list
      ExternalDeps: int
      /// The retry budget (Parsl's `Config.retries`).
      Retries: int
      /// Opaque to the kernel: what the shell needs to launch and complete the task.
      Payload: obj }

/// What changes kernel state. Time, ids and randomness arrive inside events.
type Event =
    /// A task was submitted.
    | Submit of TaskSpec
    /// A future from outside the kernel that the task waits on (a dependency, or a join's inner future) is done.
    | ExternalDone of TaskId * failure: exn option
    /// An executor reported the end of a try.
    | TryEnded of TaskId * TryId * TryResult
    /// A join app's body returned futures: kernel tasks not yet final, failures already known, and the number
    /// of unfinished futures from outside the kernel.
    | JoinReturned of TaskId * TryId * inner: TaskId list * failed: FailedDependency list * external: int
    /// The memo table or a checkpoint holds this launched task's result.
    | MemoHit of TaskId * TryId * value: obj
    /// The user cancelled the task's future.
    | Cancel of TaskId
    /// The kernel is shutting down: the live task fails with this exception, whatever its state.
    | Abandon of TaskId * exn

/// How a final task's future is to be completed.
type Completion =
    /// With this value.
    | Value of obj
    /// With this exception.
    | Error of exn
    /// With the results of the futures the join app returned (the shell holds them).
    | JoinResults

/// An event the kernel refused: an error value, never a crash.
type Rejection =
    /// The event names a task that is not live, or (`ExternalDone`) one that waits on no external future.
    | UnknownTask of TaskId
    /// A result for a try that is not the current one.
    | StaleTry of TaskId * TryId
    /// The event would need an impossible state transition.
    | Impossible of InvalidTransition
    /// A task id was submitted twice.
    | DuplicateTask of TaskId

/// What the shell must do after a step.
type Command =
    /// Run a try of the task on the executor.
    | Launch of TaskId * TryId * executor: string * payload: obj
    /// The task's state changed (for logging, counts and monitoring).
    | StateChanged of TaskId * TaskState
    /// The task is final: complete its future.
    | Complete of TaskId * payload: obj * TaskState * Completion
    /// Ask the executor to stop a running try.
    | CancelTry of TaskId * TryId * executor: string
    /// The event was refused.
    | Rejected of Rejection

/// The kernel's record of a live (not final) task.
type TaskRecord =
    { Spec: TaskSpec
      State: TaskState
      Try: int
      FailCount: int
      FailCost: float
      /// Unfinished dependencies (while pending) or inner futures (while joining).
      Waiting: int
      /// How many of `Waiting` are futures from outside the kernel: only these may be ended by `ExternalDone`,
      /// so a stale or duplicate `ExternalDone` cannot release a task whose kernel dependencies are unfinished.
      External: int
      /// Failed dependencies (while pending) or failed inner futures (while joining), newest first.
      Failures: FailedDependency list
      CancelRequested: bool }

/// The kernel's state: live tasks only. A task's record is released when it becomes final.
type KernelState =
    { Tasks: Map<int, TaskRecord>
      /// Task -> live tasks waiting on it (as a dependency or a join's inner future).
      Dependents: Map<int, int list>
      /// Number of live tasks.
      Live: int }

/// Retry decisions (Parsl's cost model in `handle_exec_update`).
[<RequireQualifiedAccess>]
module Retry =
    /// A retry decision.
    type Decision =
        /// Try again; the task's accumulated cost becomes this.
        | Again of cost: float
        /// Fail with this exception.
        | GiveUp of exn

    /// Parsl's rule: add the try's cost; retry while the total is at most `retries`. A handler that threw
    /// ends the task with the handler's exception.
    let decide (retries: int) (failCost: float) (cost: RetryCost) (error: exn) =
        match cost with
        | HandlerFailed handlerError -> GiveUp handlerError
        | Cost c ->
            let total = failCost + c
            if total <= float retries then Again total else GiveUp error

/// The pure dataflow kernel: `step` is the only thing that changes task state.
[<RequireQualifiedAccess>]
module Kernel =
    /// A kernel with no tasks.
    let empty =
        { Tasks = Map.empty
          Dependents = Map.empty
          Live = 0 }

    let private isCancellation (e: exn) = e :? System.OperationCanceledException

    let private dependencyError (r: TaskRecord) =
        let failures = List.rev r.Failures
        let ids = failures |> List.choose fst
        let cause = snd (List.head failures)
        DependencyError(ids, r.Spec.Id, cause) :> exn

    let private joinError (r: TaskRecord) =
        let failures = List.rev r.Failures
        JoinError(failures |> List.choose fst, r.Spec.Id, snd (List.head failures)) :> exn

    // Mutable accumulation of commands within one step: local to the call, so `step` stays pure.
    type private Acc =
        { mutable State: KernelState
          mutable Commands: Command list }

    let private emit (acc: Acc) c = acc.Commands <- c :: acc.Commands

    let private put (acc: Acc) (r: TaskRecord) =
        acc.State <- { acc.State with Tasks = Map.add r.Spec.Id.Value r acc.State.Tasks }

    let private transition (acc: Acc) (r: TaskRecord) into =
        match Transition.check r.Spec.Id r.State into with
        | Ok s ->
            emit acc (StateChanged(r.Spec.Id, s))
            Some { r with State = s }
        | Result.Error e ->
            emit acc (Rejected(Impossible e))
            None

    let private launch (acc: Acc) (r: TaskRecord) =
        match transition acc r Launched with
        | Some r ->
            put acc r
            emit acc (Launch(r.Spec.Id, TryId r.Try, r.Spec.Executor, r.Spec.Payload))
        | None -> ()

    /// Makes a task final and wakes its dependents, iteratively (chains of any depth).
    let private finish (acc: Acc) (r: TaskRecord) (final: TaskState) (completion: Completion) =
        // An explicit worklist instead of recursion: a failure at the root of a long chain must not overflow the stack.
        let mutable work = [ struct (r, final, completion) ]
        while not work.IsEmpty do
            let struct (r, final, completion) = work.Head
            work <- work.Tail
            match transition acc r final with
            | None -> ()
            | Some _ ->
                let id = r.Spec.Id.Value
                let st = acc.State
                let dependents = Map.tryFind id st.Dependents |> Option.defaultValue []
                acc.State <-
                    { st with
                        Tasks = Map.remove id st.Tasks
                        Dependents = if dependents.IsEmpty then st.Dependents else Map.remove id st.Dependents
                        Live = st.Live - 1 }
                emit acc (Complete(r.Spec.Id, r.Spec.Payload, final, completion))
                let failure =
                    match completion with
                    | Error e -> Some(Some r.Spec.Id, e)
                    | _ -> None
                for d in List.rev dependents do
                    match Map.tryFind d acc.State.Tasks with
                    | Some dr when dr.Waiting > 0 ->
                        let dr =
                            { dr with
                                Waiting = dr.Waiting - 1
                                Failures =
                                    match failure with
                                    | Some f -> f :: dr.Failures
                                    | None -> dr.Failures }
                        if dr.Waiting > 0 then put acc dr
                        else
                            match dr.State with
                            | Pending when dr.Failures.IsEmpty -> launch acc dr
                            | Pending -> work <- struct (dr, DepFail, Error(dependencyError dr)) :: work
                            | Joining when dr.Failures.IsEmpty -> work <- struct (dr, ExecDone, JoinResults) :: work
                            | Joining -> work <- struct (dr, Failed, Error(joinError dr)) :: work
                            | _ -> put acc dr
                    | _ -> () // cancelled or otherwise gone: nothing waits any more

    let private whenReady (acc: Acc) (r: TaskRecord) =
        if r.Waiting > 0 then put acc r
        else
            match r.State with
            | Pending when r.Failures.IsEmpty -> launch acc r
            | Pending -> finish acc r DepFail (Error(dependencyError r))
            | Joining when r.Failures.IsEmpty -> finish acc r ExecDone JoinResults
            | Joining -> finish acc r Failed (Error(joinError r))
            | _ -> put acc r

    /// Registers `waiter` as a dependent of each live task in `on`; returns how many were live.
    let private wait (acc: Acc) (waiter: TaskId) (on: TaskId list) =
        let mutable live = 0
        for t in on do
            if Map.containsKey t.Value acc.State.Tasks && t <> waiter then
                live <- live + 1
                let ds = Map.tryFind t.Value acc.State.Dependents |> Option.defaultValue []
                acc.State <- { acc.State with Dependents = Map.add t.Value (waiter.Value :: ds) acc.State.Dependents }
        live

    let private current (acc: Acc) (id: TaskId) (tryId: TryId) k =
        match Map.tryFind id.Value acc.State.Tasks with
        | None -> emit acc (Rejected(UnknownTask id))
        | Some r when r.Try <> tryId.Value || not (r.State = Launched || r.State = Running || r.State = RunningEnded) ->
            emit acc (Rejected(StaleTry(id, tryId)))
        | Some r -> k r

    /// Applies one event: the new state and the commands for the shell, in the order they must run.
    let step (state: KernelState) (event: Event) : KernelState * Command list =
        let acc = { State = state; Commands = [] }
        match event with
        | Submit spec ->
            if Map.containsKey spec.Id.Value state.Tasks then emit acc (Rejected(DuplicateTask spec.Id))
            else
                let r =
                    { Spec = spec
                      State = Pending
                      Try = 0
                      FailCount = 0
                      FailCost = 0.0
                      Waiting = 0
                      External = spec.ExternalDeps
                      Failures = List.rev spec.FailedDeps
                      CancelRequested = false }
                acc.State <- { acc.State with Live = acc.State.Live + 1 }
                emit acc (StateChanged(spec.Id, Pending))
                let live = wait acc spec.Id spec.Deps
                whenReady acc { r with Waiting = live + spec.ExternalDeps }
        | ExternalDone(id, failure) ->
            match Map.tryFind id.Value state.Tasks with
            | Some r when r.External > 0 ->
                let failures =
                    match failure with
                    | Some e -> (None, e) :: r.Failures
                    | None -> r.Failures
                whenReady
                    acc
                    { r with
                        Waiting = r.Waiting - 1
                        External = r.External - 1
                        Failures = failures }
            | _ -> emit acc (Rejected(UnknownTask id))
        | TryEnded(id, tryId, result) ->
            current acc id tryId (fun r ->
                match result with
                | Succeeded v -> finish acc r ExecDone (Value v)
                | Threw(e, cost) ->
                    let r = { r with FailCount = r.FailCount + 1 }
                    if r.CancelRequested then finish acc r Failed (Error e)
                    else
                        match e with
                        | :? DependencyError -> finish acc r DepFail (Error e)
                        | _ ->
                            match Retry.decide r.Spec.Retries r.FailCost cost e with
                            | Retry.GiveUp final -> finish acc r Failed (Error final)
                            | Retry.Again total ->
                                match transition acc r FailRetryable with
                                | Some r ->
                                    match transition acc r Pending with
                                    | Some r -> launch acc { r with Try = r.Try + 1; FailCost = total }
                                    | None -> ()
                                | None -> ())
        | JoinReturned(id, tryId, inner, failed, external) ->
            current acc id tryId (fun r ->
                if r.CancelRequested then
                    // The body ran to its end before the cancel reached it: the join must not wait any more.
                    finish acc r Failed (Error(System.OperationCanceledException(sprintf "Task %d was cancelled" id.Value)))
                else
                    match transition acc r Joining with
                    | Some r ->
                        let live = wait acc id inner
                        whenReady
                            acc
                            { r with
                                Waiting = live + external
                                External = external
                                Failures = List.rev failed }
                    | None -> ())
        | MemoHit(id, tryId, v) -> current acc id tryId (fun r -> finish acc r MemoDone (Value v))
        | Cancel id ->
            match Map.tryFind id.Value state.Tasks with
            | None -> ()
            | Some r ->
                match r.State with
                | Pending
                | Joining ->
                    finish acc r Failed (Error(System.OperationCanceledException(sprintf "Task %d was cancelled" id.Value)))
                | _ when r.CancelRequested -> ()
                | _ ->
                    put acc { r with CancelRequested = true }
                    emit acc (CancelTry(id, TryId r.Try, r.Spec.Executor))
        | Abandon(id, e) ->
            match Map.tryFind id.Value state.Tasks with
            | Some r -> finish acc r Failed (Error e)
            | None -> emit acc (Rejected(UnknownTask id))
        acc.State, List.rev acc.Commands

    /// Is the task live (not yet final)?
    let isLive (state: KernelState) (id: TaskId) = Map.containsKey id.Value state.Tasks

    /// The live task's record.
    let tryFind (state: KernelState) (id: TaskId) = Map.tryFind id.Value state.Tasks
