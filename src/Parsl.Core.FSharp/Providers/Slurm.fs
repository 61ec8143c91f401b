namespace Parsl.Providers

open System
open System.Text.RegularExpressions
open Parsl

/// Options of the Slurm provider (Parsl's `SlurmProvider`). Start from `SlurmOptions.defaults`.
type SlurmOptions =
    { /// `--partition`, if any.
      Partition: string option
      /// `--account`, if any.
      Account: string option
      /// `--qos`, if any.
      Qos: string option
      /// `--constraint`, if any.
      Constraint: string option
      /// `--clusters` (federations), if any; also passed to squeue/sacct/scancel.
      Clusters: string option
      /// Nodes per block. Default 1.
      NodesPerBlock: int
      /// Cores per node: requested as `--cpus-per-task` = cores / tasks per node, and exported as `PARSL_CORES`.
      CoresPerNode: int option
      /// Memory per node in GB: requested as `--mem=<n>g` and exported as `PARSL_MEMORY_GB`.
      MemPerNode: int option
      /// `--gpus-per-node`, if any.
      GpusPerNode: int option
      /// `--gres`, if any.
      Gres: string option
      /// Default 1.
      InitBlocks: int
      /// Default 0.
      MinBlocks: int
      /// Default 1.
      MaxBlocks: int
      /// Default 1.
      Parallelism: float
      /// `HH:MM:SS`. Default `00:10:00`.
      Walltime: string
      /// Extra `#SBATCH` lines, placed before the provider's own.
      SchedulerOptions: string
      /// Reads the job id from sbatch's output; needs a group named `id`. Default `Submitted batch job (?<id>\S*)`
      /// (Python's `(?P<id>...)` is accepted too).
      RegexJobId: string
      /// Shell lines run before the launcher (`module load ...`, activating an environment).
      WorkerInit: string
      /// Limit for each scheduler command. Default 10 s.
      CmdTimeout: TimeSpan
      /// Jobs per squeue/sacct call. Default 50.
      StatusBatchSize: int
      /// How often the executor asks Slurm for its blocks' states (Parsl's `status_polling_interval`).
      /// Default 60 s.
      StatusPollingInterval: TimeSpan
      /// `--exclusive`. Default true.
      Exclusive: bool
      /// How the command is started on the block's nodes.
      Launcher: ILauncher
      /// Where sbatch runs. Default `Local`.
      Channel: Channel }

/// Where Slurm says a job is: `sacct` when accounting is on, else `squeue` (and `scontrol` for jobs that left
/// the queue, which Parsl lacks: it assumed such jobs COMPLETED and lost failures).
type SlurmStatusSource =
    /// `sacct -X`.
    | Sacct
    /// `squeue`.
    | Squeue

/// Slurm's batch script, commands and output parsing: pure functions.
[<RequireQualifiedAccess>]
module Slurm =
    /// Parsl's defaults (launcher: the simple launcher until the executor supplies its own default).
    let defaults =
        { Partition = None
          Account = None
          Qos = None
          Constraint = None
          Clusters = None
          NodesPerBlock = 1
          CoresPerNode = None
          MemPerNode = None
          GpusPerNode = None
          Gres = None
          InitBlocks = 1
          MinBlocks = 0
          MaxBlocks = 1
          Parallelism = 1.0
          Walltime = "00:10:00"
          SchedulerOptions = ""
          RegexJobId = @"Submitted batch job (?<id>\S*)"
          WorkerInit = ""
          CmdTimeout = TimeSpan.FromSeconds 10.0
          StatusBatchSize = 50
          StatusPollingInterval = TimeSpan.FromSeconds 60.0
          Exclusive = true
          Launcher = BasicLaunchers.singleNode
          Channel = Local }

    /// sacct's long state names (Parsl's `sacct_translate_table`, plus the transient COMPLETING/CONFIGURING).
    let sacctState (s: string) =
        match s.TrimEnd('+') with
        | "PENDING" | "REQUEUED" | "CONFIGURING" | "REQUEUE_HOLD" | "REQUEUE_FED" -> JobState.Pending
        | "RUNNING" | "COMPLETING" | "STAGE_OUT" -> JobState.Running
        | "CANCELLED" -> JobState.Cancelled
        | "COMPLETED" -> JobState.Completed
        | "FAILED" | "NODE_FAIL" | "BOOT_FAIL" | "REVOKED" | "OUT_OF_MEMORY" -> JobState.Failed
        | "TIMEOUT" | "DEADLINE" | "PREEMPTED" -> JobState.Timeout
        | "SUSPENDED" | "STOPPED" | "RESV_DEL_HOLD" -> JobState.Held
        | _ -> JobState.Unknown

    /// squeue's short state codes (Parsl's `squeue_translate_table`).
    let squeueState (s: string) =
        match s with
        | "PD" | "CF" | "RQ" -> JobState.Pending
        | "R" | "CG" | "SO" -> JobState.Running
        | "CA" -> JobState.Cancelled
        | "CD" -> JobState.Completed
        | "F" | "NF" | "RV" | "SE" | "OOM" | "BF" -> JobState.Failed
        | "TO" | "DL" | "PR" -> JobState.Timeout
        | "S" | "ST" -> JobState.Held
        | _ -> JobState.Unknown

    let private pythonGroup = Regex(@"\(\?P<", RegexOptions.Compiled)

    /// The job-id regex in .NET syntax.
    let jobIdRegex (pattern: string) = Regex(pythonGroup.Replace(pattern, "(?<"))

    /// Checks the options; each error names its field and the fix.
    let validate (o: SlurmOptions) =
        let owner = "SlurmProvider"
        BatchJobs.validateBlocks owner o.InitBlocks o.MinBlocks o.MaxBlocks o.NodesPerBlock o.Parallelism
        @ BatchJobs.validateWalltime owner o.Walltime
        @ BatchJobs.validateTimeout owner o.CmdTimeout
        @ [ match o.CoresPerNode with
            | Some c when c < 1 -> ConfigurationError(owner + ".CoresPerNode", sprintf "is %d; use at least 1 or leave it unset" c)
            | _ -> ()
            match o.MemPerNode with
            | Some m when m < 1 -> ConfigurationError(owner + ".MemPerNode", sprintf "is %d GB; use at least 1 or leave it unset" m)
            | _ -> ()
            match o.GpusPerNode with
            | Some g when g < 0 -> ConfigurationError(owner + ".GpusPerNode", sprintf "is %d; use 0 or more" g)
            | _ -> ()
            if o.StatusBatchSize < 1 then
                ConfigurationError(owner + ".StatusBatchSize", sprintf "is %d; use at least 1 (default 50)" o.StatusBatchSize)
            if o.StatusPollingInterval <= TimeSpan.Zero then
                ConfigurationError(owner + ".StatusPollingInterval", sprintf "is %O; use a positive interval (default 60 s)" o.StatusPollingInterval)
            if isNull (box o.Launcher) then ConfigurationError(owner + ".Launcher", "is null; use a launcher such as SrunLauncher()")
            let regexOk =
                try (jobIdRegex o.RegexJobId).GetGroupNames() |> Array.contains "id"
                with _ -> false
            if not regexOk then
                ConfigurationError(owner + ".RegexJobId", sprintf "'%s' is not a regular expression with a group named id, as Submitted batch job (?<id>\\S*)" o.RegexJobId)
            for name, value in [ "Partition", o.Partition; "Account", o.Account; "Qos", o.Qos; "Constraint", o.Constraint; "Clusters", o.Clusters; "Gres", o.Gres ] do
                match value with
                | Some v when String.IsNullOrWhiteSpace v || v.Contains '\n' ->
                    ConfigurationError(owner + "." + name, "is empty or spans lines; give one value or leave it unset")
                | _ -> () ]
        @ (match o.Channel with Ssh s -> SshOptions.validate owner s | Local -> [])

    /// The `--cpus-per-task` for a block: cores per node shared among its tasks, at least 1.
    let cpusPerTask (o: SlurmOptions) tasksPerNode =
        o.CoresPerNode |> Option.map (fun c -> max 1 (c / max 1 tasksPerNode))

    /// The sbatch script for one block.
    let render (o: SlurmOptions) (r: ScriptRequest) =
        let directive (name: string) (value: string option) =
            value |> Option.map (fun v -> sprintf "#SBATCH --%s=%s" name v) |> Option.toList
        let cpt = cpusPerTask o r.TasksPerNode
        let lines =
            [ "#!/bin/bash"
              sprintf "#SBATCH --job-name=%s" r.JobName
              sprintf "#SBATCH --output=%s" r.StdoutPath
              sprintf "#SBATCH --error=%s" r.StderrPath
              sprintf "#SBATCH --nodes=%d" o.NodesPerBlock
              sprintf "#SBATCH --time=%d" (BatchJobs.walltimeMinutes o.Walltime)
              sprintf "#SBATCH --ntasks-per-node=%d" r.TasksPerNode ]
            @ (match BatchJobs.asLines o.SchedulerOptions with "" -> [] | s -> [ s.TrimEnd('\n') ])
            @ (if o.Exclusive then [ "#SBATCH --exclusive" ] else [])
            @ directive "partition" o.Partition
            @ directive "account" o.Account
            @ directive "qos" o.Qos
            @ directive "constraint" o.Constraint
            @ directive "clusters" o.Clusters
            @ directive "gpus-per-node" (o.GpusPerNode |> Option.filter (fun g -> g > 0) |> Option.map string)
            @ directive "gres" o.Gres
            @ directive "mem" (o.MemPerNode |> Option.map (sprintf "%dg"))
            @ directive "cpus-per-task" (cpt |> Option.map string)
            @ [ "" ]
            @ (match BatchJobs.asLines o.WorkerInit with "" -> [] | s -> [ s.TrimEnd('\n') ])
            @ (o.MemPerNode |> Option.map (sprintf "export PARSL_MEMORY_GB=%d") |> Option.toList)
            @ (cpt |> Option.map (sprintf "export PARSL_CORES=%d") |> Option.toList)
            @ [ sprintf "export JOBNAME=\"%s\"" r.JobName
                sprintf "export PARSL_SCRIPT_DIR=%s" (BatchJobs.shellQuote r.ScriptDir)
                ""
                r.LaunchScript.TrimEnd('\n') ]
        String.Join("\n", lines) + "\n"

    let private clusters (o: SlurmOptions) =
        match o.Clusters with Some c -> sprintf " --clusters=%s" (BatchJobs.shellQuote c) | None -> ""

    /// Submits a script.
    let submitCommand (scriptPath: string) = sprintf "sbatch %s" (BatchJobs.shellQuote scriptPath)

    /// The job id in sbatch's output, if any.
    let parseSubmit (o: SlurmOptions) (stdout: string) =
        let re = jobIdRegex o.RegexJobId
        stdout.Split('\n')
        |> Array.tryPick (fun line ->
            let m = re.Match(line.Trim())
            if m.Success && m.Groups["id"].Value <> "" then Some m.Groups["id"].Value else None)

    /// Probes whether accounting works (`sacct` exits 1 with "accounting storage is disabled" otherwise).
    let probeCommand = "sacct -X --noheader --starttime now"

    /// The status command for a batch of job ids.
    let statusCommand (o: SlurmOptions) source (ids: string list) =
        let list = BatchJobs.shellQuote (String.Join(",", ids))
        match source with
        | Sacct -> sprintf "sacct%s -X --noheader --format=jobid,exitcode,state%%20 --job %s" (clusters o) list
        | Squeue -> sprintf "squeue%s --noheader --format='%%i %%t' --job %s" (clusters o) list

    /// Splits `code:signal` into an exit code (a killing signal becomes its negative, as a shell app's exit code).
    let parseExitCode (s: string) =
        match s.Split(':') with
        | [| code; signal |] ->
            match Int32.TryParse code, Int32.TryParse signal with
            | (true, c), (true, 0) -> Some c
            | (true, 0), (true, sg) -> Some -sg
            | (true, c), _ -> Some c
            | _ -> None
        | [| code |] ->
            match Int32.TryParse code with
            | true, c -> Some c
            | _ -> None
        | _ -> None

    /// Parses `squeue --format='%i %t'` or `sacct --format=jobid,exitcode,state` output.
    let parseStatus source (stdout: string) =
        stdout.Split('\n')
        |> Array.choose (fun line ->
            let parts = line.Split([| ' '; '\t' |], StringSplitOptions.RemoveEmptyEntries)
            match source, parts with
            | Squeue, [| id; st |] -> Some { JobId = id; State = squeueState st; Native = st; ExitCode = None }
            | Sacct, p when p.Length >= 3 ->
                Some { JobId = p[0]; State = sacctState p[2]; Native = p[2]; ExitCode = parseExitCode p[1] }
            | _ -> None)
        |> List.ofArray

    /// Asks Slurm's controller about one job, also after it left the queue (for `MinJobAge`, 300 s by default).
    let scontrolCommand (o: SlurmOptions) (id: string) =
        sprintf "scontrol%s show job -o %s" (clusters o) (BatchJobs.shellQuote id)

    /// Parses `scontrol show job -o` (one line of `Key=Value` pairs).
    let parseScontrol (stdout: string) =
        let field name =
            let m = Regex.Match(stdout, sprintf @"(?:^|\s)%s=(\S+)" name)
            if m.Success then Some m.Groups[1].Value else None
        match field "JobId", field "JobState" with
        | Some id, Some st ->
            Some { JobId = id; State = sacctState st; Native = st; ExitCode = field "ExitCode" |> Option.bind parseExitCode }
        | _ -> None

    /// Cancels jobs.
    let cancelCommand (o: SlurmOptions) (ids: string list) =
        sprintf "scancel%s %s" (clusters o) (String.Join(" ", ids |> List.map BatchJobs.shellQuote))
