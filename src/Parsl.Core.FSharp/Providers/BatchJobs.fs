namespace Parsl.Providers

open System
open System.Text.RegularExpressions
open Parsl

/// What the resource manager said about one job, parsed from its status command's output.
type SchedulerReport =
    { JobId: string
      State: JobState
      /// The scheduler's own state word (`PD`, `qw`, `FAILED`, ...), for messages.
      Native: string
      ExitCode: int option }

/// Everything a batch script needs that is not a provider option.
type ScriptRequest =
    { /// The job name (Parsl's `parsl.<executor>.block-<n>.<time>`).
      JobName: string
      /// The submit-script directory as the scheduler sees it.
      ScriptDir: string
      /// Where the job's stdout goes.
      StdoutPath: string
      /// Where the job's stderr goes.
      StderrPath: string
      /// Copies of the command per node.
      TasksPerNode: int
      /// The launcher's output: what the script runs.
      LaunchScript: string }

/// Pure helpers shared by the batch providers.
[<RequireQualifiedAccess>]
module BatchJobs =
    /// Parses `HH:MM:SS` (hours may exceed 24) into a time span.
    let tryParseWalltime (w: string) =
        let m = Regex.Match((if isNull w then "" else w), @"^(\d+):([0-5]?\d):([0-5]?\d)$")
        if m.Success then
            Some(TimeSpan.FromSeconds(float (int64 m.Groups[1].Value * 3600L + int64 m.Groups[2].Value * 60L + int64 m.Groups[3].Value)))
        else None

    /// Whole minutes of a walltime, at least 1 (Slurm and LSF take minutes, as Parsl's `wtime_to_minutes`).
    let walltimeMinutes (w: string) =
        match tryParseWalltime w with
        | Some t -> max 1 (int t.TotalMinutes)
        | None -> invalidArg "walltime" (sprintf "walltime '%s' is not HH:MM:SS" w)

    /// The checks every provider's block options share; `owner` is as `SlurmProvider`.
    let validateBlocks owner initBlocks minBlocks maxBlocks nodesPerBlock (parallelism: float) =
        [ if initBlocks < 0 then
              ConfigurationError(owner + ".InitBlocks", sprintf "is %d; use 0 or more" initBlocks)
          if minBlocks < 0 then
              ConfigurationError(owner + ".MinBlocks", sprintf "is %d; use 0 or more" minBlocks)
          if maxBlocks < minBlocks then
              ConfigurationError(owner + ".MaxBlocks", sprintf "is %d, less than MinBlocks (%d); raise MaxBlocks or lower MinBlocks" maxBlocks minBlocks)
          if nodesPerBlock < 1 then
              ConfigurationError(owner + ".NodesPerBlock", sprintf "is %d; a block needs at least 1 node" nodesPerBlock)
          if Double.IsNaN parallelism || parallelism < 0.0 || parallelism > 1.0 then
              ConfigurationError(owner + ".Parallelism", sprintf "is %g; use a number from 0 (fewest blocks) to 1 (one slot per task)" parallelism) ]

    /// A walltime check naming the field.
    let validateWalltime owner (w: string) =
        match tryParseWalltime w with
        | Some t when t > TimeSpan.Zero -> []
        | Some _ -> [ ConfigurationError(owner + ".Walltime", "is zero; give the block time to run, as \"01:00:00\"") ]
        | None -> [ ConfigurationError(owner + ".Walltime", sprintf "'%s' is not HH:MM:SS; write it as \"00:30:00\"" w) ]

    /// A command-timeout check naming the field.
    let validateTimeout owner (t: TimeSpan) =
        if t <= TimeSpan.Zero then [ ConfigurationError(owner + ".CmdTimeout", "must be positive, as 30 seconds") ] else []

    /// Ensures text ends with exactly one newline when not empty (scheduler options and worker_init are spliced
    /// into scripts line by line).
    let asLines (s: string) =
        if String.IsNullOrWhiteSpace s then "" else s.TrimEnd('\n', '\r') + "\n"

    /// Parsl's output summary: whole when at most 2048 characters, else the first and last 1024 around `...`.
    let summary (text: string) =
        if isNull text || text.Length = 0 then None
        elif text.Length <= 2048 then Some text
        else Some(text.Substring(0, 1024) + "\n...\n" + text.Substring(text.Length - 1024))

    /// Splits job ids into batches of at most `size`, in order.
    let batches size (ids: string list) = ids |> List.chunkBySize (max 1 size)

    /// Quotes a word for a POSIX shell.
    let shellQuote (s: string) = "'" + s.Replace("'", "'\\''") + "'"
