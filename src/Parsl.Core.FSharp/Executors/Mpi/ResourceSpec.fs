namespace Parsl.Executors.Mpi

open System
open System.Collections.Generic
open System.Globalization
open Parsl

/// An MPI task's resource specification (Parsl's `mpi_prefix_composer.validate_resource_spec`), checked when the
/// task is submitted: an empty or unknown-key specification, a value that is not a positive integer, or values that
/// contradict each other fail the call with `InvalidResourceSpecification` naming the keys and the fix.
[<RequireQualifiedAccess>]
module ResourceSpec =
    let private invalid (keys: string list) (message: string) : exn = InvalidResourceSpecification(keys, message) :> exn

    /// A positive integer from what a user may pass: an integer of any width, a whole floating value, or its text.
    let private positive (key: string) (v: obj) : Result<int, exn> =
        let bad () =
            Error(invalid [ key ] (sprintf "MPI resource specification: %s must be a positive integer, got %A; give it as a whole number such as 2" key v))
        let ofInt64 (n: int64) = if n >= 1L && n <= int64 Int32.MaxValue then Ok(int n) else bad ()
        match v with
        | :? int as n -> ofInt64 (int64 n)
        | :? int64 as n -> ofInt64 n
        | :? int16 as n -> ofInt64 (int64 n)
        | :? byte as n -> ofInt64 (int64 n)
        | :? uint32 as n -> ofInt64 (int64 n)
        | :? double as d when Math.Floor d = d && not (Double.IsInfinity d) -> ofInt64 (int64 d)
        | :? single as d when Math.Floor(float d) = float d -> ofInt64 (int64 d)
        | :? decimal as d when Math.Floor d = d -> ofInt64 (int64 d)
        | :? string as s ->
            match Int64.TryParse(s.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture) with
            | true, n -> ofInt64 n
            | _ -> bad ()
        | _ -> bad ()

    /// The shape of a task from its specification: missing values derived as Parsl does (`num_nodes` 1;
    /// `num_ranks` = `num_nodes × ranks_per_node`; `ranks_per_node` = `num_ranks / num_nodes`, which must divide
    /// evenly: an integer, never Parsl's "2.0"; neither given: one rank per node).
    let validate (spec: IReadOnlyDictionary<string, obj>) : Result<MpiShape, exn> =
        if isNull spec || spec.Count = 0 then
            Error(
                invalid
                    []
                    "MPI mode requires a resource specification: give num_nodes and num_ranks (or ranks_per_node), for example { num_nodes = 1; num_ranks = 4 }"
            )
        else
            let unknown = spec.Keys |> Seq.filter (fun k -> not (List.contains k MpiKeys.accepted)) |> List.ofSeq
            if not unknown.IsEmpty then
                Error(
                    invalid
                        unknown
                        (sprintf "MPI resource specification: unknown keys %s (accepted: %s)" (String.Join(", ", unknown)) (String.Join(", ", MpiKeys.accepted)))
                )
            else
                let get k =
                    match spec.TryGetValue k with
                    | true, null -> Ok None
                    | true, v -> positive k v |> Result.map Some
                    | _ -> Ok None
                let options =
                    match spec.TryGetValue MpiKeys.LauncherOptions with
                    | true, null -> Ok ""
                    | true, (:? string as s) -> Ok s
                    | true, v ->
                        Error(invalid [ MpiKeys.LauncherOptions ] (sprintf "MPI resource specification: launcher_options must be a string of launcher arguments, got %A" v))
                    | _ -> Ok ""
                match get MpiKeys.NumNodes, get MpiKeys.NumRanks, get MpiKeys.RanksPerNode, options with
                | Error e, _, _, _
                | _, Error e, _, _
                | _, _, Error e, _
                | _, _, _, Error e -> Error e
                | Ok nodes, Ok ranks, Ok perNode, Ok opts ->
                    let n = defaultArg nodes 1
                    let shape r p = Ok { NumNodes = n; NumRanks = r; RanksPerNode = p; LauncherOptions = opts }
                    match ranks, perNode with
                    | Some r, Some p when r = n * p -> shape r p
                    | Some r, Some p ->
                        Error(
                            invalid
                                [ MpiKeys.NumNodes; MpiKeys.NumRanks; MpiKeys.RanksPerNode ]
                                (sprintf "MPI resource specification: num_ranks %d is not num_nodes %d × ranks_per_node %d; give two of them and let the third be derived" r n p)
                        )
                    | Some r, None when r % n = 0 -> shape r (r / n)
                    | Some r, None ->
                        Error(
                            invalid
                                [ MpiKeys.NumNodes; MpiKeys.NumRanks ]
                                (sprintf "MPI resource specification: num_ranks %d does not divide evenly among num_nodes %d, so ranks_per_node would not be a whole number; give a multiple of num_nodes" r n)
                        )
                    | None, Some p -> shape (n * p) p
                    | None, None -> shape n 1

    /// The specification as the manager receives it: the derived values, as text.
    let wire (shape: MpiShape) : IReadOnlyDictionary<string, obj> =
        let d = Dictionary<string, obj>()
        for k, v in MpiKeys.ofShape shape do
            d[k] <- box v
        d :> _
