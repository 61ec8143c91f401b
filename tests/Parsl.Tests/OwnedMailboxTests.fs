module Parsl.Tests.OwnedMailboxTests

// The owner flag in src/Parsl.Node/Node/Runtime/OwnedMailbox.fs, under the interchange and the manager: many posters, each draining inline when it
// finds the mailbox unowned. Real threads, released together from a barrier so that they overlap; FsCheck draws the
// schedules (how many posters, how many items each, where each pauses, each drain's budget, which posters only
// queue). Checked: handlers never run on two threads at once, every item is handled exactly once and in its
// poster's order, every round's settled value reaches `released` once, and nothing is left queued once the posters
// that drain have returned (a poster that found an owner relies on it: the owner looks again after letting go).

open System
open System.Collections.Concurrent
open System.Collections.Generic
open System.Threading
open Expecto
open FsCheck
open FsCheck.FSharp
open Parsl.Node.Runtime

/// How long any thread of a test may take: far beyond what the work needs, even on a loaded machine.
let private limit = TimeSpan.FromSeconds 30.

let private runTogether (bodies: (unit -> unit) list) =
    let start = new Barrier(bodies.Length)
    let errors = ConcurrentQueue<exn>()
    let threads =
        [ for body in bodies ->
              let t =
                  Thread(
                      (fun () ->
                          try
                              start.SignalAndWait()
                              body ()
                          with e -> errors.Enqueue e),
                      IsBackground = true)
              t.Start()
              t ]
    let deadline = DateTime.UtcNow + limit
    for t in threads do
        if not (t.Join(max TimeSpan.Zero (deadline - DateTime.UtcNow))) then failwithf "a poster still runs after %O" limit
    match errors.TryDequeue() with
    | true, e -> raise (AggregateException("a poster failed", e))
    | _ -> ()

/// One poster: how many items it posts, how often it pauses (yielding or spinning), the budget of its drains, and
/// whether it only queues (as the kernel's `Queue` does) instead of draining after each post.
type Poster =
    { Items: int
      PauseEvery: int
      Yield: bool
      Budget: int
      QueueOnly: bool }

let private genPoster = gen {
    let! items = Gen.choose (0, 1500)
    let! every = Gen.choose (1, 50)
    let! y = Gen.elements [ true; false ]
    let! budget = Gen.frequency [ 2, Gen.choose (1, 4); 1, Gen.choose (5, 2000) ]
    let! queueOnly = Gen.frequency [ 4, Gen.constant false; 1, Gen.constant true ]
    return { Items = items; PauseEvery = every; Yield = y; Budget = budget; QueueOnly = queueOnly } }

let private genPosters = gen {
    let! n = Gen.choose (1, 6)
    return! Gen.listOfLength n genPoster }

/// Runs the posters; then the test thread drains what the queue-only posters left. Checks everything listed above.
let private run (posters: Poster list) =
    let box = OwnedMailbox<struct (int * int)>()
    let mutable inside = 0
    let mutable overlaps = 0
    // Plain lists, written only by handlers and `settle`: a second thread inside would corrupt them or be counted.
    let handled = List<struct (int * int)>()
    let round = List<struct (int * int)>()
    let releasedItems = ConcurrentQueue<struct (int * int)>()
    let handle item =
        if Interlocked.Increment(&inside) <> 1 then Interlocked.Increment(&overlaps) |> ignore
        handled.Add item
        round.Add item
        Thread.SpinWait 20
        Interlocked.Decrement(&inside) |> ignore
    let settle () =
        if Volatile.Read(&inside) <> 0 then Interlocked.Increment(&overlaps) |> ignore
        let a = round.ToArray()
        round.Clear()
        a
    let released (items: struct (int * int)[]) =
        for i in items do
            releasedItems.Enqueue i
    // A spent budget leaves items: the poster drains again, as the interchange's poller thread would for it.
    let drainAll budget =
        while box.Drain(handle, settle, released, budget) do
            ()
    let body p (poster: Poster) () =
        for i in 0 .. poster.Items - 1 do
            box.Enqueue(struct (p, i))
            if not poster.QueueOnly then drainAll poster.Budget
            if i % poster.PauseEvery = 0 then
                if poster.Yield then Thread.Yield() |> ignore else Thread.SpinWait 100
    runTogether (posters |> List.mapi body)
    // Every poster that drains returned: an item it queued was handled by it or by the owner it found. Only what
    // queue-only posters left may still be queued (the kernel's `Queue` waits for its next `Flush` in the same way).
    if posters |> List.forall (fun p -> not p.QueueOnly) then
        Expect.isTrue box.IsEmpty "nothing is left queued once every poster has returned"
    drainAll Int32.MaxValue
    Expect.equal overlaps 0 "handlers never ran on two threads at once"
    Expect.isTrue box.IsEmpty "nothing is left queued"
    let expected = [ for p, poster in List.indexed posters do for i in 0 .. poster.Items - 1 -> struct (p, i) ]
    Expect.equal (Seq.sort handled |> List.ofSeq) (List.sort expected) "every item handled exactly once"
    let last = Dictionary<int, int>()
    for struct (p, i) in handled do
        match last.TryGetValue p with
        | true, prev when prev >= i -> failwithf "poster %d: item %d handled after item %d" p i prev
        | _ -> last[p] <- i
    Expect.equal (Seq.sort releasedItems |> List.ofSeq) (List.sort expected) "every round's settled value released once"

let private config n = { FsCheckConfig.defaultConfig with maxTest = n }

let tests =
    testList "OwnedMailbox (owner flag)" [
        testPropertyWithConfig (config 60) "many posters: never two handlers at once, nothing lost or handled twice, each poster's order kept"
        <| Prop.forAll (Arb.fromGen genPosters) run

        test "six posters, 20,000 items each, budget 1: the hand-offs lose nothing" {
            run [ for _ in 1..6 -> { Items = 20_000; PauseEvery = 1000; Yield = true; Budget = 1; QueueOnly = false } ]
        }

        test "a poster that finds an owner returns at once; the owner handles its item before letting go" {
            let box = OwnedMailbox<int>()
            let inFirst = new ManualResetEventSlim()
            let letGo = new ManualResetEventSlim()
            let handledOn = ConcurrentDictionary<int, int>()
            let handle (x: int) =
                handledOn[x] <- Environment.CurrentManagedThreadId
                if x = 1 then
                    inFirst.Set()
                    if not (letGo.Wait limit) then failwith "never let go"
            let owner =
                Thread((fun () -> box.Enqueue 1; box.Drain(handle, ignore, ignore, 100) |> ignore), IsBackground = true)
            owner.Start()
            Expect.isTrue (inFirst.Wait limit) "the owner is handling item 1"
            box.Enqueue 2
            let left = box.Drain(handle, ignore, ignore, 100)
            Expect.isFalse left "nothing left for this poster to arrange"
            Expect.isFalse (handledOn.ContainsKey 2) "the poster did not handle item 2 while another thread owned the mailbox"
            letGo.Set()
            Expect.isTrue (owner.Join limit) "the owner finished"
            Expect.equal handledOn[2] owner.ManagedThreadId "the owner handled item 2 before letting go"
            Expect.isTrue box.IsEmpty "nothing left"
        }

        test "a spent budget returns true with the rest queued; the next drain handles them" {
            let box = OwnedMailbox<int>()
            let got = List<int>()
            for i in 1..10 do
                box.Enqueue i
            Expect.isTrue (box.Drain(got.Add, ignore, ignore, 3)) "items are left"
            Expect.sequenceEqual got [ 1; 2; 3 ] "the budget's worth, in order"
            Expect.isFalse (box.Drain(got.Add, ignore, ignore, 100)) "all handled"
            Expect.sequenceEqual got [ 1..10 ] "the rest, in order"
        }

        test "a handler that throws gives ownership back" {
            let box = OwnedMailbox<int>()
            box.Enqueue 1
            Expect.throws (fun () -> box.Drain((fun _ -> failwith "boom"), ignore, ignore, 10) |> ignore) "the handler's error surfaces"
            let got = List<int>()
            box.Enqueue 2
            box.Drain(got.Add, ignore, ignore, 10) |> ignore
            Expect.sequenceEqual got [ 2 ] "a later drain owns the mailbox again"
        }
    ]
