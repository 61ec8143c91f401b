namespace Parsl.Runtime

open System
open System.IO
open Serilog

/// Numbered run directories (`runinfo/000`, `001`, ...; Parsl's `rundirs.py`) and the run's log file.
[<RequireQualifiedAccess>]
module RunDir =
    /// The numbers of the existing run directories under `baseDir`, ascending (numerically, past 999).
    let existing (baseDir: string) =
        if Directory.Exists baseDir then
            Directory.GetDirectories baseDir
            |> Array.choose (fun d ->
                match Int32.TryParse(Path.GetFileName d) with
                | true, n when n >= 0 -> Some n
                | _ -> None)
            |> Array.sort
        else
            [||]

    /// Creates the next numbered run directory: one more than the largest existing number, formatted `{:03}`.
    /// Retries when another process takes the same number at the same time.
    let create (baseDir: string) =
        Directory.CreateDirectory baseDir |> ignore
        let rec attempt n tries =
            let path = Path.Combine(baseDir, sprintf "%03d" n)
            // Directory.CreateDirectory succeeds on an existing directory, so claim the number with a marker file.
            // Private to the user (0700): on a shared login node a run's logs, scripts and task output are nobody
            // else's business. Everything the run writes lives below it.
            if OperatingSystem.IsWindows() then Directory.CreateDirectory path |> ignore
            else Directory.CreateDirectory(path, UnixFileMode.UserRead ||| UnixFileMode.UserWrite ||| UnixFileMode.UserExecute) |> ignore
            try
                use _ = new FileStream(Path.Combine(path, ".claimed"), FileMode.CreateNew)
                path
            with :? IOException when tries < 100 -> attempt (n + 1) (tries + 1)
        let next =
            match existing baseDir with
            | [||] -> 0
            | xs -> Array.last xs + 1
        Path.GetFullPath(attempt next 0)

    /// The newest run directory under `baseDir`, if any.
    let last (baseDir: string) =
        match existing baseDir with
        | [||] -> None
        | xs -> Some(Path.GetFullPath(Path.Combine(baseDir, sprintf "%03d" (Array.last xs))))

    /// The run's logger: `parsl.log` in the run directory (when `enabled`) and the extra sinks; nothing when there
    /// is neither.
    let logger (runDir: string) (enabled: bool) (level: Events.LogEventLevel) (sinks: Core.ILogEventSink list) : ILogger =
        if enabled || not sinks.IsEmpty then
            let mutable c = LoggerConfiguration().MinimumLevel.Is(level)
            if enabled then
                c <-
                    c.WriteTo.File(
                        Path.Combine(runDir, "parsl.log"),
                        outputTemplate = "{Timestamp:yyyy-MM-dd HH:mm:ss.fff} {Level:u3} {Message:lj}{NewLine}{Exception}",
                        buffered = true,
                        flushToDiskInterval = TimeSpan.FromSeconds 1.0)
            for sink in sinks do
                c <- c.WriteTo.Sink(sink)
            c.CreateLogger() :> ILogger
        else
            Serilog.Core.Logger.None
