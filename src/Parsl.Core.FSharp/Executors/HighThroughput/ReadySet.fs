namespace Parsl.Executors.HighThroughput

open System.Collections.Generic

/// The members of a set that can take work now, visited in random order without touching the others: the
/// interchange keeps its managers with free capacity here, so a dispatch costs as much as the managers it fills, not
/// as much as every connected manager (was: a view of each of 10,000 managers built, filtered and shuffled per
/// dispatch). Add, remove and membership are O(1); a visit of k members is O(k). Not thread-safe: one owner.
[<Sealed>]
type ReadySet<'T when 'T: equality>() =
    let items = List<'T>()
    let index = Dictionary<'T, int>()

    let swap i j =
        if i <> j then
            let a = items[i]
            let b = items[j]
            items[i] <- b
            items[j] <- a
            index[b] <- i
            index[a] <- j

    /// How many members.
    member _.Count = items.Count

    /// Whether `x` is a member.
    member _.Contains x = index.ContainsKey x

    /// Adds `x` (nothing if it is a member already).
    member _.Add x =
        if not (index.ContainsKey x) then
            index[x] <- items.Count
            items.Add x

    /// Removes `x` (nothing if it is not a member).
    member _.Remove x =
        match index.TryGetValue x with
        | true, i ->
            swap i (items.Count - 1)
            items.RemoveAt(items.Count - 1)
            index.Remove x |> ignore
        | _ -> ()

    /// Calls `f` on members in a uniformly random order (a Fisher–Yates shuffle done only as far as it goes), each at
    /// most once, until `f` returns false or every member was visited. `next lo hi` draws from [lo, hi). `f` must not
    /// add or remove members: collect them and do it after the visit.
    member _.Visit(next: int -> int -> int, f: 'T -> bool) =
        let mutable i = 0
        let mutable go = true
        while go && i < items.Count do
            swap i (next i items.Count)
            go <- f items[i]
            i <- i + 1

    /// The members, in no particular order.
    member _.Members: 'T seq = items :> _
