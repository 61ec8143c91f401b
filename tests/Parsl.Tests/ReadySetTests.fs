/// `ReadySet`, the interchange's managers with free capacity: a hand-written index-and-swap structure, checked against
/// a plain set after every step of random operation sequences.
module Parsl.Tests.ReadySetTests

open System
open System.Collections.Generic
open Expecto
open FsCheck
open Parsl.Executors.HighThroughput

type Op =
    | Add of int
    | Remove of int
    /// Visit members until `stopAfter` have been seen, with draws from this seed.
    | Visit of stopAfter: int * seed: int

let private small (x: int) = abs (x % 16)

let tests =
    testList "ReadySet" [
        testProperty "it holds what a set holds after any sequence of adds and removes, and a visit sees members once each" (fun (ops: Op list) ->
            let set = ReadySet<int>()
            let model = HashSet<int>()
            let step op =
                match op with
                | Add x ->
                    set.Add(small x)
                    model.Add(small x) |> ignore
                | Remove x ->
                    set.Remove(small x)
                    model.Remove(small x) |> ignore
                | Visit(stopAfter, seed) ->
                    let random = Random(seed)
                    let want = abs stopAfter % (model.Count + 2)
                    let seen = List<int>()
                    let visit x =
                        seen.Add x
                        seen.Count < want
                    set.Visit((fun lo hi -> random.Next(lo, hi)), visit)
                    let expected = if want = 0 then min 1 model.Count else min want model.Count
                    if seen.Count <> expected then failwithf "visited %d, expected %d" seen.Count expected
                    if seen.Count <> (Set.ofSeq seen).Count then failwithf "visited a member twice: %A" (List.ofSeq seen)
                    if not (seen |> Seq.forall model.Contains) then failwithf "visited a non-member: %A" (List.ofSeq seen)
                let same = [ 0..15 ] |> List.forall (fun x -> set.Contains x = model.Contains x)
                set.Count = model.Count && Set.ofSeq set.Members = Set.ofSeq model && same
            ops |> List.forall step)
        test "a full visit sees every member, in an order that changes with the draws" {
            let set = ReadySet<int>()
            for i in 0..99 do set.Add i
            let order seed =
                let random = Random(seed: int)
                let seen = List<int>()
                let visit x =
                    seen.Add x
                    true
                set.Visit((fun lo hi -> random.Next(lo, hi)), visit)
                List.ofSeq seen
            let a = order 1
            let b = order 2
            Expect.equal (List.sort a) [ 0..99 ] "every member once"
            Expect.equal (List.sort b) [ 0..99 ] "every member once"
            Expect.notEqual a b "two seeds, two orders"
        }
    ]
