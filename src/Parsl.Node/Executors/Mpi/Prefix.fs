namespace Parsl.Executors.Mpi

open System

/// The program that starts a task's ranks, and so the syntax of `PARSL_MPI_PREFIX` (Parsl's `mpi_launcher`).
[<RequireQualifiedAccess>]
type MpiLauncher =
    /// `mpiexec -n R -ppn P -hosts h1,h2` (MPICH's Hydra, Intel MPI, Cray PALS): Parsl's "mpiexec". When the
    /// `mpiexec` on the node turns out to be Open MPI's (which refuses `-ppn`), Open MPI's syntax is used instead.
    | Mpiexec
    /// Open MPI's `mpiexec -n R --host h1:P,h2:P --map-by ppr:P:node`.
    | OpenMpi
    /// Slurm's `srun --ntasks R --ntasks-per-node P --nodelist h1,h2 --nodes N`.
    | Srun
    /// Cray's `aprun -n R -N P -node-list h1,h2`.
    | Aprun

/// Names of launchers as Parsl spells them.
[<RequireQualifiedAccess>]
module MpiLauncher =
    /// "mpiexec", "openmpi", "srun" or "aprun".
    let name (l: MpiLauncher) =
        match l with
        | MpiLauncher.Mpiexec -> "mpiexec"
        | MpiLauncher.OpenMpi -> "openmpi"
        | MpiLauncher.Srun -> "srun"
        | MpiLauncher.Aprun -> "aprun"

    /// The launcher of a name (case-insensitive); None for anything else.
    let parse (s: string) =
        match (if isNull s then "" else s.Trim().ToLowerInvariant()) with
        | "mpiexec" | "mpich" | "hydra" -> Some MpiLauncher.Mpiexec
        | "openmpi" | "open-mpi" | "ompi" -> Some MpiLauncher.OpenMpi
        | "srun" -> Some MpiLauncher.Srun
        | "aprun" -> Some MpiLauncher.Aprun
        | _ -> None

    /// The program each launcher runs unless told otherwise.
    let defaultProgram (l: MpiLauncher) =
        match l with
        | MpiLauncher.Mpiexec
        | MpiLauncher.OpenMpi -> "mpiexec"
        | MpiLauncher.Srun -> "srun"
        | MpiLauncher.Aprun -> "aprun"

/// One task's MPI shape, validated and complete (see `ResourceSpec`): `NumRanks = NumNodes * RanksPerNode`.
type MpiShape =
    { NumNodes: int
      NumRanks: int
      /// Always an integer (Parsl computes `"2.0"` by true division, which strict launchers refuse).
      RanksPerNode: int
      /// Appended to every prefix as given. Default "".
      LauncherOptions: string }

/// The names under which a task's MPI values travel from the client to the manager and on to the worker, which
/// exports each as `PARSL_<NAME>` (Parsl's `_init_mpi_env`: every resource key becomes an environment variable).
[<RequireQualifiedAccess>]
module MpiKeys =
    [<Literal>]
    let NumNodes = "num_nodes"
    [<Literal>]
    let NumRanks = "num_ranks"
    [<Literal>]
    let RanksPerNode = "ranks_per_node"
    [<Literal>]
    let LauncherOptions = "launcher_options"
    [<Literal>]
    let NodeList = "mpi_nodelist"
    [<Literal>]
    let MpiexecPrefix = "mpiexec_prefix"
    [<Literal>]
    let SrunPrefix = "srun_prefix"
    [<Literal>]
    let AprunPrefix = "aprun_prefix"
    [<Literal>]
    let MpiPrefix = "mpi_prefix"

    /// The keys a user may give (Parsl's `validate_resource_spec`).
    let accepted = [ NumNodes; NumRanks; RanksPerNode; LauncherOptions ]

    /// The environment variable a key becomes on the worker.
    let variable (key: string) = "PARSL_" + key.ToUpperInvariant()

    /// The values of a shape as they travel on the wire.
    let ofShape (s: MpiShape) =
        [ NumNodes, string s.NumNodes
          NumRanks, string s.NumRanks
          RanksPerNode, string s.RanksPerNode
          LauncherOptions, s.LauncherOptions ]

    /// The shape back from the wire; Error says what is wrong.
    let toShape (values: (string * string) list) : Result<MpiShape, string> =
        let find k = values |> List.tryFind (fun (n, _) -> n = k) |> Option.map snd
        let int k =
            match find k with
            | Some v ->
                match Int32.TryParse(v, Globalization.NumberStyles.Integer, Globalization.CultureInfo.InvariantCulture) with
                | true, n when n >= 1 -> Ok n
                | _ -> Error(sprintf "%s is '%s', not a positive integer" k v)
            | None -> Error(sprintf "%s is missing" k)
        match int NumNodes, int NumRanks, int RanksPerNode with
        | Ok n, Ok r, Ok p when r = n * p ->
            Ok { NumNodes = n; NumRanks = r; RanksPerNode = p; LauncherOptions = defaultArg (find LauncherOptions) "" }
        | Ok n, Ok r, Ok p -> Error(sprintf "num_ranks %d is not num_nodes %d times ranks_per_node %d" r n p)
        | Error e, _, _
        | _, Error e, _
        | _, _, Error e -> Error e

/// The launch prefixes of a placed task (Parsl's `mpi_prefix_composer`), as pure functions of its shape and nodes.
[<RequireQualifiedAccess>]
module Prefix =
    let private withOptions (words: string) (options: string) =
        if String.IsNullOrWhiteSpace options then words else words + " " + options.Trim()

    /// MPICH/Hydra: `mpiexec -n R -ppn P -hosts h1,h2 <opts>`.
    let hydra (program: string) (s: MpiShape) (nodes: string list) =
        withOptions (sprintf "%s -n %d -ppn %d -hosts %s" program s.NumRanks s.RanksPerNode (String.Join(",", nodes))) s.LauncherOptions

    /// Open MPI: `mpiexec -n R --host h1:P,h2:P --map-by ppr:P:node <opts>` (its `mpiexec` refuses `-ppn`; the
    /// slot count on each host lets P ranks land there, the mapping puts exactly P on each).
    let openMpi (program: string) (s: MpiShape) (nodes: string list) =
        let hosts = nodes |> List.map (fun h -> sprintf "%s:%d" h s.RanksPerNode)
        withOptions
            (sprintf "%s -n %d --host %s --map-by ppr:%d:node" program s.NumRanks (String.Join(",", hosts)) s.RanksPerNode)
            s.LauncherOptions

    /// Slurm: `srun --ntasks R --ntasks-per-node P --nodelist h1,h2 --nodes N <opts>`.
    let srun (program: string) (s: MpiShape) (nodes: string list) =
        withOptions
            (sprintf "%s --ntasks %d --ntasks-per-node %d --nodelist %s --nodes %d" program s.NumRanks s.RanksPerNode (String.Join(",", nodes)) s.NumNodes)
            s.LauncherOptions

    /// Cray: `aprun -n R -N P -node-list h1,h2 <opts>`.
    let aprun (program: string) (s: MpiShape) (nodes: string list) =
        withOptions (sprintf "%s -n %d -N %d -node-list %s" program s.NumRanks s.RanksPerNode (String.Join(",", nodes))) s.LauncherOptions

    /// Whether `mpiexec --version` output is Open MPI's ("mpiexec (OpenRTE) 4.1.4", "mpiexec (Open MPI) 5.0").
    let isOpenMpiVersion (versionText: string) =
        not (isNull versionText)
        && (versionText.Contains "OpenRTE" || versionText.Contains "Open MPI" || versionText.Contains "open-mpi.org")

    /// Every value a placed task gets, as (key, value) to export as `PARSL_<KEY>`: the nodes, the prefix of each
    /// launcher and `mpi_prefix` for the chosen one. `program` is the chosen launcher's program; `mpiexecIsOpenMpi`
    /// says which syntax `mpiexec` needs (probed on the node).
    let values (launcher: MpiLauncher) (program: string) (mpiexecIsOpenMpi: bool) (s: MpiShape) (nodes: string list) =
        let mpiexecProgram =
            match launcher with
            | MpiLauncher.Mpiexec | MpiLauncher.OpenMpi -> program
            | _ -> "mpiexec"
        let mpiexec =
            if launcher = MpiLauncher.OpenMpi || mpiexecIsOpenMpi then openMpi mpiexecProgram s nodes
            else hydra mpiexecProgram s nodes
        let srunPrefix = srun (if launcher = MpiLauncher.Srun then program else "srun") s nodes
        let aprunPrefix = aprun (if launcher = MpiLauncher.Aprun then program else "aprun") s nodes
        let chosen =
            match launcher with
            | MpiLauncher.Mpiexec
            | MpiLauncher.OpenMpi -> mpiexec
            | MpiLauncher.Srun -> srunPrefix
            | MpiLauncher.Aprun -> aprunPrefix
        MpiKeys.ofShape s
        @ [ MpiKeys.NodeList, String.Join(",", nodes)
            MpiKeys.MpiexecPrefix, mpiexec
            MpiKeys.SrunPrefix, srunPrefix
            MpiKeys.AprunPrefix, aprunPrefix
            MpiKeys.MpiPrefix, chosen ]
