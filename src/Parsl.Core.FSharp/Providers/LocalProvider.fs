namespace Parsl.Providers

open System
open System.Collections.Concurrent
open System.Diagnostics
open System.IO
open System.Runtime.InteropServices
open System.Threading
open System.Threading.Tasks
open Parsl

module internal Signals =
    [<DllImport("libc", SetLastError = true, EntryPoint = "kill")>]
    extern int sys_kill(int pid, int signal)

    let SIGKILL = 9
    let SIGTERM = 15

    /// Signals a whole process group.
    let group (pgid: int) (signal: int) = sys_kill(-pgid, signal) |> ignore

    /// Whether any live process of the group is left. Zombies do not count: where nothing reaps orphans (an init
    /// that does not wait), they would stay members of the group for good.
    let groupAlive (pgid: int) =
        if sys_kill(-pgid, 0) <> 0 then false
        elif not (Directory.Exists "/proc/self") then true
        else
            Directory.EnumerateDirectories "/proc"
            |> Seq.exists (fun d ->
                let name = Path.GetFileName d
                name.Length > 0 && Char.IsDigit name[0]
                && (try
                        let stat = File.ReadAllText(Path.Combine(d, "stat"))
                        // After the command (which may hold spaces and parentheses): state, ppid, pgrp.
                        let rest = stat.Substring(stat.LastIndexOf ')' + 2).Split ' '
                        rest[0] <> "Z" && int rest[2] = pgid
                    with _ -> false))

/// The options of a `LocalProvider`, with Parsl's defaults (`LocalProvider.defaults`).
type LocalProviderOptions =
    { /// Nodes per block; every node is this machine. Default 1.
      NodesPerBlock: int
      /// Default `SingleNodeLauncher`.
      Launcher: ILauncher
      /// Blocks started with the executor. Default 1.
      InitBlocks: int
      /// Default 0.
      MinBlocks: int
      /// Default 1.
      MaxBlocks: int
      /// Shell commands run before the worker pool in each block. Default "".
      WorkerInit: string
      /// Default 1.
      Parallelism: float
      /// How often the executor asks for block status. Default 5 s (Parsl's).
      StatusPollingInterval: TimeSpan }

/// One block started by a `LocalProvider`.
type private LocalJob =
    { Process: Process
      ExitCodeFile: string
      StdoutFile: string
      StderrFile: string
      mutable Cancelled: bool }

/// Runs blocks on this machine (Parsl's `LocalProvider`): each block is `bash` running its submit script in
/// its own process group, with stdout, stderr and an exit-code file beside the script under
/// `runinfo/NNN/submit_scripts/`. The job id is the process id; cancelling kills the whole process group.
[<Sealed>]
type LocalProvider(options: LocalProviderOptions) =
    let jobs = ConcurrentDictionary<string, LocalJob>()
    let mutable ctx: ProviderContext option = None
    let mutable counter = 0

    let readTail (path: string) =
        try
            if File.Exists path then
                let text = File.ReadAllText path
                // Parsl's summaries: head and tail, 2048 bytes in all.
                if text.Length <= 2048 then text else text.Substring(0, 1024) + "\n...\n" + text.Substring(text.Length - 1024)
            else ""
        with _ -> ""

    let statusOf (job: LocalJob) =
        if job.Cancelled then JobStatus.ofState JobState.Cancelled
        elif not job.Process.HasExited then JobStatus.ofState JobState.Running
        else
            let code =
                try
                    match (File.ReadAllText job.ExitCodeFile).Trim() with
                    | "-" | "" -> job.Process.ExitCode
                    | s -> int s
                with _ -> job.Process.ExitCode
            if code = 0 then
                { JobStatus.ofState JobState.Completed with ExitCode = Some 0 }
            else
                { State = JobState.Failed
                  Message = Some(sprintf "block exited with code %d" code)
                  ExitCode = Some code
                  Stdout = Some(readTail job.StdoutFile)
                  Stderr = Some(readTail job.StderrFile) }

    /// Parsl's defaults.
    static member Defaults =
        { NodesPerBlock = 1
          Launcher = BasicLaunchers.singleNode
          InitBlocks = 1
          MinBlocks = 0
          MaxBlocks = 1
          WorkerInit = ""
          Parallelism = 1.0
          StatusPollingInterval = TimeSpan.FromSeconds 5.0 }

    /// A provider with Parsl's defaults.
    new() = LocalProvider(LocalProvider.Defaults)

    /// The options.
    member _.Options = options

    interface IExecutionProvider with
        member _.Label = "local"
        member _.InitBlocks = options.InitBlocks
        member _.MinBlocks = options.MinBlocks
        member _.MaxBlocks = options.MaxBlocks
        member _.NodesPerBlock = options.NodesPerBlock
        member _.Parallelism = options.Parallelism
        member _.CoresPerNode = None
        member _.MemPerNode = None
        member _.StatusPollingInterval = options.StatusPollingInterval
        member _.WorkerInit = options.WorkerInit
        member _.Launcher = options.Launcher

        member _.Validate() =
            [ if options.NodesPerBlock < 1 then
                  ConfigurationError("LocalProvider.NodesPerBlock", sprintf "must be at least 1 (got %d)" options.NodesPerBlock)
              if options.MinBlocks < 0 then
                  ConfigurationError("LocalProvider.MinBlocks", sprintf "must be 0 or more (got %d)" options.MinBlocks)
              if options.MaxBlocks < options.MinBlocks then
                  ConfigurationError(
                      "LocalProvider.MaxBlocks",
                      sprintf "must be at least MinBlocks (%d), got %d" options.MinBlocks options.MaxBlocks)
              if options.InitBlocks < 0 then
                  ConfigurationError("LocalProvider.InitBlocks", sprintf "must be 0 or more (got %d)" options.InitBlocks)
              if options.Parallelism < 0.0 || options.Parallelism > 1.0 then
                  ConfigurationError("LocalProvider.Parallelism", sprintf "must be between 0 and 1 (got %g)" options.Parallelism)
              if options.StatusPollingInterval <= TimeSpan.Zero then
                  ConfigurationError("LocalProvider.StatusPollingInterval", "must be positive; the default is 5 s")
              if isNull (box options.Launcher) then
                  ConfigurationError("LocalProvider.Launcher", "is null; use BasicLaunchers.singleNode") ]

        member _.Initialize c =
            Directory.CreateDirectory c.ScriptDir |> ignore
            ctx <- Some c

        member _.SubmitAsync(command, tasksPerNode, jobName, _) =
            let c =
                match ctx with
                | Some c -> c
                | None -> invalidOp "LocalProvider.Initialize was not called: the owning executor initializes it"
            let n = Interlocked.Increment &counter
            let stem = Path.Combine(c.ScriptDir, sprintf "%s.%d" jobName n)
            let script = stem + ".sh"
            let launch = options.Launcher.Wrap(command, tasksPerNode, options.NodesPerBlock)
            File.WriteAllText(
                script,
                String.concat "\n" [ "#!/bin/bash"; sprintf "export JOBNAME=%s" jobName; options.WorkerInit; launch; "" ])
            let ec, out, err = stem + ".ec", stem + ".out", stem + ".err"
            File.WriteAllText(ec, "-")
            // setsid puts the block in its own process group (its pgid is this pid), so cancel kills it whole.
            let psi = ProcessStartInfo("setsid")
            for a in [ "/bin/bash"; "-c"; "/bin/bash \"$0\" > \"$1\" 2> \"$2\"; echo $? > \"$3\""; script; out; err; ec ] do
                psi.ArgumentList.Add a
            psi.UseShellExecute <- false
            psi.RedirectStandardInput <- true
            let p = Process.Start psi
            let id = string p.Id
            jobs[id] <-
                { Process = p
                  ExitCodeFile = ec
                  StdoutFile = out
                  StderrFile = err
                  Cancelled = false }
            c.Log.Information("LocalProvider: block {Job} started as pid {Pid}: {Script}", jobName, id, script)
            Task.FromResult id

        member _.StatusAsync(ids, _) =
            ids
            |> List.map (fun id ->
                match jobs.TryGetValue id with
                | true, j -> statusOf j
                | _ -> { JobStatus.ofState JobState.Missing with Message = Some(sprintf "job %s is unknown to this provider" id) })
            |> Task.FromResult

        member _.CancelAsync(ids, ct) =
            task {
                let found = ids |> List.map (fun id -> id, (match jobs.TryGetValue id with | true, j -> Some j | _ -> None))
                for _, j in found do
                    match j with
                    | Some j when not j.Process.HasExited ->
                        j.Cancelled <- true
                        Signals.group j.Process.Id Signals.SIGTERM
                    | Some j -> j.Cancelled <- j.Cancelled || false
                    | None -> ()
                // Give the group a moment to stop cleanly, then kill what is left of it. The whole group, not only its
                // leader: the block's bash ends at SIGTERM at once, while the manager is still stopping its workers and
                // their shell apps (a SIGKILL then would leave those running).
                for _, j in found do
                    match j with
                    | Some j ->
                        let deadline = DateTime.UtcNow.AddSeconds 2.0
                        use cts = CancellationTokenSource.CreateLinkedTokenSource(ct: CancellationToken)
                        cts.CancelAfter(TimeSpan.FromSeconds 2.0)
                        try
                            do! j.Process.WaitForExitAsync(cts.Token)
                            while Signals.groupAlive j.Process.Id && DateTime.UtcNow < deadline do
                                do! Task.Delay(20, ct)
                        with :? OperationCanceledException -> ()
                        Signals.group j.Process.Id Signals.SIGKILL
                    | None -> ()
                return found |> List.map (fun (_, j) -> j.IsSome)
            }
