namespace Parsl.Node.HighThroughput

open System

/// Where a try sits in the interchange's queue: Parsl's rule is lower priority value first, FIFO among
/// equals, and tasks without a priority after every prioritised one.
[<Struct; CustomEquality; CustomComparison>]
type QueueOrder =
    { /// The task's `priority` resource value, if it has one.
      Priority: float voption
      /// Arrival order.
      Sequence: int64 }

    override this.Equals(o: obj) =
        match o with
        | :? QueueOrder as q -> compare this q = 0
        | _ -> false

    override this.GetHashCode() = hash this.Sequence

    // The generic interface is what the interchange's priority queue compares through (its default comparer): with
    // only the object one, each of the ~log n comparisons per queued try boxed both sides (two allocations each;
    // measured: the largest allocator on the interchange's hot path, in the no-op row's profile).
    interface IComparable<QueueOrder> with
        member this.CompareTo(q: QueueOrder) =
            match this.Priority, q.Priority with
            | ValueSome a, ValueSome b when a <> b -> compare a b
            | ValueSome _, ValueNone -> -1
            | ValueNone, ValueSome _ -> 1
            | _ -> compare this.Sequence q.Sequence

    interface IComparable with
        member this.CompareTo(o: obj) = (this :> IComparable<QueueOrder>).CompareTo(o :?> QueueOrder)

/// How the interchange picks managers to send tasks to (Parsl's `manager_selector`).
type ManagerSelector =
    /// In random order (Parsl's `RandomManagerSelector`, the default).
    | RandomSelector
    /// Newest block first (Parsl's `BlockIdManagerSelector`).
    | BlockIdSelector

/// One connected manager, as the selector sees it.
type ManagerView =
    { ManagerId: string
      BlockId: string
      /// Tasks it can take now: workers + prefetch − tasks in flight.
      FreeCapacity: int
      Draining: bool
      Active: bool }

/// How CPU cores are given to workers (Parsl's `cpu_affinity`).
type CpuAffinity =
    /// No pinning.
    | NoAffinity
    /// Consecutive cores per worker (`block`).
    | BlockAffinity
    /// Consecutive cores per worker, from the last core down (`block-reverse`).
    | BlockReverse
    /// Cores dealt round-robin (`alternating`).
    | Alternating
    /// Explicit core lists, one per worker (`list:0-1,4:2-3`).
    | CoreList of int list list

/// Pure decisions of the interchange and the manager.
[<RequireQualifiedAccess>]
module Policies =
    /// The queue position of a try, from its resource specification's `priority` (any number).
    let order (priority: obj) (sequence: int64) =
        let p =
            match priority with
            | null -> ValueNone
            | :? IConvertible as c -> ValueSome(c.ToDouble(Globalization.CultureInfo.InvariantCulture))
            | _ -> ValueNone
        { Priority = p; Sequence = sequence }

    /// The managers that may get tasks now, in the order to offer them. `shuffle` supplies the randomness.
    let selectManagers (selector: ManagerSelector) (shuffle: ManagerView[] -> ManagerView[]) (managers: ManagerView seq) =
        let ready = managers |> Seq.filter (fun m -> m.Active && not m.Draining && m.FreeCapacity > 0) |> Array.ofSeq
        match selector with
        | RandomSelector -> shuffle ready
        | BlockIdSelector ->
            // Parsl compares block ids as strings; ours are numbers, so compare them as numbers when they are.
            let key (m: ManagerView) =
                match Int64.TryParse m.BlockId with
                | true, n -> (1, n, m.BlockId)
                | _ -> (0, 0L, m.BlockId)
            ready |> Array.sortByDescending key

    /// How many tasks each manager gets from `queued` waiting tasks, in the selector's order.
    let dispatch (ordered: ManagerView[]) (queued: int) =
        let mutable left = queued
        [ for m in ordered do
              if left > 0 then
                  let n = min m.FreeCapacity left
                  left <- left - n
                  if n > 0 then m.ManagerId, n ]

    /// Worker processes on a node: the least of `maxWorkers`, cores / cores per worker, memory / memory per
    /// worker and the number of accelerators (when any), and at least 1.
    let workerCount (maxWorkers: int option) (cores: int) (coresPerWorker: float) (memGb: float option)
                    (memPerWorker: float option) (accelerators: int) =
        let byCores = int (floor (float cores / coresPerWorker))
        let byMem =
            match memGb, memPerWorker with
            | Some m, Some per when per > 0.0 -> int (floor (m / per))
            | _ -> Int32.MaxValue
        let byMax = defaultArg maxWorkers Int32.MaxValue
        let n = List.min [ byCores; byMem; byMax ]
        let n = if accelerators > 0 then min n accelerators else n
        max 1 n

    /// Parses a `cpu_affinity` setting; the error names the accepted forms.
    let parseAffinity (s: string) : Result<CpuAffinity, string> =
        let parseRange (r: string) =
            match r.Split '-' with
            | [| a |] -> [ int a ]
            | [| a; b |] -> [ int a .. int b ]
            | _ -> failwithf "bad range '%s'" r
        match s with
        | null | "" | "none" -> Ok NoAffinity
        | "block" -> Ok BlockAffinity
        | "block-reverse" -> Ok BlockReverse
        | "alternating" -> Ok Alternating
        | s when s.StartsWith "list:" ->
            try
                s.Substring(5).Split(':', StringSplitOptions.RemoveEmptyEntries)
                |> Array.map (fun w -> w.Split(',', StringSplitOptions.RemoveEmptyEntries) |> Seq.collect parseRange |> List.ofSeq)
                |> List.ofArray
                |> CoreList
                |> Ok
            with e ->
                Error(sprintf "'%s' is not a core list (%s); write it as list:0-1,4:2-3 (one core set per worker, ':' between workers)" s e.Message)
        | s -> Error(sprintf "'%s' is not one of none, block, block-reverse, alternating, list:..." s)

    /// The cores worker `rank` of `workers` is pinned to on a node of `cores` cores (empty: not pinned).
    let coresFor (affinity: CpuAffinity) (cores: int) (workers: int) (rank: int) : int list =
        let per = max 1 (cores / max 1 workers)
        match affinity with
        | NoAffinity -> []
        | BlockAffinity -> [ rank * per .. rank * per + per - 1 ] |> List.map (fun c -> c % cores)
        | BlockReverse -> [ rank * per .. rank * per + per - 1 ] |> List.map (fun c -> cores - 1 - (c % cores))
        | Alternating -> [ rank .. workers .. cores - 1 ] |> (fun l -> if l.IsEmpty then [ rank % cores ] else l)
        | CoreList lists -> if rank < lists.Length then lists[rank] else []

    /// The accelerator a worker gets (round-robin when there are more workers than accelerators).
    let acceleratorFor (accelerators: string list) (rank: int) =
        match accelerators with
        | [] -> None
        | xs -> Some(List.item (rank % xs.Length) xs)
