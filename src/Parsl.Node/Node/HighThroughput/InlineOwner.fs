namespace Parsl.Node.HighThroughput

open System
open Parsl.Node.Runtime

/// The manager's mailbox: an `OwnedMailbox` (the one owner-flag implementation, shared with the interchange) bound
/// to the manager's handler, its after-drain step and its fault handler. Whichever thread finds the owner idle
/// drains: it runs the handler on every message queued, then `afterDrain` once the queue is empty (where the manager
/// sends what the messages produced, as one batch). A thread that posts while another drains leaves its message to
/// that drain and goes on at once.
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
    let mailbox = OwnedMailbox<'Msg>()
    let handleOne (m: 'Msg) = try handle m with e -> fault e
    let settle () = try afterDrain () with e -> fault e

    /// Queues a message without draining (for threads that must not run handlers; see `TryDrain`).
    member _.Enqueue(message: 'Msg) = mailbox.Enqueue message

    /// Drains here unless another thread is draining or the owner is sealed; true if this thread handled a message.
    /// Every message queued before this call is handled before this call returns or by the drain that made it return.
    member _.TryDrain() : bool =
        let mutable handled = false
        if not mailbox.IsEmpty then
            mailbox.Drain((fun m -> handled <- true; handleOne m), settle, ignore, Int32.MaxValue) |> ignore
        handled

    /// Queues a message and drains here if the owner is idle.
    member this.Post(message: 'Msg) =
        mailbox.Enqueue message
        this.TryDrain() |> ignore

    /// Waits for a drain in progress to end, then holds the owner for good (see `OwnedMailbox.Seal`).
    member _.Seal() = mailbox.Seal()

    /// Whether `Seal` has taken the owner.
    member _.IsSealed = mailbox.IsSealed

    /// Takes a message left in the queue; only once sealed (the sealer owns the state), false otherwise or if none.
    member _.TryTakeLeft(message: byref<'Msg>) = mailbox.TryTakeLeft(&message)

    /// Messages queued and not yet handled (a hint, for tests).
    member _.Count = mailbox.Count
