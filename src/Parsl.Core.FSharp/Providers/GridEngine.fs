namespace Parsl.Providers

open System
open System.Text.RegularExpressions
open Parsl

/// Options of the Grid Engine provider (Parsl's `GridEngineProvider`). Start from `GridEngine.defaults`.
type GridEngineOptions =
    { /// Default 1.
      NodesPerBlock: int
      /// Default 1.
      InitBlocks: int
      /// Default 0.
      MinBlocks: int
      /// Default 1.
      MaxBlocks: int
      /// Default 1.
      Parallelism: float
      /// `h_rt`, `HH:MM:SS`. Default `00:10:00`.
      Walltime: string
      /// Extra `#$` lines.
      SchedulerOptions: string
      /// Shell lines run before the launcher.
      WorkerInit: string
      /// `qsub -q`, if any.
      Queue: string option
      /// How the command is started on the block's nodes.
      Launcher: ILauncher
      /// Limit for each scheduler command. Default 60 s.
      CmdTimeout: TimeSpan
      /// Where qsub runs. Default `Local`.
      Channel: Channel }

/// Grid Engine's batch script, commands and output parsing: pure functions.
[<RequireQualifiedAccess>]
module GridEngine =
    /// Parsl's defaults.
    let defaults =
        { NodesPerBlock = 1
          InitBlocks = 1
          MinBlocks = 0
          MaxBlocks = 1
          Parallelism = 1.0
          Walltime = "00:10:00"
          SchedulerOptions = ""
          WorkerInit = ""
          Queue = None
          Launcher = BasicLaunchers.singleNode
          CmdTimeout = TimeSpan.FromSeconds 60.0
          Channel = Local }

    /// qstat's state letters. Parsl maps `t` (being transferred to the host, a normal step of starting) and `s`
    /// (suspended) to FAILED, which makes the error handler count healthy blocks as failures; here they are
    /// RUNNING and HELD. Error states (`E...`) are FAILED, deleted ones (`d...`) COMPLETED, as Parsl.
    let state (s: string) =
        let s = s.ToLowerInvariant()
        if s.StartsWith "e" then JobState.Failed
        elif s.StartsWith "d" then JobState.Completed
        else
            match s with
            | "qw" | "hqw" | "hrwq" | "rq" -> JobState.Pending
            | "r" | "t" | "rr" | "rt" -> JobState.Running
            | "s" | "ts" | "st" | "ss" | "rs" -> JobState.Held
            | _ -> JobState.Unknown

    /// Checks the options.
    let validate (o: GridEngineOptions) =
        let owner = "GridEngineProvider"
        BatchJobs.validateBlocks owner o.InitBlocks o.MinBlocks o.MaxBlocks o.NodesPerBlock o.Parallelism
        @ BatchJobs.validateWalltime owner o.Walltime
        @ BatchJobs.validateTimeout owner o.CmdTimeout
        @ [ match o.Queue with
            | Some q when String.IsNullOrWhiteSpace q || q.Contains ' ' -> ConfigurationError(owner + ".Queue", "is empty or has spaces; name one queue, as all.q")
            | _ -> ()
            if isNull (box o.Launcher) then ConfigurationError(owner + ".Launcher", "is null") ]
        @ (match o.Channel with Ssh s -> SshOptions.validate owner s | Local -> [])

    /// The qsub script for one block.
    let render (o: GridEngineOptions) (r: ScriptRequest) =
        [ "#!/bin/bash"
          "#$ -S /bin/bash"
          sprintf "#$ -N %s" r.JobName
          sprintf "#$ -o %s" r.StdoutPath
          sprintf "#$ -e %s" r.StderrPath
          "#$ -cwd"
          sprintf "#$ -l h_rt=%s" o.Walltime ]
        @ (match BatchJobs.asLines o.SchedulerOptions with "" -> [] | s -> [ s.TrimEnd('\n') ])
        @ [ "" ]
        @ (match BatchJobs.asLines o.WorkerInit with "" -> [] | s -> [ s.TrimEnd('\n') ])
        @ [ sprintf "export JOBNAME=\"%s\"" r.JobName
            sprintf "export PARSL_SCRIPT_DIR=%s" (BatchJobs.shellQuote r.ScriptDir)
            ""
            r.LaunchScript.TrimEnd('\n') ]
        |> fun lines -> String.Join("\n", lines) + "\n"

    /// Submits a script; `-terse` prints only the job id.
    let submitCommand (o: GridEngineOptions) (scriptPath: string) =
        match o.Queue with
        | Some q -> sprintf "qsub -q %s -terse %s" (BatchJobs.shellQuote q) (BatchJobs.shellQuote scriptPath)
        | None -> sprintf "qsub -terse %s" (BatchJobs.shellQuote scriptPath)

    /// The job id `qsub -terse` printed (array jobs print `id.1-n:1`; the id is before the dot).
    let parseSubmit (stdout: string) =
        stdout.Split('\n')
        |> Array.map (fun l -> l.Trim())
        |> Array.tryFind (fun l -> l <> "")
        |> Option.map (fun l -> l.Split('.').[0])
        |> Option.filter (fun l -> Regex.IsMatch(l, @"^\d+$"))

    /// Lists the user's jobs.
    let statusCommand = "qstat"

    /// Parses `qstat`: a header, a rule, then `job-ID prior name user state ...` rows.
    let parseStatus (stdout: string) =
        stdout.Split('\n')
        |> Array.choose (fun line ->
            let parts = line.Split([| ' '; '\t' |], StringSplitOptions.RemoveEmptyEntries)
            if parts.Length >= 5 && not (parts[0].ToLowerInvariant().StartsWith "job-id") && not (parts[0].StartsWith "---") then
                Some { JobId = parts[0]; State = state parts[4]; Native = parts[4]; ExitCode = None }
            else None)
        |> List.ofArray

    /// Asks accounting about a finished job (Parsl assumed every job qstat no longer lists COMPLETED).
    let accountingCommand (id: string) = sprintf "qacct -j %s" (BatchJobs.shellQuote id)

    /// Parses `qacct -j`: exit status 0 is COMPLETED, anything else FAILED with that code.
    let parseAccounting (id: string) (stdout: string) =
        let m = Regex.Match(stdout, @"(?m)^exit_status\s+(\d+)")
        if m.Success then
            let code = int m.Groups[1].Value
            Some { JobId = id; State = (if code = 0 then JobState.Completed else JobState.Failed); Native = sprintf "exit_status %d" code; ExitCode = Some code }
        else None

    /// Deletes jobs.
    let cancelCommand (ids: string list) = sprintf "qdel %s" (String.Join(" ", ids |> List.map BatchJobs.shellQuote))
