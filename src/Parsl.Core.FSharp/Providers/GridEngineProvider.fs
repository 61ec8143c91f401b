namespace Parsl.Providers

open System
open Parsl

/// Gets blocks from Grid Engine (Parsl's `GridEngineProvider`): `qsub -terse`, `qstat`, `qdel`, and `qacct`
/// for the exit status of blocks that left the queue.
type GridEngineProvider private (options: GridEngineOptions, channelFactory: unit -> IExecutionChannel) =
    inherit ClusterProvider(
        (let t = options.CmdTimeout
         // qacct learns of a job a moment after qstat forgets it (seconds on a busy host); for up to a minute the
         // job is reported as still finishing, so a failed block is not mistaken for a completed one.
         let unaccounted = Collections.Generic.Dictionary<string, DateTime>()
         { BatchSystems.basic
               "grid_engine"
               (GridEngine.render options)
               (BatchSystems.submitWith GridEngine.parseSubmit (GridEngine.submitCommand options) t)
               (BatchSystems.queryWith (fun _ -> [ GridEngine.statusCommand ]) GridEngine.parseStatus t)
               (BatchSystems.cancelWith GridEngine.cancelCommand t) with
             ResolveMissing =
               fun ch ids ct ->
                   task {
                       let found = ResizeArray()
                       for id in ids do
                           let! r = ch.ExecuteAsync(GridEngine.accountingCommand id, t, ct)
                           match (if r.ExitCode = 0 then GridEngine.parseAccounting id r.Stdout else None) with
                           | Some rep ->
                               unaccounted.Remove id |> ignore
                               found.Add rep
                           | None ->
                               let now = DateTime.UtcNow
                               let since = match unaccounted.TryGetValue id with | true, t -> t | _ -> now
                               unaccounted[id] <- since
                               if now - since < TimeSpan.FromMinutes 1.0 then
                                   found.Add { JobId = id; State = JobState.Running; Native = "finishing (not yet in qacct)"; ExitCode = None }
                       return List.ofSeq found
                   } }),
        BatchSystems.settings options.InitBlocks options.MinBlocks options.MaxBlocks options.NodesPerBlock options.Parallelism
            None None options.WorkerInit options.Launcher options.CmdTimeout,
        channelFactory,
        (fun () -> GridEngine.validate options))

    /// A provider with these options; its channel comes from `options.Channel`.
    new(options: GridEngineOptions) = new GridEngineProvider(options, (fun () -> Channels.create options.Channel))

    /// The options.
    member _.Options = options
