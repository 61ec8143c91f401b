namespace Parsl.Executors

open System
open System.Collections.Generic
open Parsl
open Parsl.Executors.HighThroughput
open Parsl.Executors.Mpi
open Parsl.Providers

/// The options of an `MPIExecutor` (Parsl's `MPIExecutor` parameters), from `MpiExecutorOptions.defaults ()`.
type MpiExecutorOptions =
    { /// Default "MPIExecutor".
      Label: string
      /// Tasks that run at once in a block: the worker processes of its one manager (Parsl's `max_workers_per_block`).
      /// Default 1.
      MaxWorkersPerBlock: int
      /// How ranks are launched, and so `PARSL_MPI_PREFIX`. Default `MpiLauncher.Mpiexec` (MPICH/Hydra's syntax, or
      /// Open MPI's when the node's `mpiexec` is Open MPI's).
      MpiLauncher: MpiLauncher
      /// The launcher's program (a name on the PATH or a path), as `mpiexec.mpich`. Default None: `mpiexec`, `srun`
      /// or `aprun`.
      MpiProgram: string option
      /// A file listing the block's nodes, one per line. Default None: Slurm's job nodes (`SLURM_NODELIST`), else
      /// PBS's `PBS_NODEFILE`, else the manager's own host (where Parsl refuses to run).
      NodeFile: string option
      /// Everything else, as for a `HighThroughputExecutor` (provider, address, heartbeats, encryption, ...). The
      /// provider's launcher must be a `SimpleLauncher`: one manager per block, which launches the ranks itself.
      /// `MaxWorkersPerNode` and `CoresPerWorker` are set from `MaxWorkersPerBlock`. Default: HTEx defaults with a
      /// `LocalProvider` whose launcher is `SimpleLauncher`.
      Htex: HtexOptions }

/// Functions over MPI executor options.
[<RequireQualifiedAccess>]
module MpiExecutorOptions =
    /// Parsl's defaults (a new `LocalProvider` with a `SimpleLauncher` on each call).
    let defaults () =
        { Label = "MPIExecutor"
          MaxWorkersPerBlock = 1
          MpiLauncher = MpiLauncher.Mpiexec
          MpiProgram = None
          NodeFile = None
          Htex =
            { HtexOptions.defaults () with
                Provider = LocalProvider({ LocalProvider.Defaults with Launcher = BasicLaunchers.simple }) } }

    /// The HTEx options underneath, in MPI mode: the manager learns the mode, launcher and node file from its
    /// environment (the worker command is prefixed with `env`), and runs `MaxWorkersPerBlock` workers.
    let htex (o: MpiExecutorOptions) : Result<HtexOptions, string> =
        let command =
            match o.Htex.WorkerCommand with
            | Some words -> Ok words
            | None -> WorkerLocator.defaultCommand ()
        command
        |> Result.map (fun words ->
            let env =
                [ "env"
                  "PARSL_NET_MPI_LAUNCHER=" + MpiLauncher.name o.MpiLauncher
                  match o.MpiProgram with Some p -> "PARSL_NET_MPI_PROGRAM=" + p | None -> ()
                  match o.NodeFile with Some f -> "PARSL_NET_MPI_NODE_FILE=" + IO.Path.GetFullPath f | None -> () ]
            { o.Htex with
                Label = o.Label
                MaxWorkersPerNode = Some o.MaxWorkersPerBlock
                // Workers do not compete for the manager's cores: the ranks run on the block's nodes.
                CoresPerWorker = 1e-9
                WorkerCommand = Some(env @ words) })

    /// Every problem, each naming its field and the fix.
    let validate (o: MpiExecutorOptions) : ConfigurationError list =
        let f name = "MpiExecutor." + name
        [ if String.IsNullOrWhiteSpace o.Label then ConfigurationError(f "Label", "is empty; the default is \"MPIExecutor\"")
          if o.MaxWorkersPerBlock < 1 then
              ConfigurationError(f "MaxWorkersPerBlock", sprintf "must be at least 1 (got %d): the tasks that run at once in a block" o.MaxWorkersPerBlock)
          match o.MpiProgram with
          | Some p when String.IsNullOrWhiteSpace p -> ConfigurationError(f "MpiProgram", "is empty; give the launcher's program (as mpiexec.mpich), or None for the default")
          | _ -> ()
          match o.NodeFile with
          | Some p when String.IsNullOrWhiteSpace p -> ConfigurationError(f "NodeFile", "is empty; give a file of host names, or None")
          | Some p when not (IO.File.Exists p) -> ConfigurationError(f "NodeFile", sprintf "'%s' does not exist; give a file with one host name per line, or None for Slurm's, PBS's or this host" p)
          | _ -> ()
          if not (isNull (box o.Htex.Provider)) && not (isNull (box o.Htex.Provider.Launcher)) && o.Htex.Provider.Launcher.Name <> "SimpleLauncher" then
              ConfigurationError(
                  f "Htex.Provider",
                  sprintf "its launcher is %s; MPIExecutor needs a SimpleLauncher (BasicLaunchers.simple): one manager per block, which launches each task's ranks with %s" o.Htex.Provider.Launcher.Name (MpiLauncher.name o.MpiLauncher))
          match htex o with
          | Ok h -> yield! HtexOptions.validate h |> List.map (fun e -> ConfigurationError(e.Field.Replace("HighThroughputExecutor.", "MpiExecutor.Htex."), e.Message))
          | Error fix -> ConfigurationError(f "Htex.WorkerCommand", fix) ]

/// Runs MPI applications (Parsl's `MPIExecutor`): a `HighThroughputExecutor` in MPI mode. Each task gives
/// `num_nodes` and `num_ranks` (or `ranks_per_node`) in its resource specification; the manager on the block's lead
/// node hands it that many free nodes (a backlog, smallest first, no task starved), and its shell command runs
/// `$PARSL_MPI_PREFIX ./app` with `PARSL_MPI_NODELIST`, `PARSL_NUM_RANKS`, ... in its environment (a function app
/// reads the same values, see `MpiEnvironment`). A task that asks for more nodes than its block has fails at once.
[<Sealed>]
type MPIExecutor(options: MpiExecutorOptions) =
    let htexOptions = MpiExecutorOptions.htex options
    let inner =
        lazy
            (match htexOptions with
             | Ok h -> HighThroughputExecutor(h)
             | Error fix -> raise (ConfigurationError("MpiExecutor.Htex.WorkerCommand", fix)))
    let label = options.Label
    let mutable report: ExecutorEvent -> unit = ignore

    /// Parsl's defaults.
    new() = MPIExecutor(MpiExecutorOptions.defaults ())

    /// The options.
    member _.Options = options

    /// The HTEx underneath (its managers, blocks, ports).
    member _.HighThroughput = inner.Value

    interface Parsl.Monitoring.IMonitoredExecutor with
        member _.MonitoringSnapshotAsync() = (inner.Value :> Parsl.Monitoring.IMonitoredExecutor).MonitoringSnapshotAsync()
        member _.EnableResourceMonitoring(dir, interval) = (inner.Value :> Parsl.Monitoring.IMonitoredExecutor).EnableResourceMonitoring(dir, interval)

    interface IBatchingExecutor with
        member _.Flush() = (inner.Value :> IBatchingExecutor).Flush()

    interface IExecutor with
        member _.Label = label
        member _.Validate() = MpiExecutorOptions.validate options

        member _.CheckResources spec =
            match ResourceSpec.validate spec with
            | Ok _ -> None
            | Error e -> Some e

        member _.StartAsync(context, ct) =
            report <- context.Report
            (inner.Value :> IExecutor).StartAsync(context, ct)

        member _.Submit t =
            // The kernel checks only specifications that are not empty; an empty one is refused here (Parsl #3427:
            // it would wait forever). What travels on is the derived shape.
            match ResourceSpec.validate t.Resources with
            | Error e -> report (TryFailed(t.Id, t.Try, e))
            | Ok shape -> (inner.Value :> IExecutor).Submit { t with Resources = ResourceSpec.wire shape }

        member _.Cancel(id, tryId) = (inner.Value :> IExecutor).Cancel(id, tryId)
        member _.ShutdownAsync(wait) = (inner.Value :> IExecutor).ShutdownAsync(wait)
