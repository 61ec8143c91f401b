module Parsl.Tests.InlineOwnerTests

// The manager's owner (src/Parsl.Node/Node/HighThroughput/InlineOwner.fs): a mailbox drained by whichever posting thread finds
// it idle. Real threads released together from a barrier; FsCheck draws the schedules (how many posters, how many
// messages each, where each pauses, which messages make the handler post again, when the seal comes). The handlers
// keep their records in plain, unsynchronised collections: that is what the owner promises they may do. Every
// thread is joined with a generous limit, so a message left for nobody fails the test instead of hanging it.

open System
open System.Collections.Generic
open System.Threading
open Expecto
open FsCheck
open FsCheck.FSharp
open Parsl.Node.HighThroughput

// Threads released together and joined within a bound: the Mailbox tests' helper.
let private runTogether = Parsl.Tests.MailboxTests.runTogether
let private limit = Parsl.Tests.MailboxTests.limit

/// A message: who posted it and its number in that poster's sequence; echoes are posted by the handler itself.
[<Struct>]
type private Msg =
    | Posted of poster: int * seq: int
    | Echo of origin: int * number: int

/// One poster: how many messages, every how many it yields (or spins), and whether it posts cold (queue only, then
/// a drain of its own later, as the manager's io helper and the poller do) instead of hot.
type Poster =
    { Count: int
      PauseEvery: int
      Yield: bool
      Cold: bool }

/// Posters, and every how many messages the handler posts an echo to its own owner (0: never).
type Schedule = { Posters: Poster list; EchoEvery: int }

let private genPoster =
    gen {
        let! count = Gen.choose (0, 3000)
        let! every = Gen.choose (1, 200)
        let! y = Gen.elements [ true; false ]
        let! cold = Gen.frequency [ 4, Gen.constant false; 1, Gen.constant true ]
        return { Count = count; PauseEvery = every; Yield = y; Cold = cold }
    }

let private genSchedule =
    gen {
        let! n = Gen.choose (1, 6)
        let! posters = Gen.listOfLength n genPoster
        let! echo = Gen.elements [ 0; 0; 7; 50 ]
        return { Posters = posters; EchoEvery = echo }
    }

let private pause (p: Poster) (i: int) =
    if i % p.PauseEvery = p.PauseEvery - 1 then
        if p.Yield then Thread.Yield() |> ignore else Thread.SpinWait 50

/// What the handlers saw, checked after the run.
type private Record() =
    /// Handlers (and afterDrain) running now: more than one at once is the bug these tests look for.
    [<DefaultValue>]
    val mutable Inside: int
    [<DefaultValue>]
    val mutable Overlaps: int
    [<DefaultValue>]
    val mutable Drains: int
    member val Seen = List<Msg>()

let private makeOwner (r: Record) (echoEvery: int) (sealedFlag: unit -> bool) (afterSeal: int ref) =
    let mutable owner: InlineOwner<Msg> = Unchecked.defaultof<_>
    let handle (m: Msg) =
        if sealedFlag () then afterSeal.Value <- afterSeal.Value + 1
        if Interlocked.Increment(&r.Inside) <> 1 then Interlocked.Increment(&r.Overlaps) |> ignore
        r.Seen.Add m
        match m with
        | Posted(p, i) when echoEvery > 0 && i % echoEvery = 0 -> owner.Post(Echo(p, i))
        | _ -> ()
        Interlocked.Decrement(&r.Inside) |> ignore
    let after () =
        if Interlocked.Increment(&r.Inside) <> 1 then Interlocked.Increment(&r.Overlaps) |> ignore
        r.Drains <- r.Drains + 1
        Interlocked.Decrement(&r.Inside) |> ignore
    owner <- InlineOwner<Msg>(handle, after, raise)
    owner

let private posterBody (owner: InlineOwner<Msg>) (index: int) (p: Poster) () =
    for i in 1 .. p.Count do
        if p.Cold then owner.Enqueue(Posted(index, i)) else owner.Post(Posted(index, i))
        pause p i
    // A cold poster rings for a drain at the end, as the manager's doorbell does.
    if p.Cold then owner.TryDrain() |> ignore

/// Every message posted is handled exactly once, each poster's in its order, echoes too, and never two handlers
/// at once; once every poster has returned nothing is left in the queue.
let private runSchedule (s: Schedule) =
    let r = Record()
    let never = ref 0
    let owner = makeOwner r s.EchoEvery (fun () -> false) never
    runTogether [ for i, p in List.indexed s.Posters -> sprintf "poster-%d" i, posterBody owner i p ]
    Expect.equal r.Overlaps 0 "handlers never ran at the same time"
    Expect.equal owner.Count 0 "nothing left in the queue once every poster has returned"
    let posted = [ for m in r.Seen do match m with Posted(p, i) -> yield (p, i) | Echo _ -> () ]
    let expected = s.Posters |> List.sumBy (fun p -> p.Count)
    Expect.equal posted.Length expected "every message handled"
    Expect.equal (set posted).Count expected "none handled twice"
    for i, p in List.indexed s.Posters do
        let mine = posted |> List.filter (fun (q, _) -> q = i) |> List.map snd
        Expect.sequenceEqual mine [ 1 .. p.Count ] (sprintf "poster %d's messages in its order" i)
    let echoes = [ for m in r.Seen do match m with Echo(p, i) -> yield (p, i) | Posted _ -> () ]
    let wanted = if s.EchoEvery = 0 then 0 else s.Posters |> List.sumBy (fun p -> p.Count / s.EchoEvery)
    Expect.equal echoes.Length wanted "a handler's own posts are handled too"
    if expected > 0 then Expect.isGreaterThan r.Drains 0 "the drains ended with afterDrain"

let private config n = { FsCheckConfig.defaultConfig with maxTest = n }

let tests =
    testList "InlineOwner (the manager's owner)" [
        test "eight hot posters: every message handled once, in each poster's order, one handler at a time" {
            runSchedule
                { Posters = [ for _ in 1..8 -> { Count = 20_000; PauseEvery = 1000; Yield = true; Cold = false } ]
                  EchoEvery = 0 }
        }
        testPropertyWithConfig (config 40) "any mix of hot and cold posters and self-posting handlers: nothing lost, nothing twice, never concurrent"
        <| Prop.forAll (Arb.fromGen genSchedule) runSchedule
        testPropertyWithConfig (config 25) "a seal while posters run: no handler after it returns, and every message is handled or left, once"
        <| Prop.forAll (Arb.fromGen (Gen.zip genSchedule (Gen.choose (0, 2000)))) (fun (s, sealAfter) ->
            let r = Record()
            let mutable isSealed = false
            let afterSeal = ref 0
            let owner = makeOwner r 0 (fun () -> Volatile.Read(&isSealed)) afterSeal
            let total = s.Posters |> List.sumBy (fun p -> p.Count)
            let sealer () =
                let mutable spinner = SpinWait()
                // Waits for progress by the posters (or for all of them to be done), then seals mid-run.
                while owner.Count + r.Seen.Count < min sealAfter total do
                    spinner.SpinOnce()
                owner.Seal()
                Volatile.Write(&isSealed, true)
            runTogether (("sealer", sealer) :: [ for i, p in List.indexed s.Posters -> sprintf "poster-%d" i, posterBody owner i p ])
            Expect.isTrue owner.IsSealed "sealed"
            Expect.equal afterSeal.Value 0 "no handler ran after Seal returned"
            Expect.equal r.Overlaps 0 "handlers never ran at the same time"
            let left = List<Msg>()
            let mutable m = Unchecked.defaultof<Msg>
            while owner.TryTakeLeft(&m) do
                left.Add m
            let all = [ yield! r.Seen; yield! left ]
            Expect.equal all.Length total "every message handled or left"
            Expect.equal (set all).Count total "none twice")
        test "a handler that throws goes to the fault callback, and the drain goes on with the next message" {
            let seen = List<int>()
            let faults = List<string>()
            let owner = InlineOwner<int>((fun x -> if x = 2 then failwith "two" else seen.Add x), ignore, (fun e -> faults.Add e.Message))
            owner.Enqueue 1
            owner.Enqueue 2
            owner.Enqueue 3
            Expect.isTrue (owner.TryDrain()) "this thread drained"
            Expect.sequenceEqual seen [ 1; 3 ] "the others were handled"
            Expect.sequenceEqual faults [ "two" ] "the failure was reported"
        }
        test "while another thread drains, a post returns at once and its message is handled by that drain" {
            let inHandler = new ManualResetEventSlim(false)
            let release = new ManualResetEventSlim(false)
            let seen = List<int>()
            let owner =
                InlineOwner<int>(
                    (fun x ->
                        if x = 1 then
                            inHandler.Set()
                            release.Wait(limit) |> ignore
                        seen.Add x),
                    ignore,
                    raise)
            let drainer = Thread((fun () -> owner.Post 1), IsBackground = true)
            drainer.Start()
            Expect.isTrue (inHandler.Wait limit) "the first post is being handled"
            owner.Post 2
            Expect.sequenceEqual seen [] "the second post did not run a handler here (nor wait for the first)"
            release.Set()
            Expect.isTrue (drainer.Join limit) "the drainer ended"
            Expect.sequenceEqual seen [ 1; 2 ] "the drain that was running took the second post"
        }
    ]
