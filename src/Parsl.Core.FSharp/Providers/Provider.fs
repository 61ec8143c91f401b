namespace Parsl.Providers

open System
open System.Threading
open System.Threading.Tasks
open Parsl

/// A block's (batch job's) state, as Parsl's `JobState` (`parsl/jobs/states.py`).
type JobState =
    /// The provider cannot tell.
    | Unknown
    /// Queued.
    | Pending
    /// Running.
    | Running
    /// Cancelled (terminal).
    | Cancelled
    /// Finished (terminal).
    | Completed
    /// Failed (terminal).
    | Failed
    /// Hit its walltime (terminal).
    | Timeout
    /// Held by the scheduler.
    | Held
    /// The scheduler no longer knows the job (terminal).
    | Missing
    /// Submission failed (terminal; set by the executor, never by a provider).
    | ScalingFailed

/// Functions over job states.
[<RequireQualifiedAccess>]
module JobState =
    /// Terminal states (Parsl's `TERMINAL_STATES`).
    let isTerminal s =
        match s with
        | Cancelled | Completed | Failed | Timeout | Missing | ScalingFailed -> true
        | _ -> false

    /// Parsl's name (`PENDING`, `RUNNING`, ...).
    let name (s: JobState) =
        match s with
        | ScalingFailed -> "SCALING_FAILED"
        | s -> (sprintf "%A" s).ToUpperInvariant()

/// A block's status (Parsl's `JobStatus`): state, and for failures the exit code and the job's output.
type JobStatus =
    { State: JobState
      Message: string option
      ExitCode: int option
      Stdout: string option
      Stderr: string option }

/// Functions over job statuses.
[<RequireQualifiedAccess>]
module JobStatus =
    /// A status with only a state.
    let ofState s =
        { State = s
          Message = None
          ExitCode = None
          Stdout = None
          Stderr = None }

/// Places the worker pool on a block's nodes: a pure function from (command, tasks per node, nodes per block)
/// to the command line the batch script runs (Parsl's launchers, `parsl/launchers/launchers.py`).
type ILauncher =
    /// The launcher's name, as in Parsl (`SimpleLauncher`, `SrunLauncher`, ...).
    abstract Name: string
    /// The launch line.
    abstract Wrap: command: string * tasksPerNode: int * nodesPerBlock: int -> string

/// What a provider is given by the executor that owns it.
type ProviderContext =
    { /// Where submit scripts and their stdout/stderr go (`runinfo/NNN/submit_scripts`).
      ScriptDir: string
      Log: Serilog.ILogger }

/// Gets blocks from a resource manager (Parsl's `ExecutionProvider`, `parsl/providers/base.py`).
///
///   executor ──SubmitAsync(cmd, tasks/node, name)──▶ provider ──▶ resource manager   → job id
///   executor ──StatusAsync(job ids)────────────────▶ provider ──▶ (squeue, qstat, …) → JobStatus per id
///   executor ──CancelAsync(job ids)────────────────▶ provider ──▶ (scancel, qdel, …) → bool per id
///
/// `InitBlocks`/`MinBlocks`/`MaxBlocks`/`Parallelism` feed the scaling strategy; `NodesPerBlock` and the
/// launcher decide how many managers a block runs.
type IExecutionProvider =
    /// The provider's name (`local`, `slurm`, ...).
    abstract Label: string
    /// Blocks started when the executor starts.
    abstract InitBlocks: int
    /// Blocks kept at least.
    abstract MinBlocks: int
    /// Blocks at most.
    abstract MaxBlocks: int
    /// Nodes in each block.
    abstract NodesPerBlock: int
    /// How aggressively to scale out: 0 = only when idle blocks run out, 1 = one slot per task.
    abstract Parallelism: float
    /// Cores per node, when known (bounds workers per node).
    abstract CoresPerNode: int option
    /// Memory per node in GB, when known (bounds workers per node).
    abstract MemPerNode: float option
    /// How often the executor asks for status.
    abstract StatusPollingInterval: TimeSpan
    /// Shell commands run in the block before the worker pool (Parsl's `worker_init`).
    abstract WorkerInit: string
    /// How the worker pool is placed on the block's nodes.
    abstract Launcher: ILauncher
    /// Checks the options; each error names its field.
    abstract Validate: unit -> ConfigurationError list
    /// Called once by the owning executor before the first submit.
    abstract Initialize: ProviderContext -> unit
    /// Submits one block running `command`; returns its job id.
    abstract SubmitAsync: command: string * tasksPerNode: int * jobName: string * CancellationToken -> Task<string>
    /// The status of each job, in order.
    abstract StatusAsync: jobIds: string list * CancellationToken -> Task<JobStatus list>
    /// Cancels jobs; true for each one cancelled.
    abstract CancelAsync: jobIds: string list * CancellationToken -> Task<bool list>

/// The two launchers every provider needs; the rest live beside them in `Launchers.fs`.
[<RequireQualifiedAccess>]
module BasicLaunchers =
    /// Runs the command once, as is (Parsl's `SimpleLauncher`).
    let simple =
        { new ILauncher with
            member _.Name = "SimpleLauncher"
            member _.Wrap(command, _, _) = command }

    /// Runs `tasksPerNode × nodesPerBlock` copies of the command in the background on the block's first node
    /// and waits for them all (Parsl's `SingleNodeLauncher`). The block exits 0 if any copy succeeded (with
    /// `failOnAny`: only if all did); otherwise with the exit code of the last copy that failed. `CORES` is
    /// exported as the node's online core count.
    let singleNodeWith (failOnAny: bool) =
        { new ILauncher with
            member _.Name = "SingleNodeLauncher"
            member _.Wrap(command, tasksPerNode, nodesPerBlock) =
                let copies = max 1 (tasksPerNode * nodesPerBlock)
                String.concat "\n" [
                    "export CORES=$(getconf _NPROCESSORS_ONLN)"
                    sprintf "PARSL_COPIES=%d" copies
                    sprintf "PARSL_FAIL_ON_ANY=%d" (if failOnAny then 1 else 0)
                    "parsl_launch_one() {"
                    command
                    "}"
                    "PARSL_PIDS=\"\""
                    // A bash loop, not `$(seq ...)`: one process start less before the manager starts.
                    "for ((PARSL_I = 1; PARSL_I <= PARSL_COPIES; PARSL_I++)); do"
                    "    parsl_launch_one $PARSL_I &"
                    "    PARSL_PIDS=\"$PARSL_PIDS $!\""
                    "done"
                    "PARSL_OK=0; PARSL_FAILED=0; PARSL_CODE=0"
                    "for PARSL_PID in $PARSL_PIDS; do"
                    "    wait $PARSL_PID; PARSL_RC=$?"
                    "    if [ $PARSL_RC -eq 0 ]; then PARSL_OK=1; else PARSL_FAILED=1; PARSL_CODE=$PARSL_RC; fi"
                    "done"
                    "if [ $PARSL_FAIL_ON_ANY -eq 1 ] && [ $PARSL_FAILED -eq 1 ]; then exit $PARSL_CODE; fi"
                    "if [ $PARSL_OK -eq 0 ] && [ $PARSL_FAILED -eq 1 ]; then exit $PARSL_CODE; fi"
                    "exit 0"
                    "" ] }

    /// `singleNodeWith false`: Parsl's default launcher for most providers.
    let singleNode = singleNodeWith false
