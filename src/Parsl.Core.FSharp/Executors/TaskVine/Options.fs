namespace Parsl.Executors.TaskVine

open System
open System.IO
open Parsl
open Parsl.Providers

/// How function apps run on the workers (Parsl's `function_exec_mode`).
type FunctionExecMode =
    /// Each call starts the .NET task runner (`dotnet Parsl.Workers.dll`) in its task's sandbox.
    | Regular = 0
    /// Each worker keeps one long-lived .NET library process (a TaskVine library task) that serves the calls: no
    /// `dotnet` start per call.
    | Serverless = 1

/// The options of a `TaskVineExecutor`, with Parsl's names where Parsl has them. Build them from the defaults:
/// `{ TaskVineOptions.defaults () with Port = 9123 }`.
type TaskVineOptions =
    { /// Default "TaskVineExecutor".
      Label: string
      /// The address the manager listens on; workers connect to it. Default "127.0.0.1".
      Address: string
      /// The port; 0 picks a free one (read it from the executor's `Port` after start). Default 0 (Parsl: 9123).
      Port: int
      /// A file holding the password workers must prove they know (`vine_worker --password FILE`). Default None: a
      /// password is made for each run (the executor's `PasswordPath`, owner-only) and given to the executor's blocks.
      PasswordFile: string option
      /// Where blocks of workers come from; each block runs `vine_worker <address> <port>`. Default None: workers are
      /// started by hand and connect.
      Provider: IExecutionProvider option
      /// How blocks are scaled (Parsl's `Config.strategy`). Default `Simple`.
      Strategy: Parsl.Jobs.StrategyKind
      /// How often the strategy runs. Default 5 s.
      StrategyPeriod: TimeSpan
      /// Parsl's `max_idletime`. Default 120 s.
      MaxIdleTime: TimeSpan
      /// The worker program blocks run. Default "vine_worker".
      WorkerExecutable: string
      /// Extra arguments for each worker a block starts (as words). Default [].
      WorkerOptions: string list
      /// `Regular` (a runner start per call) or `Serverless` (a long-lived library per worker). Default `Regular`.
      FunctionExecMode: FunctionExecMode
      /// A shell command run before every task's command (Parsl's `init_command`). Default "".
      InitCommand: string
      /// Environment variables set for every task (Parsl's `env_vars`). Default empty.
      Env: Map<string, string>
      /// Workers see the client's files at the same paths: `File`s are used in place, not staged. Default false.
      SharedFs: bool
      /// A cached file (a `File` input, an output kept on its worker) that another worker already holds is fetched
      /// from that worker's transfer server instead of being sent from here (Parsl's `enable_peer_transfers`). The
      /// transfer server of `vine_worker` listens on all interfaces and asks for no password, so this is off by
      /// default: turn it on where the workers' network is private. Default false.
      PeerTransfers: bool
      /// Each task's category is its app's name; else "parsl-default". Default true.
      Autocategory: bool
      /// Dispatches of a task before its worker's loss fails it with `WorkerLost`. The default 1 leaves retrying to
      /// the kernel (`Config.Retries`), as Parsl does.
      MaxRetries: int
      /// How often an idle worker is asked whether it is alive. Default 30 s.
      KeepalivePeriod: TimeSpan
      /// A worker silent this long is lost and its tasks re-run elsewhere. Default 120 s.
      KeepaliveTimeout: TimeSpan
      /// The program that runs the .NET task runner on workers. Default: the `dotnet` running this process, else
      /// "dotnet" from the worker's PATH.
      DotnetCommand: string
      /// The folder holding `Parsl.Workers.dll` and its dependencies, sent once to each worker and cached there.
      /// Default: the application's directory.
      RunnerDirectory: string }

/// Functions over TaskVine options.
[<RequireQualifiedAccess>]
module TaskVineOptions =
    /// The defaults (a function: each call is a fresh value).
    let defaults () =
        { Label = "TaskVineExecutor"
          Address = "127.0.0.1"
          Port = 0
          PasswordFile = None
          Provider = None
          Strategy = Parsl.Jobs.Simple
          StrategyPeriod = TimeSpan.FromSeconds 5.0
          MaxIdleTime = TimeSpan.FromSeconds 120.0
          WorkerExecutable = "vine_worker"
          WorkerOptions = []
          FunctionExecMode = FunctionExecMode.Regular
          InitCommand = ""
          Env = Map.empty
          SharedFs = false
          PeerTransfers = false
          Autocategory = true
          MaxRetries = 1
          KeepalivePeriod = TimeSpan.FromSeconds 30.0
          KeepaliveTimeout = TimeSpan.FromSeconds 120.0
          DotnetCommand = Parsl.Executors.WorkerLink.WorkerOptionRules.defaultDotnet ()
          RunnerDirectory = AppContext.BaseDirectory }

    /// Every problem, each naming its field and the fix.
    let validate (o: TaskVineOptions) : ConfigurationError list =
        let f name = sprintf "TaskVineExecutor.%s" name
        let rules = Parsl.Executors.WorkerLink.WorkerOptionRules.manager f "TaskVineExecutor" "vine_worker"
        [ yield!
              rules o.Label o.Address o.Port o.PasswordFile o.Provider o.StrategyPeriod o.MaxIdleTime o.WorkerExecutable o.WorkerOptions
          if not (Enum.IsDefined o.FunctionExecMode) then
              ConfigurationError(f "FunctionExecMode", sprintf "%O is not a mode; give Regular or Serverless" o.FunctionExecMode)
          yield! Parsl.Executors.WorkerLink.WorkerOptionRules.tasks f o.InitCommand o.Env o.MaxRetries o.KeepalivePeriod o.KeepaliveTimeout
          yield! Parsl.Executors.WorkerLink.WorkerOptionRules.runner f o.DotnetCommand o.RunnerDirectory ]
