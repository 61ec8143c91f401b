namespace Parsl.Executors.Mpi

/// A task waiting for nodes.
type WaitingTask =
    { Key: int64
      Nodes: int
      /// Its place in arrival order.
      Arrival: int64
      /// How many tasks that arrived after it have started while it waited.
      Bypassed: int }

/// The nodes of one block and who holds them (Parsl's `MPITaskScheduler` state, in the manager on the lead node).
/// Nodes are kept as indices into `Names`, so allocation is in block order.
type NodeSchedulerState =
    { Names: string[]
      Free: Set<int>
      Running: Map<int64, int list>
      /// In arrival order.
      Backlog: WaitingTask list
      NextArrival: int64
      /// A waiting task passed over this many times is served next: no other task starts before it.
      MaxBypass: int }

/// What the scheduler decided.
type Placement =
    /// The task takes these nodes (in block order) until it is released.
    | Start of key: int64 * nodes: string list
    /// The task asks for more nodes than the block has: it can never run (Parsl would wait forever).
    | TooLarge of key: int64 * asked: int * blockNodes: int

/// The node scheduler's decisions: pure functions of its state. A task takes `num_nodes` free nodes or waits in the
/// backlog; the backlog is served smallest first (as Parsl), except that a task passed over `MaxBypass` times is
/// served next, so a large task is not starved forever by a stream of small ones; nodes return when the task is
/// released, however its try ended.
[<RequireQualifiedAccess>]
module NodeScheduler =
    /// The default patience of a waiting task.
    [<Literal>]
    let DefaultMaxBypass = 16

    /// A scheduler over a block's nodes (duplicates dropped, order kept).
    let create (maxBypass: int) (nodes: string list) : NodeSchedulerState =
        let names = nodes |> List.distinct |> Array.ofList
        { Names = names
          Free = Set.ofSeq (seq { 0 .. names.Length - 1 })
          Running = Map.empty
          Backlog = []
          NextArrival = 0L
          MaxBypass = max 0 maxBypass }

    /// The nodes a running task holds.
    let nodesOf (key: int64) (s: NodeSchedulerState) =
        s.Running |> Map.tryFind key |> Option.map (List.map (fun i -> s.Names[i]))

    /// Whether a task waits in the backlog.
    let isWaiting (key: int64) (s: NodeSchedulerState) = s.Backlog |> List.exists (fun w -> w.Key = key)

    let private start (w: WaitingTask) (s: NodeSchedulerState) =
        let taken = s.Free |> Seq.truncate w.Nodes |> List.ofSeq
        let backlog =
            s.Backlog
            |> List.choose (fun o ->
                if o.Key = w.Key then None
                elif o.Arrival < w.Arrival then Some { o with Bypassed = o.Bypassed + 1 }
                else Some o)
        { s with
            Free = List.fold (fun f i -> Set.remove i f) s.Free taken
            Running = Map.add w.Key taken s.Running
            Backlog = backlog },
        Start(w.Key, taken |> List.map (fun i -> s.Names[i]))

    let rec private schedule (s: NodeSchedulerState) (acc: Placement list) =
        let free = s.Free.Count
        if s.Backlog.IsEmpty || free = 0 then s, List.rev acc
        else
            // The oldest task out of patience goes first, and holds the others back until it fits.
            match s.Backlog |> List.tryFind (fun w -> w.Bypassed >= s.MaxBypass) with
            | Some w ->
                if w.Nodes <= free then
                    let s, p = start w s
                    schedule s (p :: acc)
                else s, List.rev acc
            | None ->
                match s.Backlog |> List.filter (fun w -> w.Nodes <= free) with
                | [] -> s, List.rev acc
                | fits ->
                    let w = fits |> List.minBy (fun w -> w.Nodes, w.Arrival)
                    let s, p = start w s
                    schedule s (p :: acc)

    /// A task asks for `nodes` nodes: it starts now, waits, or (more than the block has) is refused at once.
    /// A key already known is ignored.
    let submit (key: int64) (nodes: int) (s: NodeSchedulerState) : NodeSchedulerState * Placement list =
        if s.Running.ContainsKey key || isWaiting key s then s, []
        elif nodes > s.Names.Length || nodes < 1 then s, [ TooLarge(key, nodes, s.Names.Length) ]
        else
            let w = { Key = key; Nodes = nodes; Arrival = s.NextArrival; Bypassed = 0 }
            schedule { s with Backlog = s.Backlog @ [ w ]; NextArrival = s.NextArrival + 1L } []

    /// A task's try ended (a result, a failure, a lost worker, a cancel): its nodes return, and waiting tasks that now
    /// fit start. A waiting task is withdrawn. An unknown key changes nothing.
    let release (key: int64) (s: NodeSchedulerState) : NodeSchedulerState * Placement list =
        match s.Running.TryFind key with
        | Some held ->
            schedule { s with Free = List.fold (fun f i -> Set.add i f) s.Free held; Running = Map.remove key s.Running } []
        | None when isWaiting key s ->
            // Withdrawing a task may end another's wait behind a starving one: schedule again.
            schedule { s with Backlog = s.Backlog |> List.filter (fun w -> w.Key <> key) } []
        | None -> s, []
