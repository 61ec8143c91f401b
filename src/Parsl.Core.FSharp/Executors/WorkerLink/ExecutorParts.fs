namespace Parsl.Executors.WorkerLink

open System
open System.IO
open System.Threading.Tasks
open Parsl
open Parsl.Executors
open Parsl.Executors.WorkQueue
open Parsl.Providers

/// What the Work Queue and TaskVine executors share around their managers: shell quoting, wall times, the run's
/// worker password, and starting and stopping the block scaler.
[<RequireQualifiedAccess>]
module WorkerExecutors =
    /// Quotes a word for the worker's `/bin/sh` (left bare when it needs no quoting).
    let quote (s: string) =
        if s <> "" && s |> Seq.forall (fun c -> Char.IsLetterOrDigit c || "/._-:=,+@%".Contains c) then s
        else "'" + s.Replace("'", "'\\''") + "'"

    /// A task's output as text for an error message: its last 2000 characters.
    let outputText (b: byte[]) =
        let s = if isNull b then "" else Text.Encoding.UTF8.GetString b
        if s.Length > 2000 then "…" + s.Substring(s.Length - 2000) else s

    /// The wall time the worker enforces, in seconds (0 = none): the shorter of `running_time_min` and a shell
    /// app's own walltime.
    let wallSeconds (r: ResourceRequest) (shell: TimeSpan option) =
        [ match r.RunningTimeMin with Some m -> int64 (Math.Ceiling(m * 60.0)) | None -> ()
          match shell with Some w -> max 1L (int64 (Math.Ceiling w.TotalSeconds)) | None -> () ]
        |> function [] -> 0L | xs -> List.min xs

    /// A task's command line after the executor's `InitCommand`, when there is one.
    let withInit (initCommand: string) (c: string) =
        if String.IsNullOrWhiteSpace initCommand then c else initCommand + "; " + c

    /// The password file workers must be given: `passwordFile`, or one made for this run under `root`. Without a
    /// PasswordFile only workers given this one (the executor's blocks get it) can join, so no other local process
    /// can pose as a worker. The file is made owner-only before the secret is written into it.
    let runPassword (passwordFile: string option) (root: string) =
        match passwordFile with
        | Some p -> Path.GetFullPath p
        | None ->
            let p = Path.Combine(root, "worker.password")
            File.WriteAllText(p, "")
            if not (OperatingSystem.IsWindows()) then
                File.SetUnixFileMode(p, UnixFileMode.UserRead ||| UnixFileMode.UserWrite)
            File.WriteAllText(p, Convert.ToHexString(Security.Cryptography.RandomNumberGenerator.GetBytes 24).ToLowerInvariant())
            p

    /// Starts the block scaler when the executor has a provider (its submit scripts go under the run directory).
    let startScaler
        (label: string)
        (provider: IExecutionProvider option)
        (context: ExecutorContext)
        (kind: Parsl.Jobs.StrategyKind)
        (period: TimeSpan)
        (maxIdleTime: TimeSpan)
        (launchCommand: string -> string)
        (outstanding: unit -> int)
        : WqScalerHandle option =
        match provider with
        | Some p ->
            p.Initialize { ScriptDir = Path.Combine(context.RunDir, "submit_scripts"); Log = context.Log }
            Some(
                WqBlockScaler.start
                    { Label = label
                      Provider = p
                      Kind = kind
                      Period = period
                      MaxIdleTime = maxIdleTime
                      LaunchCommand = launchCommand
                      Outstanding = outstanding
                      Log = context.Log })
        | None -> None

    /// A function app's arguments as they are sent: without the cancellation token the app takes last (the runner
    /// passes its own), with each Parsl `File` (alone or in an array) replaced by what `stage` makes of it.
    let stageArgs (call: FunctionCall) (stage: Parsl.Data.File -> Parsl.Data.File) : obj[] =
        let args =
            if call.TakesCancellation && call.Args.Length = call.Function.Method.GetParameters().Length then
                Array.sub call.Args 0 (call.Args.Length - 1)
            else Array.copy call.Args
        for i in 0 .. args.Length - 1 do
            match args[i] with
            | :? Parsl.Data.File as f -> args[i] <- box (stage f)
            | :? (Parsl.Data.File[]) as fs -> args[i] <- box (Array.map stage fs)
            | _ -> ()
        args

    /// A shell app's `op` redirection (`>` or `2>`) of stdout or stderr, as it goes on its command line: with a
    /// shared file system to the file itself; else to `name` in the sandbox, handed to `fetch` (the name it is cached
    /// under on the worker, its sandbox name, where it goes here, whether it is appended there) to bring back.
    let redirect
        (sharedFs: bool)
        (fetch: string -> string -> string -> bool -> unit)
        (prefix: string)
        (op: string)
        (s: Parsl.Node.StdStream option)
        (name: string)
        =
        match s with
        | None -> ""
        | Some s when sharedFs -> sprintf " %s%s %s" op (match s with Parsl.Node.Append _ -> ">" | Parsl.Node.Truncate _ -> "") (quote s.Path)
        | Some s ->
            fetch (sprintf "%s-%s" prefix name) name (Path.GetFullPath s.Path) (match s with Parsl.Node.Append _ -> true | Parsl.Node.Truncate _ -> false)
            sprintf " %s %s" op name

    /// A shell app's declared outputs, as full paths here. Those named by relative paths are written in the sandbox and
    /// handed to `fetch` to bring back to the same relative path here; absolute paths mean a shared file system
    /// (Parsl's rule).
    let shellOutputs (sharedFs: bool) (fetch: string -> string -> string -> bool -> unit) (prefix: string) (outputs: string list) =
        [ for p in outputs ->
            if not sharedFs && not (Path.IsPathRooted p) then
                fetch (sprintf "%s-out-%s" prefix (p.Replace('/', '_'))) p (Path.GetFullPath p) false
            Path.GetFullPath p ]

    /// The blocks the scaler started so far: block id, job id, state (none without a provider).
    let blocks (scaler: WqScalerHandle option) : Task<(string * string option * JobState) list> =
        match scaler with
        | Some sc ->
            let q = TaskCompletionSource<_>(TaskCreationOptions.RunContinuationsAsynchronously)
            sc.Post(ScalerBlocks q)
            q.Task
        | None -> Task.FromResult []

    /// Hands a try to the manager: refused when the executor is not started or the resources are not understood;
    /// else recorded in flight and built (`build` failing reports the try failed), then posted.
    let internal submit
        (ctx: ExecutorContext)
        (label: string)
        (inflight: InFlight<unit>)
        (post: ('Task -> unit) option)
        (build: ExecTask -> int64 -> ResourceRequest -> 'Task)
        (t: ExecTask)
        =
        match post with
        | None -> ctx.Report(TryFailed(t.Id, t.Try, ExecutorError(label, "the executor was not started", null)))
        | Some post ->
            let key = Parsl.Node.HighThroughput.Protocol.key t.Id.Value t.Try.Value
            match WqProtocol.request label t.Resources with
            | Error e -> ctx.Report(TryFailed(t.Id, t.Try, e))
            | Ok req ->
                inflight.Add(key, t.Id, t.Try, ())
                match (try Ok(build t key req) with e -> Error e) with
                | Error e -> inflight.Report(ctx, key, Error e) |> ignore
                | Ok task -> post task

    /// Stops an actor that answers a stop request: posts it, waits for the answer, then for the actor's loop.
    let stopActor (post: TaskCompletionSource<unit> -> unit) (completion: Task) : Task =
        task {
            let stopped = TaskCompletionSource<unit>(TaskCreationOptions.RunContinuationsAsynchronously)
            post stopped
            do! stopped.Task
            do! completion
        }

    /// Stops the block scaler (it cancels its blocks), then disposes the provider.
    let stopScaler (scaler: WqScalerHandle option) (provider: IExecutionProvider option) : Task =
        task {
            match scaler, provider with
            | Some sc, Some p ->
                do! stopActor (fun r -> sc.Post(StopScaler r)) sc.Completion
                match box p with
                | :? IDisposable as d ->
                    try d.Dispose() with _ -> ()
                | _ -> ()
            | _ -> ()
        }
