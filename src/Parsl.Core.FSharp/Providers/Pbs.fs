namespace Parsl.Providers

open System
open System.Text.Json
open Parsl

/// Options of the PBS Pro provider (Parsl's `PBSProProvider`). Start from `PbsPro.defaults`.
type PbsProOptions =
    { /// `qsub -A`, if any.
      Account: string option
      /// `qsub -q`, if any.
      Queue: string option
      /// Extra `#PBS` lines.
      SchedulerOptions: string
      /// Appended to the `select` statement (as `ngpus=4`; a leading colon is added when missing).
      SelectOptions: string
      /// Shell lines run before the launcher.
      WorkerInit: string
      /// Default 1.
      NodesPerBlock: int
      /// `ncpus` per node. Default 1.
      CpusPerNode: int
      /// Default 1.
      InitBlocks: int
      /// Default 0.
      MinBlocks: int
      /// Default 1.
      MaxBlocks: int
      /// Default 1.
      Parallelism: float
      /// How the command is started on the block's nodes.
      Launcher: ILauncher
      /// Default `00:20:00`.
      Walltime: string
      /// Default 120 s.
      CmdTimeout: TimeSpan
      /// Where qsub runs. Default `Local`.
      Channel: Channel }

/// Options of the Torque provider (Parsl's `TorqueProvider`). Start from `Torque.defaults`.
type TorqueOptions =
    { /// `qsub -A`, if any.
      Account: string option
      /// `qsub -q`, if any.
      Queue: string option
      /// Extra `#PBS` lines (placed first, as Parsl).
      SchedulerOptions: string
      /// Shell lines run before the launcher.
      WorkerInit: string
      /// Default 1.
      NodesPerBlock: int
      /// Default 1.
      InitBlocks: int
      /// Default 0.
      MinBlocks: int
      /// Default 1.
      MaxBlocks: int
      /// Default 1.
      Parallelism: float
      /// Default `AprunLauncher()`, as Parsl.
      Launcher: ILauncher
      /// Default `00:20:00`.
      Walltime: string
      /// Default 120 s.
      CmdTimeout: TimeSpan
      /// Where qsub runs. Default `Local`.
      Channel: Channel }

/// What PBS-family schedulers share: qstat's state letters, qsub's output, qdel.
[<RequireQualifiedAccess>]
module Pbs =
    /// qstat's one-letter states (Parsl's torque `translate_table`).
    let state (s: string) =
        match s with
        | "B" | "R" -> JobState.Running
        | "C" | "E" | "F" | "X" -> JobState.Completed
        | "H" | "S" | "U" -> JobState.Held
        | "Q" | "W" | "T" -> JobState.Pending
        | _ -> JobState.Unknown

    /// The job id qsub printed (its last non-empty line, as `1234.server`).
    let parseSubmit (stdout: string) =
        stdout.Split('\n') |> Array.map (fun l -> l.Trim()) |> Array.filter (fun l -> l <> "") |> Array.tryLast

    /// qsub with the queue and account flags.
    let submitCommand (queue: string option) (account: string option) (scriptPath: string) =
        [ yield "qsub"
          match queue with Some q -> yield! [ "-q"; BatchJobs.shellQuote q ] | None -> ()
          match account with Some a -> yield! [ "-A"; BatchJobs.shellQuote a ] | None -> ()
          yield BatchJobs.shellQuote scriptPath ]
        |> String.concat " "

    /// Deletes jobs.
    let cancelCommand (ids: string list) = sprintf "qdel %s" (String.Join(" ", ids |> List.map BatchJobs.shellQuote))

    /// qstat may print a shortened id (`1234.serv`); map it back to the id qsub gave (Parsl's prefix match).
    let coerce (known: string list) (shown: string) =
        known |> List.tryFind (fun k -> k = shown) |> Option.orElse (known |> List.tryFind (fun k -> k.StartsWith shown)) |> Option.defaultValue shown

    let internal validateCommon owner initBlocks minBlocks maxBlocks nodes parallelism walltime timeout (launcher: ILauncher) channel =
        BatchJobs.validateBlocks owner initBlocks minBlocks maxBlocks nodes parallelism
        @ BatchJobs.validateWalltime owner walltime
        @ BatchJobs.validateTimeout owner timeout
        @ [ if isNull (box launcher) then ConfigurationError(owner + ".Launcher", "is null") ]
        @ (match channel with Ssh s -> SshOptions.validate owner s | Local -> [])

    let internal tail (r: ScriptRequest) worker =
        (match BatchJobs.asLines worker with "" -> [] | s -> [ s.TrimEnd('\n') ])
        @ [ sprintf "export JOBNAME=\"%s\"" r.JobName
            sprintf "export PARSL_SCRIPT_DIR=%s" (BatchJobs.shellQuote r.ScriptDir)
            ""
            r.LaunchScript.TrimEnd('\n') ]

/// PBS Pro: `select` resource requests and `qstat -x -f -F json`.
[<RequireQualifiedAccess>]
module PbsPro =
    /// Parsl's defaults.
    let defaults =
        { Account = None
          Queue = None
          SchedulerOptions = ""
          SelectOptions = ""
          WorkerInit = ""
          NodesPerBlock = 1
          CpusPerNode = 1
          InitBlocks = 1
          MinBlocks = 0
          MaxBlocks = 1
          Parallelism = 1.0
          Launcher = BasicLaunchers.singleNode
          Walltime = "00:20:00"
          CmdTimeout = TimeSpan.FromSeconds 120.0
          Channel = Local }

    /// Checks the options.
    let validate (o: PbsProOptions) =
        Pbs.validateCommon "PBSProProvider" o.InitBlocks o.MinBlocks o.MaxBlocks o.NodesPerBlock o.Parallelism o.Walltime o.CmdTimeout o.Launcher o.Channel
        @ [ if o.CpusPerNode < 1 then ConfigurationError("PBSProProvider.CpusPerNode", sprintf "is %d; use at least 1" o.CpusPerNode) ]

    /// The qsub script for one block.
    let render (o: PbsProOptions) (r: ScriptRequest) =
        let select =
            match o.SelectOptions with
            | "" -> ""
            | s when s.StartsWith ":" -> s
            | s -> ":" + s
        [ "#!/bin/bash"
          ""
          "#PBS -S /bin/bash"
          sprintf "#PBS -N %s" r.JobName
          "#PBS -m n"
          sprintf "#PBS -l walltime=%s" o.Walltime
          sprintf "#PBS -l select=%d:ncpus=%d%s" o.NodesPerBlock o.CpusPerNode select
          sprintf "#PBS -o %s" r.StdoutPath
          sprintf "#PBS -e %s" r.StderrPath ]
        @ (match BatchJobs.asLines o.SchedulerOptions with "" -> [] | s -> [ s.TrimEnd('\n') ])
        @ [ "" ]
        @ Pbs.tail r o.WorkerInit
        |> fun lines -> String.Join("\n", lines) + "\n"

    /// Full status of the jobs, finished ones included, as JSON.
    let statusCommand (ids: string list) = sprintf "qstat -x -f -F json %s" (String.Join(" ", ids |> List.map BatchJobs.shellQuote))

    /// Parses `qstat -x -f -F json`. A finished job (`F`) with a non-zero `Exit_status` is FAILED with that code
    /// (Parsl called every finished job COMPLETED).
    let parseStatus (known: string list) (stdout: string) =
        use doc = JsonDocument.Parse(if String.IsNullOrWhiteSpace stdout then "{}" else stdout)
        match doc.RootElement.TryGetProperty "Jobs" with
        | true, jobs when jobs.ValueKind = JsonValueKind.Object ->
            [ for j in jobs.EnumerateObject() do
                  let st =
                      match j.Value.TryGetProperty "job_state" with
                      | true, v -> v.GetString()
                      | _ -> ""
                  let exit =
                      match j.Value.TryGetProperty "Exit_status" with
                      | true, v when v.ValueKind = JsonValueKind.Number -> Some(v.GetInt32())
                      | _ -> None
                  let state =
                      match Pbs.state st, exit with
                      | JobState.Completed, Some c when c <> 0 -> JobState.Failed
                      | s, _ -> s
                  { JobId = Pbs.coerce known j.Name; State = state; Native = st; ExitCode = exit } ]
        | _ -> []

/// Torque: `nodes=N:ppn=M` requests and plain `qstat`.
[<RequireQualifiedAccess>]
module Torque =
    /// Parsl's defaults (the launcher is Aprun, as Parsl's).
    let defaults =
        { Account = None
          Queue = None
          SchedulerOptions = ""
          WorkerInit = ""
          NodesPerBlock = 1
          InitBlocks = 1
          MinBlocks = 0
          MaxBlocks = 1
          Parallelism = 1.0
          Launcher = AprunLauncher()
          Walltime = "00:20:00"
          CmdTimeout = TimeSpan.FromSeconds 120.0
          Channel = Local }

    /// Checks the options.
    let validate (o: TorqueOptions) =
        Pbs.validateCommon "TorqueProvider" o.InitBlocks o.MinBlocks o.MaxBlocks o.NodesPerBlock o.Parallelism o.Walltime o.CmdTimeout o.Launcher o.Channel

    /// The qsub script for one block.
    let render (o: TorqueOptions) (r: ScriptRequest) =
        [ "#!/bin/bash"; "" ]
        @ (match BatchJobs.asLines o.SchedulerOptions with "" -> [] | s -> [ s.TrimEnd('\n') ])
        @ [ "#PBS -S /bin/bash"
            sprintf "#PBS -N %s" r.JobName
            "#PBS -m n"
            sprintf "#PBS -l walltime=%s" o.Walltime
            sprintf "#PBS -l nodes=%d:ppn=%d" o.NodesPerBlock r.TasksPerNode
            sprintf "#PBS -o %s" r.StdoutPath
            sprintf "#PBS -e %s" r.StderrPath
            "" ]
        @ Pbs.tail r o.WorkerInit
        |> fun lines -> String.Join("\n", lines) + "\n"

    /// Status of the jobs.
    let statusCommand (ids: string list) = sprintf "qstat %s" (String.Join(" ", ids |> List.map BatchJobs.shellQuote))

    /// Parses qstat's table (`Job ID  Name  User  Time Use  S  Queue`).
    let parseStatus (known: string list) (stdout: string) =
        stdout.Split('\n')
        |> Array.choose (fun line ->
            let p = line.Split([| ' '; '\t' |], StringSplitOptions.RemoveEmptyEntries)
            if p.Length < 5 || p[0].ToUpperInvariant().StartsWith "JOB" || p[0].StartsWith "---" then None
            else Some { JobId = Pbs.coerce known p[0]; State = Pbs.state p[4]; Native = p[4]; ExitCode = None })
        |> List.ofArray
