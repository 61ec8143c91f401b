namespace Parsl.Executors

open System.Collections.Concurrent
open System.Threading.Tasks
open Parsl

/// The tries an executor has handed on and not yet reported, keyed by the wire key (`Protocol.key`), and who
/// waits for none to be left (a shutdown that lets running tries finish). A try is reported once: the first
/// outcome removes it and goes to the kernel; a later one (a re-run's, a cancelled try's late result) finds it
/// gone and is dropped, which `Report` says by returning false. `Extra` is what the executor keeps per try;
/// `onRemoved` runs for a try as it leaves, before its outcome is reported. Shared by the executors that send tries
/// to remote workers (Work Queue, TaskVine, endpoints).
[<Sealed>]
type internal InFlight<'Extra>(onRemoved: int64 -> unit) =
    let tries = ConcurrentDictionary<int64, struct (TaskId * TryId * 'Extra)>()
    let gate = obj ()
    let mutable waiters: TaskCompletionSource<unit> list = []

    let settle () =
        if tries.IsEmpty then
            let ws = lock gate (fun () -> let w = waiters in waiters <- []; w)
            for w in ws do
                w.TrySetResult() |> ignore

    new() = InFlight<'Extra>(ignore)

    /// Records a try sent under `key`.
    member _.Add(key: int64, id: TaskId, tryId: TryId, extra: 'Extra) = tries[key] <- struct (id, tryId, extra)
    /// Tries in flight.
    member _.Count = tries.Count
    /// Whether none is in flight.
    member _.IsEmpty = tries.IsEmpty
    /// Whether this try is still in flight.
    member _.Contains(key: int64) = tries.ContainsKey key
    /// The keys of the tries in flight now.
    member _.Keys: int64[] = Array.ofSeq tries.Keys
    /// The tries in flight now.
    member _.ToArray() = tries.ToArray()

    /// Reports a try's outcome to the kernel if it is still in flight (true), else drops it (false).
    member _.Report(ctx: ExecutorContext, key: int64, outcome: Result<obj, exn>) : bool =
        match tries.TryRemove key with
        | true, struct (id, tryId, _) ->
            onRemoved key
            match outcome with
            | Ok v -> ctx.Report(TryDone(id, tryId, v))
            | Error e -> ctx.Report(TryFailed(id, tryId, e))
            settle ()
            true
        | _ -> false

    /// Completes once no try is in flight (at once if none is).
    member _.WhenEmpty() : Task =
        let w = TaskCompletionSource<unit>(TaskCreationOptions.RunContinuationsAsynchronously)
        lock gate (fun () -> waiters <- w :: waiters)
        settle ()
        w.Task :> Task
