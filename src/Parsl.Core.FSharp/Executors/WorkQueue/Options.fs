namespace Parsl.Executors.WorkQueue

open System
open System.IO
open Parsl
open Parsl.Providers

/// The options of a `WorkQueueExecutor`, with Parsl's names where Parsl has them. Build them from the defaults:
/// `{ WorkQueueOptions.defaults () with Port = 9123 }`.
type WorkQueueOptions =
    { /// Default "WorkQueueExecutor".
      Label: string
      /// The address the manager listens on; workers connect to it. Default "127.0.0.1".
      Address: string
      /// The port; 0 picks a free one (read it from the executor's `Port` after start). Default 0 (Parsl: 9123).
      Port: int
      /// A file holding the password workers must prove they know (`work_queue_worker --password FILE`): its
      /// exact bytes, a trailing newline included. Default None: a password is made for each run (the executor's
      /// `PasswordPath`, owner-only) and given to the executor's blocks; set this to start workers by hand.
      PasswordFile: string option
      /// Where blocks of workers come from; each block runs `work_queue_worker <address> <port>`. Default None:
      /// no blocks, workers are started by hand (or by a factory) and connect.
      Provider: IExecutionProvider option
      /// How blocks are scaled (Parsl's `Config.strategy`): `InitBlocks` at start, then more under load up to
      /// `MaxBlocks`, and back to `MinBlocks` once no task is outstanding. Default `Simple`.
      Strategy: Parsl.Jobs.StrategyKind
      /// How often the strategy runs. Default 5 s.
      StrategyPeriod: TimeSpan
      /// Parsl's `max_idletime`. Default 120 s.
      MaxIdleTime: TimeSpan
      /// The worker program blocks run. Default "work_queue_worker".
      WorkerExecutable: string
      /// Blocks start their workers with our long-lived .NET runner (`--coprocess`; protocol 10 and later, so not
      /// Debian's worker): function apps then skip a `dotnet` start per task. Needs the runner's folder on a file
      /// system the block's nodes see. Workers started by hand get it with `--coprocess <executor.CoprocessScript>`.
      /// Default false.
      LongLivedRunner: bool
      /// Extra arguments for each worker a block starts (Parsl's `worker_options`, as words). Default [].
      WorkerOptions: string list
      /// A shell command run before every task's command (Parsl's `init_command`). Default "".
      InitCommand: string
      /// Environment variables set for every task (Parsl's `env`, which Parsl stores and never applies). Default empty.
      Env: Map<string, string>
      /// Workers see the client's files at the same paths: `File`s are used in place, not staged. Default false.
      SharedFs: bool
      /// Each task's category is its app's name (Parsl's `autocategory`); else "parsl-default". Default true.
      Autocategory: bool
      /// Dispatches of a task before its worker's loss fails it with `WorkerLost` (Work Queue's `max_retries`). The
      /// default 1 leaves retrying to the kernel (`Config.Retries`), as Parsl does.
      MaxRetries: int
      /// How often an idle worker is asked whether it is alive. Default 30 s.
      KeepalivePeriod: TimeSpan
      /// A worker silent this long is lost and its tasks re-run elsewhere. Default 120 s.
      KeepaliveTimeout: TimeSpan
      /// CCTools' `resource_monitor` on the workers: a task that declares `memory` runs under it and fails with
      /// `WorkQueueResourceExhaustion` when it goes over (the worker itself enforces only disk and run time).
      /// Default None: memory is placement only, as in Parsl without monitoring.
      ResourceMonitor: string option
      /// The program that runs the .NET task runner on workers. Default: the `dotnet` running this process, else
      /// "dotnet" from the worker's PATH.
      DotnetCommand: string
      /// The folder holding `Parsl.Workers.dll` and its dependencies, sent once to each worker and cached there.
      /// Default: the application's directory (reference the Parsl.Workers project or package).
      RunnerDirectory: string }

/// Functions over Work Queue options.
[<RequireQualifiedAccess>]
module WorkQueueOptions =
    /// The defaults (a function: each call is a fresh value).
    let defaults () =
        { Label = "WorkQueueExecutor"
          Address = "127.0.0.1"
          Port = 0
          PasswordFile = None
          Provider = None
          Strategy = Parsl.Jobs.Simple
          StrategyPeriod = TimeSpan.FromSeconds 5.0
          MaxIdleTime = TimeSpan.FromSeconds 120.0
          WorkerExecutable = "work_queue_worker"
          LongLivedRunner = false
          WorkerOptions = []
          InitCommand = ""
          Env = Map.empty
          SharedFs = false
          Autocategory = true
          MaxRetries = 1
          KeepalivePeriod = TimeSpan.FromSeconds 30.0
          KeepaliveTimeout = TimeSpan.FromSeconds 120.0
          ResourceMonitor = None
          DotnetCommand = Parsl.Executors.WorkerLink.WorkerOptionRules.defaultDotnet ()
          RunnerDirectory = AppContext.BaseDirectory }

    /// Every problem, each naming its field and the fix.
    let validate (o: WorkQueueOptions) : ConfigurationError list =
        let f name = sprintf "WorkQueueExecutor.%s" name
        let rules = Parsl.Executors.WorkerLink.WorkerOptionRules.manager f "WorkQueueExecutor" "work_queue_worker"
        [ yield!
              rules o.Label o.Address o.Port o.PasswordFile o.Provider o.StrategyPeriod o.MaxIdleTime o.WorkerExecutable o.WorkerOptions
          yield! Parsl.Executors.WorkerLink.WorkerOptionRules.tasks f o.InitCommand o.Env o.MaxRetries o.KeepalivePeriod o.KeepaliveTimeout
          match o.ResourceMonitor with
          | Some m when String.IsNullOrWhiteSpace m -> ConfigurationError(f "ResourceMonitor", "is empty; give \"resource_monitor\" or a path, or None")
          | _ -> ()
          yield! Parsl.Executors.WorkerLink.WorkerOptionRules.runner f o.DotnetCommand o.RunnerDirectory ]
