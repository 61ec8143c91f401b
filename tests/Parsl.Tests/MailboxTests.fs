module Parsl.Tests.MailboxTests

// The hand-written concurrency in src/Parsl.Node/Node/Runtime/Mailbox.fs: the kernel's many-producer mailbox, the thread pool's work
// queue and the futex semaphore under both. Real threads, released together from a barrier so that they overlap;
// FsCheck draws the schedules (how many producers, how many items each, where each one pauses, when the close
// comes, how releases are batched). Every thread is joined with a generous limit, so a lost wake-up or a producer
// stuck after a close fails the test instead of hanging it.

open System
open System.Collections.Generic
open System.Threading
open Expecto
open FsCheck
open FsCheck.FSharp
open Parsl.Runtime
open Parsl.Node.Runtime

/// How long any thread of a test may take: far beyond what the work needs, even on a loaded machine.
let internal limit = TimeSpan.FromSeconds 30.

/// Runs each body on its own thread, all released at once; fails naming the threads that did not end within
/// `limit`, and rethrows the first exception a body raised.
let internal runTogether (bodies: (string * (unit -> unit)) list) =
    let start = new Barrier(bodies.Length)
    let errors = Collections.Concurrent.ConcurrentQueue<exn>()
    let threads =
        [ for name, body in bodies ->
              let t =
                  Thread(
                      (fun () ->
                          try
                              start.SignalAndWait()
                              body ()
                          with e ->
                              errors.Enqueue e),
                      IsBackground = true,
                      Name = name)
              t.Start()
              name, t ]
    let deadline = DateTime.UtcNow + limit
    let hung = [ for name, t in threads do if not (t.Join(max TimeSpan.Zero (deadline - DateTime.UtcNow))) then name ]
    if not hung.IsEmpty then failwithf "threads still running after %O: %s" limit (String.Join(", ", hung))
    match errors.TryDequeue() with
    | true, e -> raise (AggregateException("a thread failed", e))
    | _ -> ()

/// A producer's pause point: every `Every` items it yields its time slice (`Yield`) or spins a little, so that the
/// generated runs interleave producers, the consumer and the closer differently.
type Pause =
    { Every: int
      Yield: bool }

/// Producers posting `Items` each (with their pauses) while a closer completes the queue once the consumers have
/// taken `CloseAfter` items (`None`: only after every producer has finished).
type Schedule =
    { Producers: (int * Pause) list
      Consumers: int
      CloseAfter: int option }

let private pause (p: Pause) (i: int) =
    if i % p.Every = p.Every - 1 then
        if p.Yield then Thread.Yield() |> ignore else Thread.SpinWait 200

let private genPause = gen {
    let! every = Gen.choose (1, 64)
    let! y = Gen.elements [ true; false ]
    return { Every = every; Yield = y } }

let private genSchedule maxProducers maxConsumers = gen {
    let! n = Gen.choose (1, maxProducers)
    let! producers = Gen.listOfLength n (Gen.zip (Gen.choose (0, 2000)) genPause)
    let! consumers = Gen.choose (1, maxConsumers)
    let total = producers |> List.sumBy fst
    let! closeAfter = Gen.frequency [ 1, Gen.constant None; 3, Gen.map Some (Gen.choose (0, total)) ]
    return { Producers = producers; Consumers = consumers; CloseAfter = closeAfter } }

/// Posts `(producer, seq)` for seq = 0, 1, ... until `post` refuses; returns how many were accepted, and checks
/// that a refusal is final (a closed queue never accepts again).
let private produce (post: struct (int * int) -> bool) (p: int) (count: int) (ps: Pause) =
    let mutable accepted = 0
    let mutable refused = false
    let mutable i = 0
    while i < count do
        let ok = post (struct (p, i))
        if refused && ok then failwithf "producer %d: item %d was accepted after an earlier one was refused" p i
        if ok then accepted <- accepted + 1 else refused <- true
        pause ps i
        i <- i + 1
    accepted

/// Every accepted item taken exactly once, nothing else taken, and each producer's items taken in the order posted
/// (checked per consumer: one consumer's takes from a FIFO queue are in order).
let private checkDelivery (accepted: int[]) (takenBy: List<struct (int * int)> list) =
    for taken in takenBy do
        let last = Dictionary<int, int>()
        for struct (p, i) in taken do
            match last.TryGetValue p with
            | true, prev when prev >= i -> failwithf "producer %d: item %d taken after item %d" p i prev
            | _ -> last[p] <- i
    let counts = Dictionary<struct (int * int), int>()
    for taken in takenBy do
        for item in taken do
            counts[item] <- (match counts.TryGetValue item with | true, c -> c + 1 | _ -> 1)
    for KeyValue(struct (p, i), c) in counts do
        if c > 1 then failwithf "producer %d: item %d taken %d times" p i c
        // A producer's accepted items are its first ones: anything at or past that count was refused.
        if i >= accepted[p] then failwithf "producer %d: item %d was taken, but Post refused it" p i
    let lost = [ for p in 0 .. accepted.Length - 1 do for i in 0 .. accepted[p] - 1 do if not (counts.ContainsKey(struct (p, i))) then struct (p, i) ]
    if not lost.IsEmpty then
        let struct (p, i) = lost.Head
        failwithf "%d accepted items never taken (first: producer %d, item %d)" lost.Length p i

/// Runs a schedule against a Mailbox: the producers, one consumer and the closer on their own threads.
let private runMailbox (s: Schedule) =
    let box = Mailbox<struct (int * int)>()
    let accepted = Array.zeroCreate s.Producers.Length
    let taken = List<struct (int * int)>()
    let mutable takenCount = 0
    let mutable producing = s.Producers.Length
    let consumer () =
        while box.WaitToRead() do
            let mutable item = Unchecked.defaultof<_>
            while box.TryTake(&item) do
                taken.Add item
                Interlocked.Increment(&takenCount) |> ignore
        // Closed and drained: later posts are refused.
        if box.Post(struct (-1, -1)) then failwith "Post accepted an item after WaitToRead returned false"
    let closer () =
        let mutable sw = SpinWait()
        match s.CloseAfter with
        | Some n -> while Volatile.Read(&takenCount) < n && Volatile.Read(&producing) > 0 do sw.SpinOnce()
        | None -> while Volatile.Read(&producing) > 0 do sw.SpinOnce()
        box.Complete()
    let producers =
        s.Producers |> List.mapi (fun p (count, ps) ->
            sprintf "producer %d" p, fun () ->
                accepted[p] <- produce box.Post p count ps
                Interlocked.Decrement(&producing) |> ignore)
    runTogether ((("consumer", consumer) :: ("closer", closer) :: producers))
    if s.CloseAfter.IsNone && Array.sum accepted <> List.sumBy fst s.Producers then
        failwith "a post before Complete was refused"
    checkDelivery accepted [ taken ]

/// Runs a schedule against a WorkQueue: one producer (its first), `Consumers` consumers looping on Wait/TryTake
/// as the thread pool's workers do, and the closer.
let private runWorkQueue (s: Schedule) =
    let q = WorkQueue<struct (int * int)>()
    let count, ps = s.Producers.Head
    let accepted = [| 0 |]
    let takenBy = [ for _ in 1 .. s.Consumers -> List<struct (int * int)>() ]
    let mutable takenCount = 0
    let mutable producing = 1
    let consumer (mine: List<_>) () =
        while q.Wait() do
            let mutable item = Unchecked.defaultof<_>
            while q.TryTake(&item) do
                mine.Add item
                Interlocked.Increment(&takenCount) |> ignore
        if q.Post(struct (-1, -1)) then failwith "Post accepted an item after Wait returned false"
    let closer () =
        let mutable sw = SpinWait()
        match s.CloseAfter with
        | Some n -> while Volatile.Read(&takenCount) < n && Volatile.Read(&producing) > 0 do sw.SpinOnce()
        | None -> while Volatile.Read(&producing) > 0 do sw.SpinOnce()
        q.Complete()
        if not q.IsCompleted then failwith "IsCompleted is false after Complete"
    let producer () =
        accepted[0] <- produce q.Post 0 count ps
        Interlocked.Decrement(&producing) |> ignore
    runTogether (("producer", producer) :: ("closer", closer) :: (takenBy |> List.mapi (fun i l -> sprintf "consumer %d" i, consumer l)))
    if s.CloseAfter.IsNone && accepted[0] <> count then failwith "a post before Complete was refused"
    checkDelivery accepted takenBy

/// C threads asleep on the semaphore, then releases in the given batches (adding up to at least C).
type Batches =
    { Sleepers: int
      Batches: int list }

let private genBatches = gen {
    let! sleepers = Gen.choose (1, 6)
    // Split `sleepers` into batches, then maybe add a surplus batch.
    let rec split left = gen {
        if left = 0 then return []
        else
            let! b = Gen.choose (1, left)
            let! rest = split (left - b)
            return b :: rest }
    let! batches = split sleepers
    let! surplus = Gen.frequency [ 3, Gen.constant []; 1, Gen.map List.singleton (Gen.choose (1, 4)) ]
    return { Sleepers = sleepers; Batches = batches @ surplus } }

/// Waits (on the real event, not a sleep) until `n` threads are asleep in the semaphore's futex wait.
let private untilAsleep (s: LightSemaphore) n =
    let deadline = DateTime.UtcNow + limit
    while s.Sleepers < n do
        if DateTime.UtcNow > deadline then failwithf "only %d of %d waiters went to sleep" s.Sleepers n
        Thread.Yield() |> ignore

let private config n = { FsCheckConfig.defaultConfig with maxTest = n }

/// How long a waiter in the semaphore tests waits for a release that is due: a lost wake-up shows as a false.
let private due = 10_000

let tests =
    testList "Mailbox" [
        testList "Mailbox (many producers, one consumer)" [
            test "eight producers: every item taken once, in each producer's order" {
                runMailbox
                    { Producers = [ for _ in 1..8 -> 20_000, { Every = 1000; Yield = true } ]
                      Consumers = 1
                      CloseAfter = None }
            }
            test "WaitToRead wakes for an item posted while it sleeps, and is false once completed and drained" {
                let box = Mailbox<int>()
                let got = List<int>()
                let mutable finished = false
                let consumer () =
                    while box.WaitToRead() do
                        let mutable x = 0
                        while box.TryTake(&x) do got.Add x
                    finished <- true
                // The consumer sleeps between posts (nothing arrives while it spins); each post must wake it.
                let producer () =
                    for i in 1..5 do
                        Thread.Sleep 20 // spacing, not synchronisation: the assertions hold for any spacing
                        box.Post i |> ignore
                    box.Complete()
                runTogether [ "consumer", consumer; "producer", producer ]
                Expect.isTrue finished "the consumer ended"
                Expect.sequenceEqual got [ 1..5 ] "every item, in order"
                Expect.isFalse (box.Post 6) "a completed mailbox refuses posts"
            }
            testPropertyWithConfig (config 40) "with a close at any point: accepted items are taken exactly once, nothing refused is taken, nobody hangs"
            <| Prop.forAll (Arb.fromGen (genSchedule 6 1)) runMailbox
        ]
        testList "WorkQueue (the thread pool's queue)" [
            test "one producer, four consumers: every item taken by exactly one of them" {
                runWorkQueue
                    { Producers = [ 50_000, { Every = 500; Yield = true } ]
                      Consumers = 4
                      CloseAfter = None }
            }
            test "Wait on an empty completed queue is false at once, for every consumer" {
                let q = WorkQueue<int>()
                q.Complete()
                Expect.isFalse (q.Post 1) "refused after Complete"
                runTogether [ for i in 1..4 -> sprintf "consumer %d" i, fun () -> if q.Wait() then failwith "Wait was true" ]
            }
            testPropertyWithConfig (config 40) "with a close at any point: accepted items are taken exactly once, every consumer stops"
            <| Prop.forAll (Arb.fromGen (genSchedule 1 6)) runWorkQueue
        ]
        testList "LightSemaphore (futex)" [
            test "a wait with nothing released times out false, not before its time" {
                let s = LightSemaphore()
                let sw = Diagnostics.Stopwatch.StartNew()
                Expect.isFalse (s.Wait 200) "nothing was released"
                // The deadline is kept on a coarse clock (a few ms): allow that much, no more.
                Expect.isGreaterThanOrEqual sw.ElapsedMilliseconds 190L "the wait did not end early"
                Expect.isFalse (s.Wait 0) "still nothing"
            }
            test "a timed-out wait takes nothing: a later release is there for the next wait" {
                let s = LightSemaphore()
                runTogether [ for i in 1..3 -> sprintf "waiter %d" i, fun () -> if s.Wait 50 then failwith "took a release nobody made" ]
                s.Release 2
                Expect.isTrue (s.Wait 0) "first of two"
                Expect.isTrue (s.Wait 0) "second of two"
                Expect.isFalse (s.Wait 0) "no third"
            }
            testProperty "the count is exact: n released, n taken, then none" (fun (releases: byte list) ->
                let s = LightSemaphore()
                for r in releases do s.Release(int r % 8)
                let n = releases |> List.sumBy (fun r -> int r % 8)
                for i in 1..n do
                    if not (s.Wait 0) then failwithf "take %d of %d failed" i n
                not (s.Wait 0))
            testPropertyWithConfig (config 30) "batched releases wake as many sleepers as they add (nothing lost or taken twice)"
            <| Prop.forAll (Arb.fromGen genBatches) (fun b ->
                if Futex.available then
                    let s = LightSemaphore()
                    let woke = Array.zeroCreate b.Sleepers
                    let waiters =
                        [ for i in 0 .. b.Sleepers - 1 ->
                              sprintf "sleeper %d" i, fun () -> woke[i] <- s.Wait due ]
                    let releaser () =
                        untilAsleep s b.Sleepers
                        for batch in b.Batches do s.Release batch
                    runTogether (("releaser", releaser) :: waiters)
                    let woken = woke |> Array.filter id |> Array.length
                    if woken <> b.Sleepers then failwithf "%d of %d sleepers woke" woken b.Sleepers
                    let surplus = List.sum b.Batches - b.Sleepers
                    for i in 1..surplus do
                        if not (s.Wait 0) then failwithf "surplus release %d of %d was lost" i surplus
                    if s.Wait 0 then failwith "a release was counted twice")
            testPropertyWithConfig (config 30) "racing releasers and takers: every release taken once"
            <| Prop.forAll
                (Arb.fromGen (gen {
                    let! releasers = Gen.listOfLength 3 (Gen.listOf (Gen.choose (1, 5)))
                    let! takers = Gen.choose (1, 4)
                    return releasers, takers }))
                (fun (releasers, takers) ->
                    let s = LightSemaphore()
                    let total = releasers |> List.sumBy List.sum
                    // Quotas adding up to the total: each taker must get exactly its own.
                    let quota i = total / takers + (if i < total % takers then 1 else 0)
                    let bodies =
                        [ for i, batches in List.indexed releasers ->
                              sprintf "releaser %d" i, fun () -> for b in batches do (s.Release b; Thread.Yield() |> ignore) ]
                        @ [ for i in 0 .. takers - 1 ->
                                sprintf "taker %d" i, fun () ->
                                    for k in 1 .. quota i do
                                        if not (s.Wait due) then failwithf "taker %d: take %d timed out" i k ]
                    runTogether bodies
                    if s.Wait 0 then failwith "more was taken than released")
        ]
    ]
