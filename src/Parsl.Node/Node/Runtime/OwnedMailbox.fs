namespace Parsl.Node.Runtime

open System.Collections.Concurrent
open System.Threading

/// A many-producer mailbox with no thread of its own: whichever thread finds it unowned becomes its owner, handles
/// what is queued, and gives ownership back. The owner flag is taken with one compare-and-swap and never waited for:
/// a poster that finds another owner leaves its item behind and goes on, and that owner sees the item before it
/// stops (it looks at the queue again after giving the flag back). So handlers never run on two threads at once, no
/// item is handled twice or lost, items are handled in the order they were queued, and a message needs no thread
/// wake-up when its poster finds the mailbox idle (an actor's state stays with one owner at a time, while a
/// dependency chain's next task still leaves on the thread that made it).
///
/// A lock around the handlers would give the first three too, but a thread that finds it taken waits; here nobody
/// waits for anybody, so a reader thread is never held up behind the kernel's thread or the other way round.
[<Sealed>]
type internal OwnedMailbox<'T>() =
    let queue = ConcurrentQueue<'T>()
    // 0: idle; 1: a thread owns the mailbox; 2: sealed (taken for good by `Seal`).
    let mutable owner = 0

    /// Queues an item without handling it; the next `Drain` (on any thread) handles it.
    member _.Enqueue(item: 'T) = queue.Enqueue item

    /// Whether nothing is queued (a hint: posters may add at once).
    member _.IsEmpty = queue.IsEmpty

    /// Items queued and not yet handled (a hint, for tests and logs).
    member _.Count = queue.Count

    /// Waits for a drain in progress to end, then holds the mailbox for good: no handler runs after this returns,
    /// and the caller owns the actor's state (to clean up). Items queued afterwards are never handled (see
    /// `TryTakeLeft`).
    member _.Seal() =
        let mutable spinner = SpinWait()
        while Interlocked.CompareExchange(&owner, 2, 0) <> 0 && Volatile.Read(&owner) <> 2 do
            spinner.SpinOnce()

    /// Whether `Seal` has taken the mailbox.
    member _.IsSealed = Volatile.Read(&owner) = 2

    /// Takes an item left in the queue: only once sealed (the sealer owns the state); false otherwise or if none.
    member _.TryTakeLeft(item: byref<'T>) = Volatile.Read(&owner) = 2 && queue.TryDequeue(&item)

    /// Becomes the owner if nobody is, and handles queued items with `handle`, at most `budget` of them in this call.
    /// After each round (the queue found empty, or the budget spent) `settle` runs, still as the owner, and its result
    /// is handed to `released` once ownership is given back (for what must not run as the owner: completing
    /// futures, reporting to other actors). Returns true when items are left that this call did not handle because
    /// its budget was spent: the caller arranges another drain (typically by waking the actor's home thread).
    /// Returns false when the queue was empty when this call let go, or another thread is the owner (it sees them).
    member _.Drain(handle: 'T -> unit, settle: unit -> 'S, released: 'S -> unit, budget: int) : bool =
        let mutable handled = 0
        let mutable left = false
        let mutable go = true
        while go do
            if Interlocked.CompareExchange(&owner, 1, 0) <> 0 then go <- false
            else
                let mutable settled = Unchecked.defaultof<'S>
                try
                    let mutable item = Unchecked.defaultof<'T>
                    while handled < budget && queue.TryDequeue(&item) do
                        handled <- handled + 1
                        handle item
                    settled <- settle ()
                finally
                    // A full fence: the flag is free before the queue is looked at below, so a poster whose
                    // compare-and-swap failed while this thread owned the mailbox has its item seen here, and one
                    // that comes later finds the flag free and drains itself.
                    Interlocked.Exchange(&owner, 0) |> ignore
                released settled
                if queue.IsEmpty then go <- false
                elif handled >= budget then
                    left <- true
                    go <- false
        left
