namespace Parsl.Providers

open System
open System.Text.RegularExpressions
open Parsl

/// Options of the LSF provider (Parsl's `LSFProvider`). Start from `Lsf.defaults`.
type LsfOptions =
    { /// Default 1. With `RequestByNodes = false` it is computed from the cores.
      NodesPerBlock: int
      /// Cores per block (`#BSUB -n`), when requesting by cores.
      CoresPerBlock: int option
      /// Cores per node (`span[ptile=...]`), when requesting by cores.
      CoresPerNode: int option
      /// Default 1.
      InitBlocks: int
      /// Default 0.
      MinBlocks: int
      /// Default 1.
      MaxBlocks: int
      /// Default 1.
      Parallelism: float
      /// Default `00:10:00` (sent as minutes).
      Walltime: string
      /// Extra `#BSUB` lines.
      SchedulerOptions: string
      /// Shell lines run before the launcher.
      WorkerInit: string
      /// `#BSUB -P`, if any.
      Project: string option
      /// `#BSUB -q`, if any.
      Queue: string option
      /// Default 120 s.
      CmdTimeout: TimeSpan
      /// `bsub < script` instead of `bsub script` (sites whose bsub reads directives only from stdin). Default false.
      BsubRedirection: bool
      /// `#BSUB -nnodes` (true, default) or cores with `span[ptile]` (false).
      RequestByNodes: bool
      /// How the command is started on the block's nodes.
      Launcher: ILauncher
      /// Where bsub runs. Default `Local`.
      Channel: Channel }

/// LSF's batch script, commands and output parsing: pure functions.
[<RequireQualifiedAccess>]
module Lsf =
    /// Parsl's defaults.
    let defaults =
        { NodesPerBlock = 1
          CoresPerBlock = None
          CoresPerNode = None
          InitBlocks = 1
          MinBlocks = 0
          MaxBlocks = 1
          Parallelism = 1.0
          Walltime = "00:10:00"
          SchedulerOptions = ""
          WorkerInit = ""
          Project = None
          Queue = None
          CmdTimeout = TimeSpan.FromSeconds 120.0
          BsubRedirection = false
          RequestByNodes = true
          Launcher = BasicLaunchers.singleNode
          Channel = Local }

    /// bjobs states (Parsl's table; suspended jobs are HELD here, Parsl said CANCELLED though they may resume).
    let state (s: string) =
        match s with
        | "PEND" | "WAIT" -> JobState.Pending
        | "RUN" | "PROV" -> JobState.Running
        | "DONE" -> JobState.Completed
        | "EXIT" -> JobState.Failed
        | "PSUSP" | "USUSP" | "SSUSP" -> JobState.Held
        | _ -> JobState.Unknown

    /// Nodes per block: as given, or `ceil(cores per block / cores per node)` when requesting by cores.
    let nodesPerBlock (o: LsfOptions) =
        match o.RequestByNodes, o.CoresPerBlock, o.CoresPerNode with
        | false, Some b, Some n when n > 0 -> (b + n - 1) / n
        | _ -> o.NodesPerBlock

    /// Checks the options.
    let validate (o: LsfOptions) =
        let owner = "LSFProvider"
        BatchJobs.validateBlocks owner o.InitBlocks o.MinBlocks o.MaxBlocks (nodesPerBlock o) o.Parallelism
        @ BatchJobs.validateWalltime owner o.Walltime
        @ BatchJobs.validateTimeout owner o.CmdTimeout
        @ [ if not o.RequestByNodes then
                match o.CoresPerBlock with
                | Some c when c >= 1 -> ()
                | _ -> ConfigurationError(owner + ".CoresPerBlock", "is needed (at least 1) when RequestByNodes is false")
                match o.CoresPerNode with
                | Some c when c >= 1 -> ()
                | _ -> ConfigurationError(owner + ".CoresPerNode", "is needed (at least 1) when RequestByNodes is false")
            if isNull (box o.Launcher) then ConfigurationError(owner + ".Launcher", "is null") ]
        @ (match o.Channel with Ssh s -> SshOptions.validate owner s | Local -> [])

    /// The bsub script for one block.
    let render (o: LsfOptions) (r: ScriptRequest) =
        [ "#!/bin/bash"
          ""
          sprintf "#BSUB -W %d" (BatchJobs.walltimeMinutes o.Walltime)
          sprintf "#BSUB -J %s" r.JobName
          sprintf "#BSUB -o %s" r.StdoutPath
          sprintf "#BSUB -e %s" r.StderrPath ]
        @ (match BatchJobs.asLines o.SchedulerOptions with "" -> [] | s -> [ s.TrimEnd('\n') ])
        @ (o.Project |> Option.map (sprintf "#BSUB -P %s") |> Option.toList)
        @ (o.Queue |> Option.map (sprintf "#BSUB -q %s") |> Option.toList)
        @ (if o.RequestByNodes then [ sprintf "#BSUB -nnodes %d" o.NodesPerBlock ]
           else
               [ sprintf "#BSUB -n %d" (defaultArg o.CoresPerBlock 1)
                 sprintf "#BSUB -R \"span[ptile=%d]\"" (defaultArg o.CoresPerNode 1) ])
        @ [ "" ]
        @ Pbs.tail r o.WorkerInit
        |> fun lines -> String.Join("\n", lines) + "\n"

    /// Submits a script.
    let submitCommand (o: LsfOptions) (path: string) =
        if o.BsubRedirection then sprintf "bsub < %s" (BatchJobs.shellQuote path) else sprintf "bsub %s" (BatchJobs.shellQuote path)

    /// The id in `Job <1234> is submitted to queue <normal>.`
    let parseSubmit (stdout: string) =
        let m = Regex.Match(stdout, @"(?im)^Job <(\d+)> is submitted to")
        if m.Success then Some m.Groups[1].Value else None

    /// Status of the jobs, with exit codes.
    let statusCommand (ids: string list) = sprintf "bjobs -noheader -o 'jobid stat exit_code' %s" (String.Join(" ", ids |> List.map BatchJobs.shellQuote))

    /// Parses `bjobs -noheader -o 'jobid stat exit_code'` (exit code `-` while none).
    let parseStatus (stdout: string) =
        stdout.Split('\n')
        |> Array.choose (fun line ->
            match line.Split([| ' '; '\t' |], StringSplitOptions.RemoveEmptyEntries) with
            | [| id; st |] -> Some { JobId = id; State = state st; Native = st; ExitCode = None }
            | [| id; st; code |] ->
                Some { JobId = id; State = state st; Native = st; ExitCode = (match Int32.TryParse code with | true, c -> Some c | _ -> None) }
            | _ -> None)
        |> List.ofArray

    /// Kills jobs.
    let cancelCommand (ids: string list) = sprintf "bkill %s" (String.Join(" ", ids |> List.map BatchJobs.shellQuote))
