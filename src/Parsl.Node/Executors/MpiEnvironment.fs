namespace Parsl.Executors

open System
open Parsl.Executors.Mpi

// On the node side (Parsl.Node), because function apps read it on workers, which never load the kernel.
/// What an MPI task was given, read from its environment: for a function app that launches its ranks itself
/// (`PARSL_MPI_PREFIX`, `PARSL_MPI_NODELIST`, ...). Outside an MPI task every value is empty or 0.
[<RequireQualifiedAccess>]
module MpiEnvironment =
    let private get (key: string) = match Environment.GetEnvironmentVariable(MpiKeys.variable key) with null -> "" | v -> v
    let private number key = match Int32.TryParse(get key) with | true, n -> n | _ -> 0

    /// `PARSL_NUM_NODES`.
    let numNodes () = number MpiKeys.NumNodes
    /// `PARSL_NUM_RANKS`.
    let numRanks () = number MpiKeys.NumRanks
    /// `PARSL_RANKS_PER_NODE`.
    let ranksPerNode () = number MpiKeys.RanksPerNode
    /// `PARSL_MPI_NODELIST`, split at commas.
    let nodes () = (get MpiKeys.NodeList).Split(',', StringSplitOptions.RemoveEmptyEntries) |> List.ofArray
    /// `PARSL_LAUNCHER_OPTIONS`.
    let launcherOptions () = get MpiKeys.LauncherOptions
    /// `PARSL_MPI_PREFIX`: the chosen launcher's prefix.
    let prefix () = get MpiKeys.MpiPrefix
    /// `PARSL_MPIEXEC_PREFIX`.
    let mpiexecPrefix () = get MpiKeys.MpiexecPrefix
    /// `PARSL_SRUN_PREFIX`.
    let srunPrefix () = get MpiKeys.SrunPrefix
    /// `PARSL_APRUN_PREFIX`.
    let aprunPrefix () = get MpiKeys.AprunPrefix
