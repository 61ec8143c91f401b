namespace Parsl.Node.Runtime

open System
open System.ComponentModel
open System.IO
open System.Threading
open Parsl
open Parsl.Node

/// Runs shell apps (Parsl's `remote_side_bash_executor`): `/bin/bash -c <command>` in its own process group,
/// so that a walltime or a cancellation kills the command and everything it started in the background.
[<RequireQualifiedAccess>]
module Shell =
    type private StopReason =
        | WalltimeExpired
        | Cancelled

    /// One try's process group. It may be killed only until its leader is reaped: after that the pid (and so
    /// the group id) could belong to an unrelated process.
    [<Sealed>]
    type private Group(pgid: int) =
        let gate = obj ()
        let mutable exited = false
        let mutable reason: StopReason option = None

        member _.Stop(why: StopReason) =
            lock gate (fun () ->
                if not exited then
                    if reason.IsNone then reason <- Some why
                    Native.killGroup pgid)

        member _.MarkExited() = lock gate (fun () -> exited <- true)
        member _.Reason = lock gate (fun () -> reason)

    // Timer's longest due time.
    let private maxTimer = TimeSpan.FromMilliseconds 4294967294.0

    let private header (cmd: string) =
        "--> executable follows <--\n" + cmd + "\n--> end executable <--\n"

    let private buildCommand (call: ShellCall) =
        let cmd =
            try
                call.BuildCommand()
            with
            | :? IndexOutOfRangeException
            | :? FormatException
            | :? ArgumentException as e ->
                raise (
                    AppBadFormatting(
                        sprintf "Shell app %s could not build its command line: %s" call.AppName e.Message, e)
                )
        if String.IsNullOrWhiteSpace cmd then raise (BashAppNoReturn call.AppName)
        if cmd.Contains '\000' then
            raise (
                AppBadFormatting(
                    sprintf "Shell app %s built a command line containing a NUL character, which no process can receive; remove it"
                        call.AppName,
                    null)
            )
        cmd

    /// Creates the streams' directories, truncates `Truncate` files and writes the stderr header, before the
    /// child opens the files for appending. Returns the full paths (null: inherited).
    let private prepareStreams (call: ShellCall) (cmd: string) =
        let prepare which (stream: StdStream option) =
            match stream with
            | None -> null
            | Some s ->
                try
                    let full = Path.GetFullPath s.Path
                    match Path.GetDirectoryName full with
                    | null
                    | "" -> ()
                    | dir -> Directory.CreateDirectory dir |> ignore
                    // A file made here is private to the user (0600), as the run directory is; an existing file keeps
                    // its mode.
                    let options = FileStreamOptions(Access = FileAccess.Write)
                    options.Mode <- (match s with Truncate _ -> FileMode.Create | Append _ -> FileMode.Append)
                    if not (OperatingSystem.IsWindows()) then
                        options.UnixCreateMode <- Nullable(UnixFileMode.UserRead ||| UnixFileMode.UserWrite)
                    (new FileStream(full, options)).Dispose()
                    full
                with
                | :? IOException
                | :? UnauthorizedAccessException
                | :? ArgumentException
                | :? NotSupportedException as e ->
                    raise (
                        BadStdStreamFile(
                            sprintf "Shell app %s cannot open its %s file '%s': %s" call.AppName which s.Path e.Message, e)
                    )
        let out = prepare "stdout" call.Stdout
        let err = prepare "stderr" call.Stderr
        if not (isNull err) then
            try
                File.AppendAllText(err, header cmd)
            with
            | :? IOException
            | :? UnauthorizedAccessException as e ->
                raise (BadStdStreamFile(sprintf "Shell app %s cannot write its stderr file '%s': %s" call.AppName err e.Message, e))
        out, err

    /// The environment as .NET sees it, which `Environment.SetEnvironmentVariable` changes without touching the
    /// C library's `environ`.
    let private environment () =
        let vars = Environment.GetEnvironmentVariables()
        let entries = ResizeArray<string>(vars.Count)
        let it = vars.GetEnumerator()
        while it.MoveNext() do
            let key = string it.Key
            let value = string it.Value
            if key <> "" && key.IndexOf '=' < 0 && key.IndexOf '\000' < 0 && value.IndexOf '\000' < 0 then
                entries.Add(key + "=" + value)
        entries.ToArray()

    let private checkWalltime (call: ShellCall) =
        match call.Walltime with
        | Some w when w <= TimeSpan.Zero ->
            raise (
                ArgumentOutOfRangeException(
                    "Walltime",
                    w,
                    sprintf "Shell app %s: Walltime must be positive (got %g s); leave it None for no limit"
                        call.AppName w.TotalSeconds)
            )
        | _ -> ()

    // Only where a pidfd cannot be polled: the callback runs on the thread pool, so it is late while the pool
    // is starved (a thread-pool executor blocking its threads in shell apps).
    let private startTimer (call: ShellCall) (group: Group) =
        match call.Walltime with
        | Some w when w <= maxTimer ->
            new Timer((fun _ -> group.Stop WalltimeExpired), null, w, Timeout.InfiniteTimeSpan)
        | _ -> null

    /// Runs one try of a shell app on the calling thread and returns boxed 0, or raises:
    /// `AppBadFormatting` / `BashAppNoReturn` when the command line cannot be built, `BadStdStreamFile`,
    /// `BashExitFailure` with the exit code (minus the signal number when killed by one), `AppTimeout` after the
    /// walltime, `OperationCanceledException` when `cancellation` fires, `MissingOutputs` when an output is absent.
    /// In the last three cases the process group has been killed.
    /// `onStarted` gets the process group's id as soon as it exists (a worker tells its manager, which kills the
    /// group should the worker die while the command runs).
    let runWith (onStarted: int -> unit) (call: ShellCall) (cancellation: CancellationToken) : obj =
        cancellation.ThrowIfCancellationRequested()
        checkWalltime call
        let cmd = buildCommand call
        let stdoutPath, stderrPath = prepareStreams call cmd
        let pid =
            match Native.spawn [| "/bin/bash"; "-c"; cmd |] (environment ()) stdoutPath stderrPath with
            | Ok pid -> pid
            | Error errno ->
                raise (AppException(sprintf "Shell app %s could not start /bin/bash" call.AppName, Win32Exception errno))
        let group = Group pid
        (try onStarted pid with _ -> ())
        let registration = cancellation.Register(fun () -> group.Stop Cancelled)
        let mutable timer = null
        try
            match call.Walltime with
            | Some limit ->
                match Native.waitExitedFor pid limit with
                | Native.Exited -> ()
                | Native.TimedOut -> group.Stop WalltimeExpired
                | Native.Unsupported -> timer <- startTimer call group
            | None -> ()
            // Should this fail, the group can no longer be killed safely; `reap` still waits and reports.
            Native.waitExited pid |> ignore
        finally
            group.MarkExited()
            registration.Dispose()
            if not (isNull timer) then timer.Dispose()
        let status =
            match Native.reap pid with
            | Ok status -> status
            | Error errno ->
                raise (AppException(sprintf "Shell app %s: waiting for its process failed" call.AppName, Win32Exception errno))
        match group.Reason with
        | Some WalltimeExpired ->
            raise (
                AppTimeout(
                    sprintf "Shell app %s ran past its walltime of %g s; its process group was killed"
                        call.AppName call.Walltime.Value.TotalSeconds)
            )
        | Some Cancelled ->
            raise (
                OperationCanceledException(
                    sprintf "Shell app %s was cancelled; its process group was killed" call.AppName, cancellation)
            )
        | None ->
            let code = Native.exitCode status
            if code <> 0 then raise (BashExitFailure(call.AppName, code))
            let missing = call.Outputs |> List.filter (fun p -> not (File.Exists p || Directory.Exists p))
            if not missing.IsEmpty then
                raise (MissingOutputs(sprintf "shell app %s exited 0 without creating them" call.AppName, missing))
            box 0

    /// Runs one try of a shell app on the calling thread (see `runWith`).
    let run (call: ShellCall) (cancellation: CancellationToken) : obj = runWith ignore call cancellation
