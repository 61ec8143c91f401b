namespace Parsl.Providers

open System
open Parsl

/// Gets blocks from PBS Pro (Parsl's `PBSProProvider`): `qsub`, `qstat -x -f -F json`, `qdel`.
/// Not tested against a live PBS Pro server (none installs on Debian); rendering and parsing are tested on samples.
type PBSProProvider private (options: PbsProOptions, channelFactory: unit -> IExecutionChannel) =
    inherit ClusterProvider(
        (let t = options.CmdTimeout
         { BatchSystems.basic
               "pbspro"
               (PbsPro.render options)
               (BatchSystems.submitWith Pbs.parseSubmit (Pbs.submitCommand options.Queue options.Account) t)
               (fun ch ids ct -> BatchSystems.queryWith (fun ids -> [ PbsPro.statusCommand ids ]) (PbsPro.parseStatus ids) t ch ids ct)
               (BatchSystems.cancelWith Pbs.cancelCommand t) with
             ScriptFile = id }),
        BatchSystems.settings options.InitBlocks options.MinBlocks options.MaxBlocks options.NodesPerBlock options.Parallelism
            (Some options.CpusPerNode) None options.WorkerInit options.Launcher options.CmdTimeout,
        channelFactory,
        (fun () -> PbsPro.validate options))

    /// A provider with these options.
    new(options: PbsProOptions) = new PBSProProvider(options, (fun () -> Channels.create options.Channel))

    /// The options.
    member _.Options = options

/// Gets blocks from Torque (Parsl's `TorqueProvider`): `qsub`, `qstat`, `qdel`.
/// Not tested against a live Torque server (none installs on Debian); rendering and parsing are tested on samples.
type TorqueProvider private (options: TorqueOptions, channelFactory: unit -> IExecutionChannel) =
    inherit ClusterProvider(
        (let t = options.CmdTimeout
         BatchSystems.basic
             "torque"
             (Torque.render options)
             (BatchSystems.submitWith Pbs.parseSubmit (Pbs.submitCommand options.Queue options.Account) t)
             (fun ch ids ct -> BatchSystems.queryWith (fun ids -> [ Torque.statusCommand ids ]) (Torque.parseStatus ids) t ch ids ct)
             (BatchSystems.cancelWith Pbs.cancelCommand t)),
        BatchSystems.settings options.InitBlocks options.MinBlocks options.MaxBlocks options.NodesPerBlock options.Parallelism
            None None options.WorkerInit options.Launcher options.CmdTimeout,
        channelFactory,
        (fun () -> Torque.validate options))

    /// A provider with these options.
    new(options: TorqueOptions) = new TorqueProvider(options, (fun () -> Channels.create options.Channel))

    /// The options.
    member _.Options = options

/// Gets blocks from HTCondor (Parsl's `CondorProvider`): `condor_submit`, `condor_q -af:jr`, `condor_rm`.
/// Not tested against a live HTCondor pool (none installs on Debian); rendering and parsing are tested on samples.
type CondorProvider private (options: CondorOptions, channelFactory: unit -> IExecutionChannel) =
    inherit ClusterProvider(
        (let t = options.CmdTimeout
         let cancel (ch: IExecutionChannel) ids ct =
             task {
                 let mutable ok = true
                 for chunk in BatchJobs.batches options.CmdChunkSize ids do
                     let! r = ch.ExecuteAsync(Condor.cancelCommand chunk, t, ct)
                     ok <- ok && r.ExitCode = 0
                 return ok
             }
         { BatchSystems.basic
               "condor"
               (Condor.render options)
               (BatchSystems.submitWith Condor.parseSubmit Condor.submitCommand t)
               (BatchSystems.queryWith (BatchJobs.batches options.CmdChunkSize >> List.map Condor.statusCommand) Condor.parseStatus t)
               cancel with
             ExtraFiles = fun r -> [ Condor.jobScriptName r.JobName, Condor.jobScript options r ]
             // Jobs stay in the queue (leave_in_queue), so one that is not listed keeps its last state, as Parsl.
             MissingState = None }),
        BatchSystems.settings options.InitBlocks options.MinBlocks options.MaxBlocks options.NodesPerBlock options.Parallelism
            options.CoresPerSlot options.MemPerSlot options.WorkerInit options.Launcher options.CmdTimeout,
        channelFactory,
        (fun () -> Condor.validate options))

    /// A provider with these options.
    new(options: CondorOptions) = new CondorProvider(options, (fun () -> Channels.create options.Channel))

    /// The options.
    member _.Options = options

/// Gets blocks from LSF (Parsl's `LSFProvider`): `bsub`, `bjobs`, `bkill`.
/// Not tested against a live LSF cluster (none installs on Debian); rendering and parsing are tested on samples.
type LSFProvider private (options: LsfOptions, channelFactory: unit -> IExecutionChannel) =
    inherit ClusterProvider(
        (let t = options.CmdTimeout
         BatchSystems.basic
             "LSF"
             (Lsf.render options)
             (BatchSystems.submitWith Lsf.parseSubmit (Lsf.submitCommand options) t)
             (BatchSystems.queryWith (fun ids -> [ Lsf.statusCommand ids ]) Lsf.parseStatus t)
             (BatchSystems.cancelWith Lsf.cancelCommand t)),
        BatchSystems.settings options.InitBlocks options.MinBlocks options.MaxBlocks (Lsf.nodesPerBlock options) options.Parallelism
            (if options.RequestByNodes then None else options.CoresPerNode) None options.WorkerInit options.Launcher options.CmdTimeout,
        channelFactory,
        (fun () -> Lsf.validate options))

    /// A provider with these options.
    new(options: LsfOptions) = new LSFProvider(options, (fun () -> Channels.create options.Channel))

    /// The options.
    member _.Options = options
