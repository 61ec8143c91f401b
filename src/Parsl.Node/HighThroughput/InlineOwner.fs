namespace Parsl.Node.HighThroughput

open System
open System.Collections.Concurrent
open System.Threading

/// A single-reader mailbox without a reader thread of its own: whichever thread finds the owner idle becomes the
/// owner for one drain, runs the handler on every message queued, then `afterDrain` once (where an actor sends what
/// the messages produced, as one batch). Only one thread drains at a time (an owner flag taken by compare-and-swap,
/// not a lock around the handlers), so the handlers own the actor's state without a lock; a thread that posts while
/// another drains leaves its message to that drain and goes on at once.
///
/// Why not a thread of its own: in a chain of tasks a result arrives on a reader thread and the next task leaves from
/// it; handing the result to an owner thread would cost a wake-up (tens of microseconds) per hop.
///
/// ```
///   poster A ─ Enqueue ─┐                       ┌─ owner flag 0 → 1 (CAS): A drains inline:
///   poster B ─ Enqueue ─┼─▶ ConcurrentQueue ──▶─┤    handle m1; handle m2 (B's) …; afterDrain ()
///   poster C ─ Enqueue ─┘                       └─ flag 1 → 0, queue looked at again (a post that lost the CAS
///                                                  is seen here), and taken again if it is not empty
/// ```
[<Sealed>]
type internal InlineOwner<'Msg>(handle: 'Msg -> unit, afterDrain: unit -> unit, fault: exn -> unit) =
    let queue = ConcurrentQueue<'Msg>()
    // 0: idle; 1: a thread is draining; 2: sealed (taken for good by `Seal`).
    let mutable owner = 0

    let run (f: unit -> unit) =
        try f () with e -> fault e

    /// Queues a message without draining (for threads that must not run handlers; see `TryDrain`).
    member _.Enqueue(message: 'Msg) = queue.Enqueue message

    /// Drains here unless another thread is draining or the owner is sealed; true if this thread drained. Every
    /// message queued before this call is handled before this call returns or by the drain that made it return.
    member _.TryDrain() : bool =
        let mutable drained = false
        // The CAS is a full fence: a message queued before it by this thread is seen by the drain that holds the flag
        // (that drain looks at the queue again after its release, itself a full fence).
        while not queue.IsEmpty && Interlocked.CompareExchange(&owner, 1, 0) = 0 do
            drained <- true
            let mutable m = Unchecked.defaultof<'Msg>
            while queue.TryDequeue(&m) do
                run (fun () -> handle m)
                // Handlers may post to their own actor: those messages are taken by this drain.
                if queue.IsEmpty then run afterDrain
            // Exchange, not a plain write: the store must not pass the load of `queue.IsEmpty` above (x86 reorders a
            // store with a later load), or a message queued meanwhile could be left for nobody.
            Interlocked.Exchange(&owner, 0) |> ignore
        drained

    /// Queues a message and drains here if the owner is idle.
    member this.Post(message: 'Msg) =
        queue.Enqueue message
        this.TryDrain() |> ignore

    /// Waits for a drain in progress to end, then holds the owner for good: no handler runs after this returns, and
    /// the caller owns the actor's state (to clean up). Messages posted afterwards are queued and never handled.
    member _.Seal() =
        let mutable spinner = SpinWait()
        while Interlocked.CompareExchange(&owner, 2, 0) <> 0 && Volatile.Read(&owner) <> 2 do
            spinner.SpinOnce()

    /// Whether `Seal` has taken the owner.
    member _.IsSealed = Volatile.Read(&owner) = 2

    /// Takes a message left in the queue; only once sealed (the sealer owns the state), false otherwise or if none.
    member _.TryTakeLeft(message: byref<'Msg>) = Volatile.Read(&owner) = 2 && queue.TryDequeue(&message)

    /// Messages queued and not yet handled (a hint, for tests).
    member _.Count = queue.Count
