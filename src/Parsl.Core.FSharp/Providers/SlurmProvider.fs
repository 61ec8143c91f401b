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
         { Label = "slurm"
           ScriptFile = id
           Render = Slurm.render options
           ExtraFiles = fun _ -> []
           Prepare =
             fun ch ct ->
                 task {
                     let! r = ch.ExecuteAsync(Slurm.probeCommand, t, ct)
                     source <- if r.ExitCode = 0 then Sacct else Squeue
                 }
           Submit = BatchSystems.submitWith (Slurm.parseSubmit options) Slurm.submitCommand t
           Query =
             fun ch ids ct ->
                 BatchSystems.queryWith
                     (BatchJobs.batches options.StatusBatchSize >> List.map (Slurm.statusCommand options source))
                     (Slurm.parseStatus source) t ch ids ct
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
                 }
           MissingState = Some JobState.Completed
           Cancel = BatchSystems.cancelWith (Slurm.cancelCommand options) t
           StateAfterCancel = JobState.Cancelled }),
        { InitBlocks = options.InitBlocks
          MinBlocks = options.MinBlocks
          MaxBlocks = options.MaxBlocks
          NodesPerBlock = options.NodesPerBlock
          Parallelism = options.Parallelism
          CoresPerNode = options.CoresPerNode
          MemPerNode = options.MemPerNode |> Option.map float
          WorkerInit = options.WorkerInit
          Launcher = options.Launcher
          CmdTimeout = options.CmdTimeout
          StatusPollingInterval = options.StatusPollingInterval },
        channelFactory,
        (fun () -> Slurm.validate options))

    /// A provider with these options; its channel comes from `options.Channel`.
    new(options: SlurmOptions) = new SlurmProvider(options, (fun () -> Channels.create options.Channel))

    /// The options.
    member _.Options = options
