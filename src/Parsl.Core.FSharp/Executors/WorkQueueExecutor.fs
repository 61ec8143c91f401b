namespace Parsl.Executors

open System
open System.Collections.Generic
open System.IO
open System.Text.Json
open Parsl
open Parsl.Data
open Parsl.Executors.WorkQueue
open Parsl.Executors.WorkerLink
open Parsl.Node

/// Runs tries on CCTools Work Queue workers (`work_queue_worker`, protocol 9 or 11) through a manager of our own
/// in this process (Parsl's `WorkQueueExecutor`).
///
///   kernel ──Submit──▶ executor: task description, files ──▶ manager (TCP, this process) ──▶ workers
///   kernel ◀──TryDone/TryFailed── executor ◀── result, fetched outputs ◀── manager ◀── available_results
///
/// Function apps run as `dotnet Parsl.Workers.dll wq-run call result` in the task's sandbox: the runner and the
/// user's assemblies are cached files (sent once per worker), the serialized call goes in and the result (or the
/// app's exception) comes back as files. Shell apps are the worker's own command lines. Resource keys: `cores`,
/// `memory` (MB), `disk` (MB), `gpus`, `priority`, `running_time_min`.
[<Sealed>]
type WorkQueueExecutor private (options: WorkQueueOptions, state: LinkExecutorState<WorkerLine, WqTask, WqWorkerInfo>) =
    inherit LinkExecutor<WorkerLine, WqTask, WqWorkerInfo>(state, options.Provider, options.Strategy, options.StrategyPeriod, options.MaxIdleTime, options.PasswordFile)
    let label = options.Label
    let shipping = RunnerShipping("WorkQueueExecutor", label, options.RunnerDirectory, options.SharedFs)
    let mutable runner: InputSource list = []
    let mutable coprocessInfile = Unchecked.defaultof<InputSource>
    let mutable coprocessScript = ""
    let quote = WorkerExecutors.quote

    let report (key: int64) (outcome: Result<obj, exn>) = state.Report(key, outcome)

    let short (h: string) = h.Substring(0, 16).ToLowerInvariant()

    let cached (f: ShippedFile) : InputSource =
        { File = { CacheName = f.CacheName; SandboxName = f.SandboxName; Cached = true }; LocalPath = f.LocalPath; Mode = 0o644 }

    let text = WorkerExecutors.outputText

    let functionResult (appName: string) (resultPath: string) (o: WqOutcome) : Result<obj, exn> =
        if o.Code <> 0 then Error(WqProtocol.failure o.Code o.ExitCode (text o.Output))
        elif not (File.Exists resultPath) then
            Error(
                WorkQueueTaskFailure(
                    o.Code,
                    sprintf "the .NET task runner of app %s on %s wrote no result (exit code %d; is `%s` on the worker's PATH?): %s"
                        appName o.Host o.ExitCode options.DotnetCommand (text o.Output)))
        else
            match shipping.ReadResult(appName, resultPath) with
            | Some r -> r
            | None -> Error(WorkQueueTaskFailure(o.Code, sprintf "the result file of app %s is gone" appName))

    let shellResult (call: ShellCall) (outputs: string list) (o: WqOutcome) : Result<obj, exn> =
        if o.Code <> 0 then Error(WqProtocol.failure o.Code o.ExitCode (text o.Output))
        elif o.ExitCode <> 0 then Error(BashExitFailure(call.AppName, o.ExitCode))
        else
            let missing = outputs |> List.filter (fun p -> not (File.Exists p) && not (Directory.Exists p))
            if missing.IsEmpty then Ok(box 0) else Error(MissingOutputs("the files were not created", missing))

    let wallSeconds = WorkerExecutors.wallSeconds

    let command = WorkerExecutors.withInit options.InitCommand

    let build (t: ExecTask) (key: int64) (req: ResourceRequest) : WqTask =
        let dir = Path.Combine(state.DataDir, string key)
        Directory.CreateDirectory dir |> ignore
        let prefix = sprintf "t%d-%d" t.Id.Value t.Try.Value
        let spec (cmd: string) appName =
            { TaskId = 0L
              Command = cmd
              Coprocess = None
              Category = (if options.Autocategory then appName else "parsl-default")
              Cores = 0.0
              Memory = 0L
              Disk = 0L
              Gpus = 0L
              WallTime = 0L
              Env = [ for KeyValue(k, v) in options.Env -> k, v ]
              Inputs = []
              Outputs = [] }
        let finish (s: TaskSpec) (inputs: InputSource list) (outputs: OutputDest list) (coprocess: (TaskSpec * InputSource list) option) (complete: WqOutcome -> Result<obj, exn>) =
            // With a resource monitor, a task that declares memory runs under it: the monitor kills the task at the
            // limit and says so in its summary, which comes back with the outputs.
            let summary = Path.Combine(dir, "rm.summary")
            let monitored, outputs =
                match options.ResourceMonitor, req.MemoryMB with
                | Some rm, Some mb ->
                    let wrapped = sprintf "%s --no-pprint -L %s -O parsl.rm -- /bin/sh -c %s" (quote rm) (quote (sprintf "memory: %d" mb)) (quote s.Command)
                    wrapped, outputs @ [ { File = { CacheName = prefix + "-rm"; SandboxName = "parsl.rm.summary"; Cached = false }; Path = summary; Append = false } ]
                | _ -> s.Command, outputs
            let complete (o: WqOutcome) =
                let over =
                    if File.Exists summary then
                        let text = File.ReadAllText summary
                        if text.Contains "\"exit_type\":\"limits\"" then
                            let i = text.IndexOf "\"limits_exceeded\""
                            Some(if i >= 0 then text.Substring(i, min 80 (text.Length - i)) else "limits exceeded")
                        else None
                    else None
                match over with
                | Some what -> Error(WorkQueueResourceExhaustion(sprintf "task used more resources than requested (resource monitor: %s)" what) :> exn)
                | None -> complete o
            { Key = key
              Spec = { s with Command = command monitored; Inputs = inputs |> List.map (fun i -> i.File); Outputs = outputs |> List.map (fun o -> o.File) }
              Request = req
              Inputs = inputs
              Outputs = outputs
              Coprocess =
                coprocess
                |> Option.map (fun (c, ins) -> { c with Inputs = ins |> List.map (fun i -> i.File); Outputs = outputs |> List.map (fun o -> o.File) }, ins)
              Complete =
                fun r ->
                    let outcome = match r with Ok o -> (try complete o with e -> Error e) | Error e -> Error e
                    report key outcome
                    try Directory.Delete(dir, true) with _ -> () }
        match t.Body with
        | Function call ->
            let struct (fid, def, asms) = shipping.Define(call.AppName, call.Function)
            let asms = asms |> List.map cached
            // Parsl `File`s among the arguments: inputs that exist are sent in, the others come back as outputs;
            // the app sees the sandbox's copy (its `Filepath`). With SharedFs they are used where they are.
            let ins = List<InputSource>()
            let outs = List<OutputDest>()
            let mutable n = 0
            let stage (f: File) =
                if options.SharedFs || f.Scheme <> "file" then f
                else
                    n <- n + 1
                    let local = f.Filepath
                    let name = sprintf "f%d-%s" n f.FileName
                    let tf = { CacheName = sprintf "%s-%s" prefix name; SandboxName = name; Cached = false }
                    if File.Exists local then ins.Add { File = tf; LocalPath = local; Mode = 0o644 }
                    else outs.Add { File = tf; Path = Path.GetFullPath local; Append = false }
                    f.WithLocalPath name
            let args = WorkerExecutors.stageArgs call stage
            let callPath = Path.Combine(dir, "call")
            let resultPath = Path.Combine(dir, "result")
            shipping.WriteCall(callPath, key, call.AppName, fid, def, args, call.Walltime)
            let callIn = { File = { CacheName = prefix + "-call"; SandboxName = "parsl.call"; Cached = false }; LocalPath = callPath; Mode = 0o600 }
            let resultOut = { File = { CacheName = prefix + "-result"; SandboxName = "parsl.result"; Cached = false }; Path = resultPath; Append = false }
            let cmd = sprintf "%s Parsl.Workers.dll wq-run parsl.call parsl.result" (quote options.DotnetCommand)
            // On a worker that runs our long-lived runner (`wq-serve`, a Work Queue coprocess), the same call goes to
            // it instead: no runner files, no `dotnet` start; the worker hands it `infile` and the task's id.
            let viaRunner =
                { spec "run" call.AppName with Coprocess = Some WqProtocol.coprocessName; WallTime = wallSeconds req None; Env = [] },
                asms @ [ callIn; coprocessInfile ] @ List.ofSeq ins
            finish
                { spec cmd call.AppName with WallTime = wallSeconds req None }
                (runner @ asms @ [ callIn ] @ List.ofSeq ins)
                (resultOut :: List.ofSeq outs)
                (Some viaRunner)
                (functionResult call.AppName resultPath)
        | Shell call ->
            let cmd = call.BuildCommand()
            if String.IsNullOrWhiteSpace cmd then raise (BashAppNoReturn call.AppName)
            let outs = List<OutputDest>()
            let fetch cacheName sandboxName path append =
                outs.Add { File = { CacheName = cacheName; SandboxName = sandboxName; Cached = false }; Path = path; Append = append }
            let redirect = WorkerExecutors.redirect options.SharedFs fetch prefix
            let line =
                "/bin/bash -c " + quote cmd
                + redirect ">" call.Stdout "parsl.stdout"
                + redirect "2>" call.Stderr "parsl.stderr"
            let outputs = WorkerExecutors.shellOutputs options.SharedFs fetch prefix call.Outputs
            finish
                { spec line call.AppName with WallTime = wallSeconds req call.Walltime }
                []
                (List.ofSeq outs)
                None
                (shellResult call outputs)

    /// The command a block runs to start one worker.
    let workerCommand (blockId: string) =
        let extra = if options.LongLivedRunner then [ "--coprocess"; quote coprocessScript ] else []
        state.WorkerCommand(blockId, options.WorkerExecutable, extra, options.WorkerOptions, options.Address, options.Port)

    let prepare (root: string) =
        runner <- shipping.RunnerFiles() |> List.map cached
        // What the worker's coprocess child reads and forwards to the runner (which reads the call file itself).
        // It carries `Env` (a task's environment does not reach a process that is already running).
        let infile = Path.Combine(root, "coprocess-infile")
        File.WriteAllText(infile, JsonSerializer.Serialize(dict [ for KeyValue(k, v) in options.Env -> k, v ]))
        let h = short (shipping.Hash infile)
        coprocessInfile <- { File = { CacheName = "parsl-coprocess-env-" + h; SandboxName = "infile"; Cached = true }; LocalPath = infile; Mode = 0o644 }
        // `work_queue_worker --coprocess` takes a program, not a command line: this script starts the runner.
        coprocessScript <- Path.Combine(root, "parsl-wq-coprocess")
        File.WriteAllText(
            coprocessScript,
            sprintf "#!/bin/sh\nexec %s %s wq-serve\n" (quote options.DotnetCommand) (quote (Path.Combine(options.RunnerDirectory, "Parsl.Workers.dll"))))
        if not (OperatingSystem.IsWindows()) then
            File.SetUnixFileMode(coprocessScript, UnixFileMode.UserRead ||| UnixFileMode.UserWrite ||| UnixFileMode.UserExecute)

    let startManager (context: ExecutorContext) (root: string) (password: string option) =
        WqManager.start (
            state.ManagerSettings(
                context, root, password, options.Address, options.Port, options.KeepalivePeriod, options.KeepaliveTimeout, options.MaxRetries)
        )

    do
        state.Parts <-
            { Validate = fun () -> WorkQueueOptions.validate options
              Prepare = prepare
              StartManager = startManager
              Build = build
              WorkerCommand = workerCommand }

    /// An executor with these options.
    new(options: WorkQueueOptions) = WorkQueueExecutor(options, LinkExecutorState(options.Label))

    /// Parsl's defaults.
    new() = WorkQueueExecutor(WorkQueueOptions.defaults ())

    /// The options.
    member _.Options = options

    /// A program that starts the long-lived .NET runner, for `work_queue_worker --coprocess` (protocol 10 and later):
    /// such a worker runs function apps without a `dotnet` start each (after start; on a file system the workers see).
    member _.CoprocessScript = coprocessScript

    /// The command a block runs to start one worker.
    member _.WorkerCommand(blockId: string) = workerCommand blockId
