namespace Parsl.Providers

open System
open System.Threading.Tasks
open Parsl

/// Gets blocks from Slurm (Parsl's `SlurmProvider`): `sbatch` to submit, `sacct` for status when accounting is
/// on and `squeue` otherwise (with `scontrol` for jobs that already left the queue, so a failed block is seen as
/// FAILED with its exit code), `scancel` to cancel. Scripts and job output go to the submit-script directory.
type SlurmProvider private (options: SlurmOptions, channelFactory: unit -> IExecutionChannel) =
    inherit ClusterProvider(
        (let mutable source = Squeue
         let t = options.CmdTimeout
         { BatchSystems.basic
               "slurm"
               (Slurm.render options)
               (BatchSystems.submitWith (Slurm.parseSubmit options) Slurm.submitCommand t)
               (fun ch ids ct ->
                   BatchSystems.queryWith
                       (BatchJobs.batches options.StatusBatchSize >> List.map (Slurm.statusCommand options source))
                       (Slurm.parseStatus source) t ch ids ct)
               (BatchSystems.cancelWith (Slurm.cancelCommand options) t) with
             ScriptFile = id
             Prepare =
               fun ch ct ->
                   task {
                       let! r = ch.ExecuteAsync(Slurm.probeCommand, t, ct)
                       source <- if r.ExitCode = 0 then Sacct else Squeue
                   }
             ResolveMissing =
               fun ch ids ct ->
                   task {
                       let found = ResizeArray()
                       for id in ids do
                           let! r = ch.ExecuteAsync(Slurm.scontrolCommand options id, t, ct)
                           if r.ExitCode = 0 then
                               Slurm.parseScontrol r.Stdout
                               |> Option.filter (fun rep -> rep.JobId = id)
                               |> Option.iter found.Add
                       return List.ofSeq found
                   } }),
        { BatchSystems.settings options.InitBlocks options.MinBlocks options.MaxBlocks options.NodesPerBlock options.Parallelism
              options.CoresPerNode (options.MemPerNode |> Option.map float) options.WorkerInit options.Launcher options.CmdTimeout with
            StatusPollingInterval = options.StatusPollingInterval },
        channelFactory,
        (fun () -> Slurm.validate options))

    /// A provider with these options; its channel comes from `options.Channel`.
    new(options: SlurmOptions) = new SlurmProvider(options, (fun () -> Channels.create options.Channel))

    /// The options.
    member _.Options = options
