namespace Parsl.Executors.Mpi

open System
open System.Collections.Generic
open Parsl.Node.HighThroughput

/// The node scheduler inside a manager in MPI mode (Parsl's `MPITaskScheduler`): tries arrive with their MPI shape,
/// take nodes or wait, leave with the values their worker exports (`PARSL_MPI_NODELIST`, `PARSL_MPI_PREFIX`, ...),
/// and give their nodes back when they end. Owned by the manager's loop, like the rest of its state: not thread-safe.
[<Sealed>]
type MpiTaskScheduler(launcher: MpiLauncher, program: string, mpiexecIsOpenMpi: bool, nodes: string list, maxBypass: int) =
    let mutable state = NodeScheduler.create maxBypass nodes
    let waiting = Dictionary<int64, WireTask>()
    let shapes = Dictionary<int64, MpiShape>()

    let refusal (key: int64) (message: string) =
        { Key = key; Outcome = Raised("Parsl.InvalidResourceSpecification", message, "", [ MpiKeys.NumNodes ]) }

    let apply (placements: Placement list) (arriving: WireTask option) =
        let ready = List<WireTask>()
        let refused = List<WireResult>()
        for p in placements do
            match p with
            | Start(k, hosts) ->
                let t =
                    match arriving with
                    | Some t when t.Key = k -> t
                    | _ ->
                        let t = waiting[k]
                        waiting.Remove k |> ignore
                        t
                let shape = shapes[k]
                ready.Add { t with Resources = Prefix.values launcher program mpiexecIsOpenMpi shape hosts }
            | TooLarge(k, asked, total) ->
                shapes.Remove k |> ignore
                let id, _ = Protocol.ofKey k
                refused.Add(
                    refusal
                        k
                        (sprintf "Task %d asks for num_nodes = %d, but its block has %d node(s) (%s): it could never run; ask for at most %d, or give the provider more nodes per block"
                            id asked total (String.Join(",", state.Names)) total)
                )
        for t in ready do
            shapes.Remove t.Key |> ignore
        List.ofSeq ready, List.ofSeq refused

    /// The MPI launcher.
    member _.Launcher = launcher

    /// The block's nodes.
    member _.Nodes = List.ofArray state.Names

    /// The scheduler's state (for tests and logs).
    member _.State = state

    /// A try arrives: the tries that may run now (with their MPI values) and the results of those refused at once
    /// (a shape that cannot be read, more nodes than the block has). Tries without MPI values are refused too: in MPI
    /// mode every task says how many nodes and ranks it needs.
    member _.Accept(t: WireTask) : WireTask list * WireResult list =
        match MpiKeys.toShape t.Resources with
        | Error why ->
            let id, _ = Protocol.ofKey t.Key
            [], [ refusal t.Key (sprintf "Task %d has no usable MPI resource specification (%s); give num_nodes and num_ranks" id why) ]
        | Ok shape ->
            shapes[t.Key] <- shape
            let s, placements = NodeScheduler.submit t.Key shape.NumNodes state
            state <- s
            let ready, refused = apply placements (Some t)
            if not (ready |> List.exists (fun r -> r.Key = t.Key)) && not (refused |> List.exists (fun r -> r.Key = t.Key)) then
                waiting[t.Key] <- t
            ready, refused

    /// Whether a try waits for nodes (so a cancel must be answered here: no worker holds it).
    member _.IsWaiting(key: int64) = waiting.ContainsKey key

    /// A try ended, however (a result, a failure, a lost worker, a cancel), or was withdrawn while waiting: its nodes
    /// return, and the tries that now fit are returned to run. An unknown key changes nothing.
    member _.Release(key: int64) : WireTask list =
        waiting.Remove key |> ignore
        shapes.Remove key |> ignore
        let s, placements = NodeScheduler.release key state
        state <- s
        fst (apply placements None)

    /// The manager's settings for MPI mode, set by the `MPIExecutor` in the manager's environment:
    /// `PARSL_NET_MPI_LAUNCHER` (mpiexec, openmpi, srun, aprun; absent: not MPI mode), `PARSL_NET_MPI_PROGRAM` (the
    /// launcher's program) and `PARSL_NET_MPI_NODE_FILE` (a node file instead of Slurm's, PBS's or this host).
    static member FromEnvironment(log: string -> unit) : Result<MpiTaskScheduler option, string> =
        let env k = match Environment.GetEnvironmentVariable k with null | "" -> None | v -> Some v
        match env "PARSL_NET_MPI_LAUNCHER" with
        | None -> Ok None
        | Some name ->
            match MpiLauncher.parse name with
            | None -> Error(sprintf "PARSL_NET_MPI_LAUNCHER is '%s'; use mpiexec, openmpi, srun or aprun" name)
            | Some launcher ->
                let program = env "PARSL_NET_MPI_PROGRAM" |> Option.defaultValue (MpiLauncher.defaultProgram launcher)
                match NodeList.discover Environment.GetEnvironmentVariable (env "PARSL_NET_MPI_NODE_FILE") with
                | Error why -> Error("MPI mode has no node list: " + why)
                | Ok(hosts, source) ->
                    // Only Parsl's "mpiexec" needs to know which MPI it is: Open MPI's refuses Hydra's -ppn.
                    let openMpi = launcher = MpiLauncher.Mpiexec && NodeList.mpiexecIsOpenMpi program
                    log (
                        sprintf "MPI mode: launcher %s (%s%s), %d node(s) from %s: %s"
                            (MpiLauncher.name launcher) program (if openMpi then ", Open MPI's syntax" else "")
                            hosts.Length source (String.Join(",", hosts))
                    )
                    Ok(Some(MpiTaskScheduler(launcher, program, openMpi, hosts, NodeScheduler.DefaultMaxBypass)))
