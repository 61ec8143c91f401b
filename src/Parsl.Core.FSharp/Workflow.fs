namespace Parsl

open System
open System.Threading.Tasks

/// The `parsl dfk { ... }` computation expression: composes apps without blocking a thread.
///
/// - `let! x = app (Arg.value 1)` waits for an `AppFuture` (or a `Task`) inside the workflow; `match!` too.
/// - `let! a = f x and! b = g y` submits both calls before waiting: the branches run in parallel.
/// - `for x in xs do ...` starts every iteration at once (each runs until its first `let!`) and completes
///   when all have; iterations may therefore interleave after their first `let!`.
/// - `try/with`, `try/finally`, `use`, `while`, `return`, `return!` behave as in `task { }`.
///
/// The whole expression is an `AppFuture<'T>` tracked by the kernel like a join app: it has its own task id
/// and states (`launched`, `joining`, `exec_done`), and any exception escaping it fails it with `JoinError`,
/// whose `InnerException` is the exception (a failed app's `BashExitFailure`, say).
[<Sealed>]
type WorkflowBuilder(dfk: DataFlowKernel, name: string) =
    do
        if isNull (box dfk) then nullArg "dfk"
        if String.IsNullOrWhiteSpace name then invalidArg "name" "a workflow needs a non-empty name"

    /// The kernel that tracks the workflows this builder makes.
    member _.Kernel = dfk
    /// The app name of the workflows this builder makes.
    member _.Name = name

    /// Waits on an app's future.
    member _.Source(future: AppFuture<'T>) : Task<'T> =
        if isNull future then nullArg "future"
        future.Task
    /// Waits on a task.
    member _.Source(task: Task<'T>) : Task<'T> =
        if isNull task then nullArg "task"
        task
    /// Waits on a task with no result (`do!`).
    member _.Source(task: Task) : Task<unit> =
        if isNull task then nullArg "task"
        let t = task
        backgroundTask { do! t }
    /// Iterates a sequence (`for`).
    member _.Source(items: seq<'T>) : seq<'T> = items

    /// `let!`, `do!` and `match!`.
    member _.Bind(source: Task<'T>, continuation: 'T -> Task<'U>) : Task<'U> =
        task {
            let! v = source
            return! continuation v
        }

    /// `and!`: both sources were started before this is called, so they run in parallel.
    member _.MergeSources(a: Task<'A>, b: Task<'B>) : Task<'A * 'B> =
        task {
            let! x = a
            let! y = b
            return x, y
        }

    /// `return`.
    member _.Return(value: 'T) : Task<'T> = Task.FromResult value
    /// `return!` of an app's future.
    member _.ReturnFrom(future: AppFuture<'T>) : Task<'T> =
        if isNull future then nullArg "future"
        future.Task
    /// `return!` of a task.
    member _.ReturnFrom(task: Task<'T>) : Task<'T> = task
    /// An expression with no result.
    member _.Zero() : Task<unit> = Task.FromResult()
    /// Delays a part of the workflow until it is run.
    member _.Delay(body: unit -> Task<'T>) = body

    /// Sequencing.
    member _.Combine(first: Task<unit>, rest: unit -> Task<'T>) : Task<'T> =
        task {
            do! first
            return! rest ()
        }

    /// `try ... with`.
    member _.TryWith(body: unit -> Task<'T>, handler: exn -> Task<'T>) : Task<'T> =
        task {
            try
                return! body ()
            with e ->
                return! handler e
        }

    /// `try ... finally`.
    member _.TryFinally(body: unit -> Task<'T>, compensation: unit -> unit) : Task<'T> =
        task {
            try
                return! body ()
            finally
                compensation ()
        }

    /// `use`.
    member this.Using(resource: 'R when 'R :> IDisposable, body: 'R -> Task<'T>) : Task<'T> =
        this.TryFinally((fun () -> body resource), fun () -> if not (isNull (box resource)) then resource.Dispose())

    /// `while`: iterations run one after another.
    member _.While(guard: unit -> bool, body: unit -> Task<unit>) : Task<unit> =
        task {
            while guard () do
                do! body ()
        }

    /// `for`: every iteration starts at once (fan-out), and the loop ends when all have; the first failure
    /// (in sequence order) is raised.
    member _.For(items: seq<'T>, body: 'T -> Task<unit>) : Task<unit> =
        let started =
            [| for x in items ->
                   try
                       body x
                   with e ->
                       Task.FromException<unit> e |]
        task {
            for t in started do
                do! t
        }

    /// Submits the workflow as a join task and returns its future at once.
    member _.Run(body: unit -> Task<'T>) : AppFuture<'T> =
        let start () =
            try
                match body () with
                | null -> Task.FromException<'T>(InvalidOperationException "The workflow produced no task")
                | t -> t
            with e ->
                Task.FromException<'T> e
        let handle =
            AppHandles.Join<'T>(
                dfk,
                { AppOptions.defaults with Name = Some name },
                Func<Task<'T>>(start),
                Func<obj[], obj>(fun _ -> box (start ()))
            )
        handle.Call [||]

/// Functions for workflows.
[<RequireQualifiedAccess>]
module Workflow =
    /// A builder whose workflows carry this app name (default `workflow`).
    let named (name: string) (dfk: DataFlowKernel) = WorkflowBuilder(dfk, name)

    /// The results of several futures, in order, once all are done: `let! xs = Workflow.all futures`.
    /// The first failure (in order) is raised.
    let all (futures: seq<AppFuture<'T>>) : Task<'T[]> =
        let tasks = futures |> Seq.map (fun f -> if isNull f then nullArg "futures" else f.Task) |> Array.ofSeq
        task {
            let results = Array.zeroCreate tasks.Length
            for i in 0 .. tasks.Length - 1 do
                let! v = tasks[i]
                results[i] <- v
            return results
        }

/// Brings `parsl` into scope with `open Parsl`.
[<AutoOpen>]
module WorkflowBuilderInstance =
    /// `parsl dfk { ... }`: a workflow tracked by `dfk` as a join task (see `WorkflowBuilder`).
    let parsl (dfk: DataFlowKernel) = WorkflowBuilder(dfk, "workflow")
