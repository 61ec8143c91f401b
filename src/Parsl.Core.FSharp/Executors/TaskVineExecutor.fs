namespace Parsl.Executors

open System
open System.Collections.Concurrent
open System.Collections.Generic
open System.IO
open Parsl
open Parsl.Data
open Parsl.Executors.WorkerLink
open Parsl.Executors.WorkQueue
open Parsl.Executors.TaskVine
open Parsl.Node.HighThroughput
open Parsl.Node

/// Runs tries on CCTools TaskVine workers (`vine_worker`, protocol 13) through a manager of our own in this process
/// (Parsl's `TaskVineExecutor`).
///
///   kernel ──Submit──▶ executor: task description, files ──▶ manager (TCP, this process) ──▶ vine_workers
///   kernel ◀──TryDone/TryFailed── executor ◀── result, fetched outputs ◀── manager ◀── complete (pushed)
///
/// Function apps run as `dotnet Parsl.Workers.dll wq-run call result` in the task's sandbox (the runner Work Queue
/// uses), or, in `Serverless` mode, as calls to a long-lived .NET library on each worker (`vine-library`). The runner,
/// the user's assemblies and Parsl `File` inputs are cached on each worker at workflow level: sent once per worker.
/// Shell apps are the worker's own command lines. Resource keys: `cores`, `memory` (MB), `disk` (MB), `gpus`,
/// `priority`, `running_time_min`.
[<Sealed>]
type TaskVineExecutor private (options: TaskVineOptions, state: LinkExecutorState<VineLine, VineTask, VineWorkerInfo>) =
    inherit LinkExecutor<VineLine, VineTask, VineWorkerInfo>(state, options.Provider, options.Strategy, options.StrategyPeriod, options.MaxIdleTime, options.PasswordFile)
    let label = options.Label
    let shipping = RunnerShipping("TaskVineExecutor", label, options.RunnerDirectory, options.SharedFs)
    let fileHashes = ConcurrentDictionary<struct (string * int64 * DateTime), string>()
    /// Outputs of earlier tasks still in their worker's cache, by the local copy they were fetched to: a later task
    /// given that file names the worker's copy, so it is not sent back.
    let kept = ConcurrentDictionary<struct (string * int64 * DateTime), string>()
    let mutable runner: VineInput list = []

    let quote = WorkerExecutors.quote

    let report (key: int64) (outcome: Result<obj, exn>) = state.Report(key, outcome)

    let cached (f: ShippedFile) : VineInput =
        { File = { CacheName = f.CacheName; SandboxName = f.SandboxName; Level = CacheLevel.Workflow }; LocalPath = f.LocalPath; Mode = 0o644 }

    let text = WorkerExecutors.outputText

    let functionResult (appName: string) (resultPath: string) (o: VineOutcome) : Result<obj, exn> =
        if o.Code <> 0 then Error(VineProtocol.failure o.Code o.ExitCode (text o.Output))
        else
            match shipping.ReadResult(appName, resultPath) with
            | Some r -> r
            | None ->
                Error(
                    TaskVineTaskFailure(
                        o.Code,
                        sprintf "the .NET task runner of app %s on %s wrote no result (exit code %d; is `%s` on the worker's PATH?): %s"
                            appName o.Host o.ExitCode options.DotnetCommand (text o.Output)))

    let shellResult (call: ShellCall) (limited: bool) (outputs: string list) (o: VineOutcome) : Result<obj, exn> =
        if limited && o.Code = 0 && o.ExitCode = 137 then
            Error(TaskVineMaxRunTime(56, VineProtocol.explain 56 + " (stopped by the task's own timeout)"))
        elif o.Code = 2 && o.ExitCode <> 0 then Error(BashExitFailure(call.AppName, o.ExitCode))
        elif o.Code <> 0 && o.Code <> 2 then Error(VineProtocol.failure o.Code o.ExitCode (text o.Output))
        elif o.ExitCode <> 0 then Error(BashExitFailure(call.AppName, o.ExitCode))
        else
            let missing = outputs |> List.filter (fun p -> not (File.Exists p) && not (Directory.Exists p))
            if missing.IsEmpty && o.Code = 0 then Ok(box 0)
            else Error(MissingOutputs("the files were not created", (if missing.IsEmpty then outputs else missing)))

    let wallSeconds = WorkerExecutors.wallSeconds

    let command = WorkerExecutors.withInit options.InitCommand

    /// A Parsl `File` input, cached on each worker at workflow level under a name that carries its content hash: a
    /// file given to many tasks crosses to a worker once, and a changed file is a new name.
    let fileInput (local: string) (sandbox: string) : VineInput =
        let fi = FileInfo local
        match kept.TryGetValue(struct (fi.FullName, fi.Length, fi.LastWriteTimeUtc)) with
        | true, name ->
            // The worker that wrote it still holds it under this name; any other worker is sent this local copy.
            { File = { CacheName = name; SandboxName = sandbox; Level = CacheLevel.Workflow }; LocalPath = fi.FullName; Mode = 0o644 }
        | _ ->
            let h = fileHashes.GetOrAdd(struct (fi.FullName, fi.Length, fi.LastWriteTimeUtc), (fun _ -> Serialization.hashFile fi.FullName))
            { File = { CacheName = sprintf "parsl-file-%s-%s" (h.Substring(0, 16).ToLowerInvariant()) fi.Name; SandboxName = sandbox; Level = CacheLevel.Workflow }
              LocalPath = fi.FullName
              Mode = 0o644 }

    let spec (cmd: string) appName (req: ResourceRequest) wall : VineTaskSpec =
        { TaskId = 0L
          Command = cmd
          NeedsLibrary = None
          ProvidesLibrary = None
          Category = (if options.Autocategory then appName else "parsl-default")
          Cores = 0.0
          Memory = 0L
          Disk = 0L
          Gpus = 0L
          WallTime = wallSeconds req wall
          Env = [ for KeyValue(k, v) in options.Env -> k, v ]
          Inputs = []
          Outputs = [] }

    let build (t: ExecTask) (key: int64) (req: ResourceRequest) : VineTask =
        let dir = Path.Combine(state.DataDir, string key)
        Directory.CreateDirectory dir |> ignore
        let prefix = sprintf "t%d-%d" t.Id.Value t.Try.Value
        let withFiles (s: VineTaskSpec) (inputs: VineInput list) (outputs: VineOutput list) =
            { s with Inputs = inputs |> List.map (fun i -> i.File); Outputs = outputs |> List.map (fun o -> o.File) }
        let make (s: VineTaskSpec) inputs outputs (viaLibrary: (VineTaskSpec * VineInput list) option) (complete: VineOutcome -> Result<obj, exn>) =
            { Key = key
              Spec = withFiles { s with Command = command s.Command } inputs outputs
              Request = req
              Inputs = inputs
              Outputs = outputs
              ViaLibrary = viaLibrary |> Option.map (fun (c, ins) -> withFiles c ins outputs, ins)
              Complete =
                fun r ->
                    let outcome = match r with Ok o -> (try complete o with e -> Error e) | Error e -> Error e
                    if Result.isOk outcome then
                        for o in outputs do
                            if o.File.Level = CacheLevel.Workflow && File.Exists o.Path then
                                let fi = FileInfo o.Path
                                kept[struct (fi.FullName, fi.Length, fi.LastWriteTimeUtc)] <- o.File.CacheName
                    report key outcome
                    try Directory.Delete(dir, true) with _ -> () }
        match t.Body with
        | Function call ->
            let struct (fid, def, asms) = shipping.Define(call.AppName, call.Function)
            let asms = asms |> List.map cached
            // Parsl `File`s among the arguments: inputs that exist are put in the worker's cache (once per worker),
            // the others come back as outputs; the app sees the sandbox's copy. With SharedFs they are used in place.
            let ins = List<VineInput>()
            let outs = List<VineOutput>()
            let mutable n = 0
            let stage (f: File) =
                if options.SharedFs || f.Scheme <> "file" then f
                else
                    n <- n + 1
                    // A File that came back from a task carries the worker's sandbox path: its path here is the URL's.
                    let local = f.CleanCopy().Filepath
                    let name = sprintf "f%d-%s" n f.FileName
                    if File.Exists local then ins.Add(fileInput local name)
                    else
                        // Fetched here, and also kept in the worker's cache for a later task that reads it.
                        outs.Add
                            { File = { CacheName = sprintf "%s-%s" prefix name; SandboxName = name; Level = CacheLevel.Workflow }
                              Path = Path.GetFullPath local
                              Append = false }
                    f.WithLocalPath name
            let args = WorkerExecutors.stageArgs call stage
            let callPath = Path.Combine(dir, "call")
            let resultPath = Path.Combine(dir, "result")
            shipping.WriteCall(callPath, key, call.AppName, fid, def, args, call.Walltime)
            let callIn = { File = { CacheName = prefix + "-call"; SandboxName = "parsl.call"; Level = CacheLevel.TaskLevel }; LocalPath = callPath; Mode = 0o600 }
            let resultOut = { File = { CacheName = prefix + "-result"; SandboxName = "parsl.result"; Level = CacheLevel.TaskLevel }; Path = resultPath; Append = false }
            let cmd = sprintf "%s Parsl.Workers.dll wq-run parsl.call parsl.result" (quote options.DotnetCommand)
            // With a library on the worker (Serverless), the same call goes to it: no runner files, no `dotnet` start.
            let viaLibrary =
                if options.FunctionExecMode = FunctionExecMode.Serverless then
                    Some({ spec "run" call.AppName req None with NeedsLibrary = Some VineProtocol.libraryName; Env = [] }, asms @ [ callIn ] @ List.ofSeq ins)
                else None
            make
                (spec cmd call.AppName req None)
                (runner @ asms @ [ callIn ] @ List.ofSeq ins)
                (resultOut :: List.ofSeq outs)
                viaLibrary
                (functionResult call.AppName resultPath)
        | Shell call ->
            let cmd = call.BuildCommand()
            if String.IsNullOrWhiteSpace cmd then raise (BashAppNoReturn call.AppName)
            let outs = List<VineOutput>()
            let fetch cacheName sandboxName path append =
                outs.Add { File = { CacheName = cacheName; SandboxName = sandboxName; Level = CacheLevel.TaskLevel }; Path = path; Append = append }
            let redirect = WorkerExecutors.redirect options.SharedFs fetch prefix
            let wall = wallSeconds req call.Walltime
            // The worker kills a task at its wall time through the task's process group, which it makes after the
            // fork; under load the task may exec first and stay in the worker's group, out of reach (seen here). So
            // a shell app with a limit also runs under `timeout`, a little later, as a backstop.
            let limited = if wall > 0L then sprintf "timeout -s KILL %d " (wall + 2L) else ""
            let line =
                limited + "/bin/bash -c " + quote cmd
                + redirect ">" call.Stdout "parsl.stdout"
                + redirect "2>" call.Stderr "parsl.stderr"
            let outputs = WorkerExecutors.shellOutputs options.SharedFs fetch prefix call.Outputs
            make (spec line call.AppName req call.Walltime) [] (List.ofSeq outs) None (shellResult call (wall > 0L) outputs)

    /// The command a block runs to start one worker. Its log goes to `workers/block-<id>.log` under this executor's
    /// folder in the run directory (not to loose folders in the working directory).
    let workerCommand (blockId: string) =
        let extra = [ "--debug-file"; quote (Path.Combine(state.Root, "workers", sprintf "block-%s.log" blockId)); "--parent-death" ]
        state.WorkerCommand(blockId, options.WorkerExecutable, extra, options.WorkerOptions, options.Address, options.Port)

    let prepare (root: string) =
        Directory.CreateDirectory(Path.Combine(root, "workers")) |> ignore
        runner <- shipping.RunnerFiles() |> List.map cached

    let startManager (context: ExecutorContext) (root: string) (password: string option) =
        let library =
            if options.FunctionExecMode = FunctionExecMode.Serverless then
                let none: ResourceRequest = { Cores = None; MemoryMB = None; DiskMB = None; Gpus = None; Priority = 0.0; RunningTimeMin = None }
                let cmd = sprintf "%s Parsl.Workers.dll vine-library" (quote options.DotnetCommand)
                Some({ spec (command cmd) VineProtocol.libraryName none None with Inputs = runner |> List.map (fun i -> i.File) }, runner)
            else None
        VineManager.start
            { Link =
                state.ManagerSettings(
                    context, root, password, options.Address, options.Port, options.KeepalivePeriod, options.KeepaliveTimeout, options.MaxRetries)
              Library = library
              PeerTransfers = options.PeerTransfers }

    do
        state.Parts <-
            { Validate = fun () -> TaskVineOptions.validate options
              Prepare = prepare
              StartManager = startManager
              Build = build
              WorkerCommand = workerCommand }

    /// An executor with these options.
    new(options: TaskVineOptions) = TaskVineExecutor(options, LinkExecutorState(options.Label))

    /// Parsl's defaults.
    new() = TaskVineExecutor(TaskVineOptions.defaults ())

    /// The options.
    member _.Options = options

    /// The command a block runs to start one worker.
    member _.WorkerCommand(blockId: string) = workerCommand blockId
