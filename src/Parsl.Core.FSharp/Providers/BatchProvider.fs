namespace Parsl.Providers

open System
open System.Collections.Generic
open System.IO
open System.Threading
open System.Threading.Tasks
open Parsl

/// Block settings every batch provider has (Parsl's `ClusterProvider` attributes).
type internal BlockSettings =
    { InitBlocks: int
      MinBlocks: int
      MaxBlocks: int
      NodesPerBlock: int
      Parallelism: float
      CoresPerNode: int option
      MemPerNode: float option
      WorkerInit: string
      Launcher: ILauncher
      CmdTimeout: TimeSpan
      StatusPollingInterval: TimeSpan }

/// One batch system's commands, as the engine below drives them. The rendering and parsing inside are the
/// pure functions of `Slurm`, `GridEngine`, `Pbs`, `Condor` and `Lsf`; these closures only add the channel.
type internal BatchSystem =
    { Label: string
      /// The submit script's file name for a job name.
      ScriptFile: string -> string
      Render: ScriptRequest -> string
      /// Further files the job needs beside the script (HTCondor's job script): name and content.
      ExtraFiles: ScriptRequest -> (string * string) list
      /// Run once before the first command (Slurm probes sacct here).
      Prepare: IExecutionChannel -> CancellationToken -> Task
      /// Submits (channel, job name, script path as the scheduler sees it); returns the job id or raises `SubmitException`.
      Submit: IExecutionChannel -> string -> string -> CancellationToken -> Task<string>
      /// Reports on these jobs; None when the status command failed (nothing is updated then, as Parsl).
      Query: IExecutionChannel -> string list -> CancellationToken -> Task<SchedulerReport list option>
      /// Reports on jobs the status command no longer lists (Slurm asks scontrol); the rest get `MissingState`.
      ResolveMissing: IExecutionChannel -> string list -> CancellationToken -> Task<SchedulerReport list>
      /// What a job the scheduler forgot is taken to be (Parsl: COMPLETED); None leaves its state as it was.
      MissingState: JobState option
      Cancel: IExecutionChannel -> string list -> CancellationToken -> Task<bool>
      /// What a cancelled job becomes (Parsl: CANCELLED for Slurm, COMPLETED for Grid Engine and Torque).
      StateAfterCancel: JobState }

type internal JobRecord =
    { mutable Status: JobStatus
      StdoutPath: string
      StderrPath: string }

/// What the batch providers share (Parsl's `ClusterProvider`): writes the submit script, copies it through the
/// channel, submits, keeps the table of its jobs, polls, and reads a failed job's output. One gate serializes
/// its operations. Dispose it to close an SSH channel.
type ClusterProvider internal (system: BatchSystem, settings: BlockSettings, channelFactory: unit -> IExecutionChannel,
                               validate: unit -> ConfigurationError list) =
    let gate = new SemaphoreSlim(1, 1)
    let jobs = Dictionary<string, JobRecord>()
    let mutable context: ProviderContext option = None
    let mutable channel: IExecutionChannel option = None
    let mutable remoteDir: string option = None

    let log () =
        match context with
        | Some c -> c.Log
        | None -> Serilog.Core.Logger.None

    let opened (ct: CancellationToken) =
        task {
            match channel, remoteDir with
            | Some ch, Some dir -> return ch, dir
            | _ ->
                let ctx =
                    match context with
                    | Some c -> c
                    | None -> raise (ExecutionProviderException(sprintf "%s provider used before Initialize" system.Label))
                let ch = match channel with Some ch -> ch | None -> channelFactory ()
                channel <- Some ch
                let! dir = ch.OpenAsync(ctx.ScriptDir, ct)
                do! system.Prepare ch ct
                remoteDir <- Some dir
                return ch, dir
        }

    let locked (f: unit -> Task<'T>) (ct: CancellationToken) =
        task {
            do! gate.WaitAsync ct
            try return! f () finally gate.Release() |> ignore
        }

    let withOutput (ch: IExecutionChannel) (r: JobRecord) (status: JobStatus) ct =
        task {
            if status.State = JobState.Failed then
                let! out = ch.ReadSummaryAsync(r.StdoutPath, ct)
                let! err = ch.ReadSummaryAsync(r.StderrPath, ct)
                return { status with Stdout = out; Stderr = err }
            else return status
        }

    let refresh (ct: CancellationToken) =
        task {
            let active = [ for kv in jobs do if not (JobState.isTerminal kv.Value.Status.State) then kv.Key ]
            if not active.IsEmpty then
                let! ch, _ = opened ct
                let! reports = system.Query ch active ct
                match reports with
                | None -> log().Warning("{Provider}: status command failed; job states not updated", system.Label)
                | Some reports ->
                    let seen = HashSet<string>()
                    let apply (rep: SchedulerReport) =
                        task {
                            match jobs.TryGetValue rep.JobId with
                            | true, r when seen.Add rep.JobId ->
                                let st =
                                    { State = rep.State
                                      Message = Some(sprintf "%s state %s" system.Label rep.Native)
                                      ExitCode = rep.ExitCode
                                      Stdout = None
                                      Stderr = None }
                                let! st = withOutput ch r st ct
                                r.Status <- st
                            | _ -> ()
                        }
                    for rep in reports do do! apply rep
                    let missing = active |> List.filter (seen.Contains >> not)
                    if not missing.IsEmpty then
                        let! resolved = system.ResolveMissing ch missing ct
                        for rep in resolved do do! apply rep
                        match system.MissingState with
                        | Some st ->
                            for id in missing do
                                if not (seen.Contains id) then
                                    jobs[id].Status <-
                                        { JobStatus.ofState st with Message = Some(sprintf "%s no longer lists the job" system.Label) }
                        | None -> ()
        }

    /// The channel-side submit-script directory, once opened.
    member _.RemoteScriptDir = remoteDir

    interface IExecutionProvider with
        member _.Label = system.Label
        member _.InitBlocks = settings.InitBlocks
        member _.MinBlocks = settings.MinBlocks
        member _.MaxBlocks = settings.MaxBlocks
        member _.NodesPerBlock = settings.NodesPerBlock
        member _.Parallelism = settings.Parallelism
        member _.CoresPerNode = settings.CoresPerNode
        member _.MemPerNode = settings.MemPerNode
        member _.StatusPollingInterval = settings.StatusPollingInterval
        member _.WorkerInit = settings.WorkerInit
        member _.Launcher = settings.Launcher
        member _.Validate() = validate ()
        member _.Initialize ctx = context <- Some ctx

        member _.SubmitAsync(command, tasksPerNode, jobName, ct) =
            locked (fun () ->
                task {
                    if tasksPerNode < 1 then invalidArg "tasksPerNode" (sprintf "must be at least 1, got %d" tasksPerNode)
                    let! ch, dir = opened ct
                    let ctx = context.Value
                    // Parsl's job names: the executor's name plus the submit time, unique per provider.
                    let name = sprintf "%s.%.6f" jobName (float (DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()) / 1000.0 + float jobs.Count * 1e-6)
                    let file = system.ScriptFile name
                    let stdoutPath = dir.TrimEnd('/') + "/" + name + ".stdout"
                    let stderrPath = dir.TrimEnd('/') + "/" + name + ".stderr"
                    let request =
                        { JobName = name
                          ScriptDir = dir
                          StdoutPath = stdoutPath
                          StderrPath = stderrPath
                          TasksPerNode = tasksPerNode
                          LaunchScript = settings.Launcher.Wrap(command, tasksPerNode, settings.NodesPerBlock) }
                    let localPath = Path.Combine(ctx.ScriptDir, file)
                    Directory.CreateDirectory ctx.ScriptDir |> ignore
                    do! File.WriteAllTextAsync(localPath, system.Render request, ct)
                    for extraName, content in system.ExtraFiles request do
                        let extra = Path.Combine(ctx.ScriptDir, extraName)
                        do! File.WriteAllTextAsync(extra, content, ct)
                        let! _ = ch.PushFileAsync(extra, dir, ct)
                        ()
                    let! scriptPath = ch.PushFileAsync(localPath, dir, ct)
                    let! id = system.Submit ch name scriptPath ct
                    jobs[id] <- { Status = JobStatus.ofState JobState.Pending; StdoutPath = stdoutPath; StderrPath = stderrPath }
                    log().Information("{Provider}: submitted {JobName} as job {JobId} through {Channel}", system.Label, name, id, ch.Describe)
                    return id
                }) ct

        member _.StatusAsync(ids, ct) =
            locked (fun () ->
                task {
                    if not ids.IsEmpty then do! refresh ct
                    return
                        ids
                        |> List.map (fun id ->
                            match jobs.TryGetValue id with
                            | true, r -> r.Status
                            | _ -> { JobStatus.ofState JobState.Unknown with Message = Some(sprintf "job %s was not submitted by this provider" id) })
                }) ct

        member _.CancelAsync(ids, ct) =
            locked (fun () ->
                task {
                    if ids.IsEmpty then return []
                    else
                        let! ch, _ = opened ct
                        let! ok = system.Cancel ch ids ct
                        if ok then
                            for id in ids do
                                match jobs.TryGetValue id with
                                | true, r -> r.Status <- JobStatus.ofState system.StateAfterCancel
                                | _ -> ()
                        return ids |> List.map (fun _ -> ok)
                }) ct

    interface IDisposable with
        member _.Dispose() =
            channel |> Option.iter (fun c -> c.Dispose())
            channel <- None
            remoteDir <- None

/// Helpers for building `BatchSystem`s.
module internal BatchSystems =
    /// Runs a command; raises `SubmitException` unless it exits 0 and `parse` finds a job id.
    let submitWith (parse: string -> string option) (commandFor: string -> string) (timeout: TimeSpan) =
        fun (ch: IExecutionChannel) (jobName: string) (scriptPath: string) (ct: CancellationToken) ->
            task {
                let command = commandFor scriptPath
                let! r = ch.ExecuteAsync(command, timeout, ct)
                if r.ExitCode <> 0 then
                    return raise (SubmitException(jobName, sprintf "'%s' failed" command, Some r.ExitCode, r.Stdout, r.Stderr))
                else
                    match parse r.Stdout with
                    | Some id -> return id
                    | None -> return raise (SubmitException(jobName, sprintf "no job id in the output of '%s'" command, Some r.ExitCode, r.Stdout, r.Stderr))
            }

    /// Runs status commands batch by batch; None if any fails.
    let queryWith (commands: string list -> string list) (parse: string -> SchedulerReport list) (timeout: TimeSpan) =
        fun (ch: IExecutionChannel) (ids: string list) (ct: CancellationToken) ->
            task {
                let mutable failed = false
                let all = ResizeArray()
                for c in commands ids do
                    if not failed then
                        let! r = ch.ExecuteAsync(c, timeout, ct)
                        if r.ExitCode <> 0 then failed <- true else all.AddRange(parse r.Stdout)
                return if failed then None else Some(List.ofSeq all)
            }

    /// Runs a cancel command; true when it exits 0.
    let cancelWith (command: string list -> string) (timeout: TimeSpan) =
        fun (ch: IExecutionChannel) (ids: string list) (ct: CancellationToken) ->
            task {
                let! r = ch.ExecuteAsync(command ids, timeout, ct)
                return r.ExitCode = 0
            }

    /// Nothing to prepare.
    let noPrepare = fun (_: IExecutionChannel) (_: CancellationToken) -> Task.CompletedTask

    /// No second look at jobs that left the queue.
    let noResolve = fun (_: IExecutionChannel) (_: string list) (_: CancellationToken) -> Task.FromResult([]: SchedulerReport list)

    /// A batch system with the usual rest: the script named `<job>.submit`, no further files, nothing to prepare, jobs
    /// that left the queue taken as COMPLETED without a second look, and cancelled jobs CANCELLED. Systems that differ
    /// say so with `{ basic ... with ... }`.
    let basic label render submit query cancel : BatchSystem =
        { Label = label
          ScriptFile = fun name -> name + ".submit"
          Render = render
          ExtraFiles = fun _ -> []
          Prepare = noPrepare
          Submit = submit
          Query = query
          ResolveMissing = noResolve
          MissingState = Some JobState.Completed
          Cancel = cancel
          StateAfterCancel = JobState.Cancelled }

    /// Block settings from a provider's options (status polled every 60 s, Parsl's default).
    let settings init minB maxB nodes par cores mem worker launcher timeout : BlockSettings =
        { InitBlocks = init
          MinBlocks = minB
          MaxBlocks = maxB
          NodesPerBlock = nodes
          Parallelism = par
          CoresPerNode = cores
          MemPerNode = mem
          WorkerInit = worker
          Launcher = launcher
          CmdTimeout = timeout
          StatusPollingInterval = TimeSpan.FromSeconds 60.0 }
