namespace Parsl.Monitoring

open System
open Parsl
open Parsl.Node.Monitoring

/// A manager as an executor reports it (one `node` row).
type NodeSnapshot =
    { Hostname: string
      /// The manager's id (Parsl's `uid`).
      Uid: string
      BlockId: string
      /// None when the manager is on another host and did not say.
      CpuCount: int option
      TotalMemory: int64 option
      Active: bool
      WorkerCount: int }

/// A block as an executor reports it (one `block` row per change of status).
type BlockSnapshot =
    { BlockId: string
      JobId: string option
      /// Parsl's `JobState` name (`PENDING`, `RUNNING`, `COMPLETED`, `SCALED_IN`, ...).
      Status: string }

/// An executor that can tell monitoring about its managers and blocks (the HTEx). Polled by the monitor.
type IMonitoredExecutor =
    /// The managers connected now and every block started, with its status.
    abstract MonitoringSnapshotAsync: unit -> System.Threading.Tasks.Task<NodeSnapshot list * BlockSnapshot list>
    /// Called before the executor starts: its workers sample their tries into this radio directory.
    abstract EnableResourceMonitoring: radioDir: string * interval: System.TimeSpan -> unit

/// What the kernel's shell tells the monitoring actor. Times are UTC; the writer converts them.
type MonitoringRecord =
    /// A task was submitted.
    | TaskSubmitted of task: int * app: string * executor: string * depends: int list * memoize: bool * timeUtc: DateTime
    /// A task changed state (a `status` row).
    | StateChanged of task: int * tryId: int * state: TaskState * timeUtc: DateTime
    /// A try was handed to its executor, with its standard streams' paths.
    | TryLaunched of task: int * tryId: int * executor: string * stdout: string * stderr: string * timeUtc: DateTime
    /// A worker started the try's body (`running`), on this host.
    | TryRunning of task: int * tryId: int * hostname: string * blockId: string * timeUtc: DateTime
    /// A worker's try body returned or threw (`running_ended`).
    | TryRunningEnded of task: int * tryId: int * timeUtc: DateTime
    /// The try ended; on failure, the exception's type and message.
    | TryEnded of task: int * tryId: int * failure: (string * string) option * timeUtc: DateTime
    /// The task is final.
    | TaskFinal of task: int * state: TaskState * failCount: int * failCost: float * timeUtc: DateTime
    /// An executor's managers and blocks, polled.
    | ExecutorSnapshot of executor: string * nodes: NodeSnapshot list * blocks: BlockSnapshot list * timeUtc: DateTime
    /// Resource samples from workers.
    | Resources of ResourceSample list

/// Parsl's value formats in the database.
[<RequireQualifiedAccess>]
module ParslFormat =
    /// SQLAlchemy's text for a DateTime in SQLite, in local time as Parsl writes it: `YYYY-MM-DD HH:MM:SS.ffffff`.
    let time (utc: DateTime) =
        DateTime.SpecifyKind(utc, DateTimeKind.Utc).ToLocalTime().ToString("yyyy-MM-dd HH:mm:ss.ffffff", Globalization.CultureInfo.InvariantCulture)

    /// Reads a time written by `time` (or by Parsl), as UTC.
    let parseTime (text: string) =
        DateTime.SpecifyKind(
            DateTime.ParseExact(
                text,
                [| "yyyy-MM-dd HH:mm:ss.ffffff"; "yyyy-MM-dd HH:mm:ss" |],
                Globalization.CultureInfo.InvariantCulture,
                Globalization.DateTimeStyles.None),
            DateTimeKind.Local)
            .ToUniversalTime()

    /// Parsl's `task_depends`: comma-separated task ids.
    let depends (ids: int list) = String.Join(",", ids)

    /// Parsl's `task_fail_history`: messages joined with "; ".
    let failHistory (messages: string list) = String.Join("; ", messages)

/// A progress display in the terminal.
type IProgressDisplay =
    inherit System.IAsyncDisposable
