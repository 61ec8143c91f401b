namespace Parsl

open Parsl.Executors
open Parsl.Data

/// What happens when a kernel used with `use`/`await using` is disposed (Parsl's `Config.exit_mode`).
type ExitMode =
    /// Stop accepting tasks, let running tries finish, fail what is left with `KernelShutdownError` (default).
    | Cleanup
    /// Wait for every task to finish, then clean up.
    | Wait
    /// Stop at once: running tries are stopped, and unfinished futures fail with `KernelShutdownError`.
    | Skip

/// Where futures are looked for in an app's arguments (Parsl's `dependency_resolver`).
type DependencyResolver =
    /// Only futures passed directly as arguments (Parsl's default).
    | Shallow
    /// Also futures inside arrays, lists, sets, maps, dictionaries and tuples, at any depth.
    | Deep

/// What a retry handler is told about the failed task (the parts of Parsl's task record it uses).
type TaskInfo =
    { Id: TaskId
      AppName: string
      /// The try that failed.
      Try: int
      /// Failures so far, including this one.
      FailCount: int
      Executor: string }

/// The kernel's configuration (Parsl's `Config`). Build it from `Config.defaults` with `{ ... with }`.
type Config =
    { /// The executors. Empty means one `ThreadPoolExecutor` labelled `threads`. Labels must be unique.
      Executors: IExecutor list
      /// The retry budget compared with each task's accumulated failure cost. Default 0.
      Retries: int
      /// Returns the cost of a failure (default 1 per failure). If it throws, the task fails with its exception.
      RetryHandler: (exn -> TaskInfo -> float) option
      /// The base run directory; each kernel gets a numbered one inside it. Default `runinfo`.
      RunDir: string
      /// What disposal does. Default `Cleanup`.
      ExitMode: ExitMode
      /// Default `Shallow`.
      DependencyResolver: DependencyResolver
      /// Write `parsl.log` in the run directory. Default true.
      InitializeLogging: bool
      /// The log file's minimum level. Default Information (Debug logs every task transition).
      LogLevel: Serilog.Events.LogEventLevel
      /// Threads of the internal executor that runs join app bodies. Default 10.
      InternalTasksMaxThreads: int
      /// Back-pressure (Parsl has none, its issue #1347): an app call blocks while this many tasks are unfinished,
      /// so a loop submitting millions of tasks holds memory for at most this many. 0 = unbounded (default).
      /// Calls made from inside a running task are never blocked, so nested workflows cannot deadlock.
      MaxTasksInFlight: int
      /// Memoize the calls of apps created with `AppOptions.Cache = true` (Parsl's `app_cache`). Default true.
      AppCache: bool
      /// When to write checkpoints of cached tasks' results to `runinfo/NNN/checkpoint/` (Parsl's
      /// `checkpoint_mode`). Default None: no checkpoints.
      CheckpointMode: CheckpointMode option
      /// How often `Periodic` checkpoints are written (Parsl's `checkpoint_period`); required by `Periodic`.
      CheckpointPeriod: System.TimeSpan option
      /// Checkpoints to load: checkpoint directories (`runinfo/NNN/checkpoint`) or checkpoint files; their
      /// results are reused, and those calls do not run. Default None: when `CheckpointMode` is set, every
      /// checkpoint under `RunDir` (as current Parsl); otherwise none. See `Checkpoints.all`/`Checkpoints.last`.
      CheckpointFiles: string list option
      /// Memo encodings for argument types of the user's own (Parsl's `id_for_memo.register`). Default none.
      MemoHashers: (System.Type * MemoHasher) list
      /// Staging providers, tried in order for each file (Parsl's `storage_access`). Default
      /// `StagingProvider.defaults`: no-op for local files, FTP, HTTP and zip as separate tasks.
      Staging: StagingProvider list
      /// Where staged-in files (and zip members before they are added to the archive) are written
      /// (Parsl's executor `working_dir`). Default None: `data/` in the run directory.
      StagingDir: string option
      /// More places the run's log events go, beside `parsl.log` (the C# façade forwards them to an
      /// `ILoggerFactory`). They get events at `LogLevel` and above, even when `InitializeLogging` is false.
      /// Default none.
      LogSinks: Serilog.Core.ILogEventSink list

      /// SIGTERM and SIGINT (Ctrl-C) of this process stop the kernel first, as a dispose with `Skip` would
      /// (managers, workers and running shell apps are stopped, unfinished futures fail with `KernelShutdownError`),
      /// and then the process ends as the signal intends. Default true. False leaves the signals alone: the
      /// process then ends at once, and managers on other hosts run on until `HeartbeatThreshold`.
      HandleSignals: bool


      /// Monitoring: the database with Parsl's tables, events, counts, the dashboard and progress display.
      /// Default None: off. `Some MonitoringConfig.defaults` turns it on.
      Monitoring: MonitoringConfig option }

/// Functions over configurations.
[<RequireQualifiedAccess>]
module Config =
    /// The label of the kernel's internal executor (join app bodies).
    [<Literal>]
    let InternalLabel = "_parsl_internal"

    /// Parsl's defaults.
    let defaults =
        { Executors = []
          Retries = 0
          RetryHandler = None
          RunDir = "runinfo"
          ExitMode = Cleanup
          DependencyResolver = Shallow
          InitializeLogging = true
          LogLevel = Serilog.Events.LogEventLevel.Information
          InternalTasksMaxThreads = 10
          MaxTasksInFlight = 0
          AppCache = true
          CheckpointMode = None
          CheckpointPeriod = None
          CheckpointFiles = None
          MemoHashers = []
          Staging = StagingProvider.defaults
          StagingDir = None
          LogSinks = []
          HandleSignals = true

          Monitoring = None }

    /// Every problem with a configuration, each naming its field and the fix. Empty when it is valid.
    let validate (c: Config) : ConfigurationError list =
        [ if c.Retries < 0 then
              ConfigurationError("Config.Retries", sprintf "must be 0 or more (got %d); use 0 for no retries" c.Retries)
          if isNull c.RunDir || c.RunDir.Trim() = "" then
              ConfigurationError("Config.RunDir", "must be a directory path; the default is \"runinfo\"")
          if c.InternalTasksMaxThreads <= 0 then
              ConfigurationError(
                  "Config.InternalTasksMaxThreads",
                  sprintf "must be at least 1 (got %d); the default is 10" c.InternalTasksMaxThreads)
          if c.MaxTasksInFlight < 0 then
              ConfigurationError(
                  "Config.MaxTasksInFlight",
                  sprintf "must be 0 (unbounded) or a positive bound (got %d)" c.MaxTasksInFlight)
          if c.Executors |> List.exists (box >> isNull) then
              ConfigurationError("Config.Executors", "contains a null executor; remove it")
          let labels = c.Executors |> List.filter (box >> isNull >> not) |> List.map (fun e -> e.Label)
          for l in labels |> List.countBy id |> List.filter (fun (_, n) -> n > 1) |> List.map fst do
              ConfigurationError(
                  "Config.Executors",
                  sprintf "the label '%s' is used by more than one executor; give each executor a unique Label" l)
          for l in labels do
              if l = InternalLabel then
                  ConfigurationError("Config.Executors", sprintf "the label '%s' is reserved; choose another Label" l)
              if isNull l || l.Trim() = "" then
                  ConfigurationError("Config.Executors", "an executor has an empty Label; give it a name")
          for e in c.Executors |> List.filter (box >> isNull >> not) do
              yield! e.Validate()
          match c.CheckpointMode, c.CheckpointPeriod with
          | Some Periodic, None ->
              ConfigurationError(
                  "Config.CheckpointPeriod",
                  "is required by CheckpointMode Periodic; set it, e.g. Some(TimeSpan.FromMinutes 30.0)")
          | _, Some p when p <= System.TimeSpan.Zero ->
              ConfigurationError("Config.CheckpointPeriod", sprintf "must be positive (got %O)" p)
          | _ -> ()
          match c.CheckpointFiles with
          | Some files when files |> List.exists (fun f -> isNull f || f.Trim() = "") ->
              ConfigurationError("Config.CheckpointFiles", "contains an empty path; list checkpoint directories or files")
          | _ -> ()
          if isNull (box c.Staging) then
              ConfigurationError("Config.Staging", "is null; use StagingProvider.defaults or a list of providers")
          match c.StagingDir with
          | Some d when isNull d || d.Trim() = "" ->
              ConfigurationError("Config.StagingDir", "is empty; give a directory, or None for data/ in the run directory")
          | _ -> ()
          match c.Monitoring with
          | Some m -> yield! MonitoringConfig.validate m
          | None -> ()
          for t, h in c.MemoHashers do
              if isNull t || isNull (box h) then
                  ConfigurationError("Config.MemoHashers", "has a null type or hasher; each entry is (type, value -> bytes)") ]
