namespace Parsl.Providers

open System
open Parsl

/// Options of the HTCondor provider (Parsl's `CondorProvider`). Start from `Condor.defaults`.
type CondorOptions =
    { /// Default 1 (`machine_count`).
      NodesPerBlock: int
      /// `RequestCpus`, exported as `PARSL_CORES`.
      CoresPerSlot: int option
      /// `RequestMemory` (GB, sent in MB), exported as `PARSL_MEMORY_GB`.
      MemPerSlot: float option
      /// Default 1.
      InitBlocks: int
      /// Default 0.
      MinBlocks: int
      /// Default 1.
      MaxBlocks: int
      /// Default 1.
      Parallelism: float
      /// Environment variables of the job.
      Environment: Map<string, string>
      /// `+projectname`, if not empty.
      Project: string
      /// Extra submit-description lines.
      SchedulerOptions: string
      /// Files sent with the job besides its script.
      TransferInputFiles: string list
      /// Kept for parity with Parsl; HTCondor has no walltime in the submit description. Default `00:10:00`.
      Walltime: string
      /// Shell lines run before the launcher.
      WorkerInit: string
      /// How the command is started.
      Launcher: ILauncher
      /// `requirements`, if not empty.
      Requirements: string
      /// Default 60 s.
      CmdTimeout: TimeSpan
      /// Jobs per condor_q / condor_rm call. Default 100.
      CmdChunkSize: int
      /// Where condor_submit runs. Default `Local`.
      Channel: Channel }

/// HTCondor's submit description, job script, commands and output parsing: pure functions.
[<RequireQualifiedAccess>]
module Condor =
    /// Parsl's defaults.
    let defaults =
        { NodesPerBlock = 1
          CoresPerSlot = None
          MemPerSlot = None
          InitBlocks = 1
          MinBlocks = 0
          MaxBlocks = 1
          Parallelism = 1.0
          Environment = Map.empty
          Project = ""
          SchedulerOptions = ""
          TransferInputFiles = []
          Walltime = "00:10:00"
          WorkerInit = ""
          Launcher = BasicLaunchers.singleNode
          Requirements = ""
          CmdTimeout = TimeSpan.FromSeconds 60.0
          CmdChunkSize = 100
          Channel = Local }

    /// `JobStatus` numbers (Parsl's table); 7 (suspended) is HELD here.
    let state (s: string) =
        match s with
        | "1" -> JobState.Pending
        | "2" -> JobState.Running
        | "3" -> JobState.Cancelled
        | "4" -> JobState.Completed
        | "5" | "6" -> JobState.Failed
        | "7" -> JobState.Held
        | _ -> JobState.Unknown

    /// Checks the options.
    let validate (o: CondorOptions) =
        let owner = "CondorProvider"
        BatchJobs.validateBlocks owner o.InitBlocks o.MinBlocks o.MaxBlocks o.NodesPerBlock o.Parallelism
        @ BatchJobs.validateWalltime owner o.Walltime
        @ BatchJobs.validateTimeout owner o.CmdTimeout
        @ [ match o.CoresPerSlot with
            | Some c when c < 1 -> ConfigurationError(owner + ".CoresPerSlot", sprintf "is %d; use at least 1 or leave it unset" c)
            | _ -> ()
            match o.MemPerSlot with
            | Some m when not (m > 0.0) -> ConfigurationError(owner + ".MemPerSlot", sprintf "is %g GB; use a positive size or leave it unset" m)
            | _ -> ()
            if o.CmdChunkSize < 1 then ConfigurationError(owner + ".CmdChunkSize", sprintf "is %d; use at least 1 (default 100)" o.CmdChunkSize)
            for k in o.Environment.Keys do
                if String.IsNullOrWhiteSpace k || k |> Seq.exists (fun c -> not (Char.IsLetterOrDigit c || c = '_')) then
                    ConfigurationError(owner + ".Environment", sprintf "'%s' is not a variable name; use letters, digits and _" k)
            if isNull (box o.Launcher) then ConfigurationError(owner + ".Launcher", "is null") ]
        @ (match o.Channel with Ssh s -> SshOptions.validate owner s | Local -> [])

    /// The job script's file name for a job.
    let jobScriptName (jobName: string) = jobName + ".script"

    /// A value in HTCondor's new environment syntax: single quotes, with quotes doubled inside.
    let quoteEnv (v: string) = "'" + v.Replace("'", "''").Replace("\"", "\"\"") + "'"

    /// The script the job runs: worker_init, resource exports, the launcher's output.
    let jobScript (o: CondorOptions) (r: ScriptRequest) =
        [ yield! (match BatchJobs.asLines o.WorkerInit with "" -> [] | s -> [ s.TrimEnd('\n') ])
          match o.MemPerSlot with Some m -> yield sprintf "export PARSL_MEMORY_GB=%g" m | None -> ()
          match o.CoresPerSlot with Some c -> yield sprintf "export PARSL_CORES=%d" c | None -> ()
          yield sprintf "export PARSL_SCRIPT_DIR=%s" (BatchJobs.shellQuote r.ScriptDir)
          yield ""
          yield r.LaunchScript.TrimEnd('\n') ]
        |> fun lines -> String.Join("\n", lines) + "\n"

    /// The submit description for one block.
    let render (o: CondorOptions) (r: ScriptRequest) =
        let script = r.ScriptDir.TrimEnd('/') + "/" + jobScriptName r.JobName
        let env =
            o.Environment |> Map.add "JOBNAME" r.JobName |> Map.toList
            |> List.map (fun (k, v) -> sprintf "%s=%s" k (quoteEnv v)) |> String.concat " "
        [ "universe                = vanilla"
          "should_transfer_files   = YES"
          "when_to_transfer_output = ON_EXIT_OR_EVICT"
          "transfer_executable     = false"
          sprintf "transfer_input_files    = %s" (String.Join(",", script :: o.TransferInputFiles))
          sprintf "machine_count           = %d" o.NodesPerBlock
          sprintf "output                  = %s" r.StdoutPath
          sprintf "error                   = %s" r.StderrPath
          sprintf "log                     = %s/%s.log" (r.ScriptDir.TrimEnd('/')) r.JobName
          "executable              = /bin/bash"
          sprintf "arguments               = %s" (jobScriptName r.JobName)
          "leave_in_queue          = TRUE"
          sprintf "environment             = \"%s\"" env ]
        @ (if o.Requirements <> "" then [ sprintf "requirements            = %s" o.Requirements ] else [])
        @ (if o.Project <> "" then [ sprintf "+projectname            = %s" o.Project ] else [])
        @ (o.MemPerSlot |> Option.map (fun m -> sprintf "RequestMemory = %g" (m * 1024.0)) |> Option.toList)
        @ (o.CoresPerSlot |> Option.map (sprintf "RequestCpus = %d") |> Option.toList)
        @ (match BatchJobs.asLines o.SchedulerOptions with "" -> [] | s -> [ s.TrimEnd('\n') ])
        @ [ ""; "queue" ]
        |> fun lines -> String.Join("\n", lines) + "\n"

    /// Submits a description.
    let submitCommand (path: string) = sprintf "condor_submit %s" (BatchJobs.shellQuote path)

    /// The first job id of `N job(s) submitted to cluster C.` (`C.0`).
    let parseSubmit (stdout: string) =
        stdout.Split('\n')
        |> Array.tryPick (fun line ->
            let m = Text.RegularExpressions.Regex.Match(line.Trim(), @"^\d+ job\(s\) submitted to cluster (\d+)\.")
            if m.Success then Some(m.Groups[1].Value + ".0") else None)

    /// Status of a chunk of jobs, with the exit code of finished ones.
    let statusCommand (ids: string list) = sprintf "condor_q %s -af:jr JobStatus ExitCode" (String.Join(" ", ids |> List.map BatchJobs.shellQuote))

    /// Parses `condor_q -af:jr JobStatus ExitCode` (`id status exitcode|undefined`). A completed job with a
    /// non-zero exit code is FAILED.
    let parseStatus (stdout: string) =
        stdout.Split('\n')
        |> Array.choose (fun line ->
            match line.Split([| ' '; '\t' |], StringSplitOptions.RemoveEmptyEntries) with
            | p when p.Length >= 2 ->
                let code = if p.Length >= 3 then (match Int32.TryParse p[2] with | true, c -> Some c | _ -> None) else None
                let st =
                    match state p[1], code with
                    | JobState.Completed, Some c when c <> 0 -> JobState.Failed
                    | s, _ -> s
                Some { JobId = p[0]; State = st; Native = p[1]; ExitCode = code }
            | _ -> None)
        |> List.ofArray

    /// Removes jobs, forcing those stuck in X state (as Parsl).
    let cancelCommand (ids: string list) =
        let l = String.Join(" ", ids |> List.map BatchJobs.shellQuote)
        sprintf "condor_rm %s; condor_rm -forcex %s" l l
