/// The decisions the Work Queue and TaskVine managers share (Executors/WorkerLink): keepalive, queue order, names a
/// worker may send.
module Parsl.Tests.WorkerLinkTests

open System
open Expecto
open FsCheck
open Parsl.Executors.WorkerLink

let tests =
    testList "WorkQueue.WorkerLink" [
        testProperty "a worker heard within the keepalive timeout is never lost; one silent past it always is"
            (fun (periodMs: PositiveInt) (extraMs: PositiveInt) (heardAgo: uint16) (sentAgo: uint16) ->
                let period = TimeSpan.FromMilliseconds(float periodMs.Get)
                let timeout = period + TimeSpan.FromMilliseconds(float extraMs.Get)
                let now = 10_000_000L
                let heard = now - int64 heardAgo
                let sent = now - int64 sentAgo
                match ManagerRules.keepalive period timeout heard sent now with
                | LoseWorker reason -> float heardAgo > timeout.TotalMilliseconds && reason.Contains "KeepaliveTimeout"
                | SendCheck -> float heardAgo <= timeout.TotalMilliseconds && float sentAgo > period.TotalMilliseconds
                | Quiet -> float heardAgo <= timeout.TotalMilliseconds && float sentAgo <= period.TotalMilliseconds)

        testProperty "the keepalive ticker runs at least once a second and at most every 50 ms" (fun (ms: PositiveInt) ->
            let t = ManagerRules.tickPeriod (TimeSpan.FromMilliseconds(float ms.Get))
            t >= TimeSpan.FromMilliseconds 50.0 && t <= TimeSpan.FromSeconds 1.0)

        testProperty "waiting tasks are offered by priority, then submission order; removed ones never"
            (fun (tasks: (int8 * bool) list) ->
                let q = PendingQueue()
                let items = tasks |> List.mapi (fun i (p, keep) -> float p, int64 i, int64 (100 + i), keep)
                for p, seq, id, _ in items do
                    q.Add(p, seq, id)
                for p, seq, _, keep in items do
                    if not keep then q.Remove(p, seq)
                let offered = Collections.Generic.List<int64>()
                q.Place((fun id -> offered.Add id; true), (fun () -> false))
                let expected =
                    items |> List.filter (fun (_, _, _, keep) -> keep) |> List.sortBy (fun (p, seq, _, _) -> -p, seq) |> List.map (fun (_, _, id, _) -> id)
                List.ofSeq offered = expected && q.Count = 0)

        testProperty "placing stops when the workers are full, and what was not placed keeps waiting"
            (fun (n: PositiveInt) (room: NonNegativeInt) (skip: int) ->
                let n = min n.Get 50
                let q = PendingQueue()
                for i in 1..n do
                    q.Add(0.0, int64 i, int64 i)
                // One task (if any) fits nowhere; the workers have room for `room` more.
                let unfit = int64 (1 + abs (skip % n))
                let mutable placed = 0
                q.Place((fun id -> if id = unfit then false else (placed <- placed + 1; true)), (fun () -> placed >= room.Get))
                let canPlace = n - 1
                let expectedPlaced = if room.Get = 0 then min 1 canPlace else min room.Get canPlace
                placed = expectedPlaced && q.Count = n - placed)

        testCase "a worker may not send a file outside its transfer folder" (fun () ->
            for bad in [ ""; "/etc/passwd"; "../x"; "a/../../x"; "a/.." ] do
                Expect.isFalse (ManagerRules.safeName bad) (sprintf "%s is refused" bad)
            for good in [ "x"; "dir/x"; "a..b"; "t1-1-result" ] do
                Expect.isTrue (ManagerRules.safeName good) (sprintf "%s is accepted" good))
    ]
