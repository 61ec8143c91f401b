namespace Parsl.Executors.WorkerLink

open System
open System.IO
open System.Threading.Tasks
open Parsl
open Parsl.Executors
open Parsl.Executors.WorkQueue
open Parsl.Node.HighThroughput
open Parsl.Providers

/// A protocol's own part of a CCTools-style executor, handed to `LinkExecutor` when the executor is made.
type internal LinkExecutorParts<'Line, 'Task, 'Info> =
    { /// The executor's option checks.
      Validate: unit -> ConfigurationError list
      /// What is made before the manager starts (runner files, scripts), under the executor's folder (the argument).
      Prepare: string -> unit
      /// Starts the manager, given the run's context, the executor's folder and the workers' password.
      StartManager: ExecutorContext -> string -> string option -> LinkManagerHandle<'Line, 'Task, 'Info>
      /// A try as the manager's task (`key`, its resources understood).
      Build: ExecTask -> int64 -> ResourceRequest -> 'Task
      /// The command a block runs to start one worker.
      WorkerCommand: string -> string }

/// What a CCTools-style executor holds while it runs: set at start, read by both its shared and its protocol's part.
[<Sealed>]
type internal LinkExecutorState<'Line, 'Task, 'Info>(label: string) =
    let inflight = InFlight<unit>()
    member _.Label = label
    member _.InFlight = inflight
    member val Context = Unchecked.defaultof<ExecutorContext> with get, set
    member val Manager: LinkManagerHandle<'Line, 'Task, 'Info> option = None with get, set
    member val PasswordPath = "" with get, set
    /// This executor's folder in the run directory.
    member val Root = "" with get, set
    /// Where each try's call, result and monitor files are written (one folder a try).
    member val DataDir = "" with get, set
    member val Scaler: WqScalerHandle option = None with get, set
    member val Parts = Unchecked.defaultof<LinkExecutorParts<'Line, 'Task, 'Info>> with get, set
    /// The command a block runs to start one worker: the block's id in its environment, the worker program, the
    /// password file, the protocol's `extra` words, the worker options, then where the manager listens (`port` until
    /// the manager is started).
    member this.WorkerCommand(blockId: string, executable: string, extra: string list, workerOptions: string list, address: string, port: int) =
        let quote = WorkerExecutors.quote
        let port = this.Manager |> Option.map (fun m -> m.Port) |> Option.defaultValue port
        [ yield "PARSL_WORKER_BLOCK_ID=" + quote blockId
          yield quote executable
          if this.PasswordPath <> "" then yield! [ "--password"; quote this.PasswordPath ]
          yield! extra
          yield! workerOptions |> List.map quote
          yield quote address
          yield string port ]
        |> String.concat " "

    /// The manager's settings: where it listens, the workers' password, the keepalive and retries, its transfer
    /// folder under the executor's folder `root`, and the run's log.
    member _.ManagerSettings
        (context: ExecutorContext, root: string, password: string option, address: string, port: int, keepalivePeriod: TimeSpan, keepaliveTimeout: TimeSpan, maxRetries: int)
        : LinkSettings =
        { Label = label
          Address = address
          Port = port
          Password = password
          KeepalivePeriod = keepalivePeriod
          KeepaliveTimeout = keepaliveTimeout
          MaxRetries = maxRetries
          TransferDir = Path.Combine(root, "transfers")
          Log = context.Log }

    /// Reports a try's outcome to the kernel (once; later reports of the same key are ignored).
    member this.Report(key: int64, outcome: Result<obj, exn>) = inflight.Report(this.Context, key, outcome) |> ignore

/// What the Work Queue and TaskVine executors share: the members a program reads (port, workers, blocks, password)
/// and the executor protocol (start: folders, password, manager, block scaler; submit; cancel; shutdown). Each
/// executor adds its options and its protocol's tasks (`LinkExecutorParts`).
[<AbstractClass>]
type LinkExecutor<'Line, 'Task, 'Info>
    internal
    (
        state: LinkExecutorState<'Line, 'Task, 'Info>,
        provider: IExecutionProvider option,
        strategy: Parsl.Jobs.StrategyKind,
        strategyPeriod: TimeSpan,
        maxIdleTime: TimeSpan,
        passwordFile: string option
    ) =
    let label = state.Label

    /// The port workers connect to (after start).
    member _.Port = state.Manager |> Option.map (fun m -> m.Port)

    /// Tries queued or running (Parsl's `outstanding()`).
    member _.Outstanding = state.InFlight.Count

    /// Connections refused so far (wrong or missing password, unknown protocol).
    member _.RejectedConnections = state.Manager |> Option.map (fun m -> m.RejectedCount) |> Option.defaultValue 0

    /// The workers connected now.
    member _.WorkersAsync() : Task<'Info list> =
        match state.Manager with
        | Some m ->
            let q = TaskCompletionSource<'Info list>(TaskCreationOptions.RunContinuationsAsynchronously)
            m.Post(QueryWorkers q)
            q.Task
        | None -> Task.FromResult []

    /// The password file workers must be given (`--password FILE`): `PasswordFile`, or the one made for this run under
    /// its run directory (after start).
    member _.PasswordPath = state.PasswordPath

    /// This executor's folder in the run directory (after start): transfers, worker logs of its blocks.
    member _.RunDirectory = state.Root

    /// The blocks started so far: block id, job id, state.
    member _.BlocksAsync() : Task<(string * string option * JobState) list> = WorkerExecutors.blocks state.Scaler

    interface IExecutor with
        member _.Label = label
        member _.Validate() = state.Parts.Validate()
        member _.CheckResources spec =
            match WqProtocol.request label spec with
            | Ok _ -> None
            | Error e -> Some e

        member _.StartAsync(context, _) =
            task {
                state.Context <- context
                let root = Path.Combine(context.RunDir, label)
                state.Root <- root
                state.DataDir <- Path.Combine(root, "function_data")
                Directory.CreateDirectory state.DataDir |> ignore
                if not (OperatingSystem.IsWindows()) then
                    File.SetUnixFileMode(root, UnixFileMode.UserRead ||| UnixFileMode.UserWrite ||| UnixFileMode.UserExecute)
                state.Parts.Prepare root
                // Without a PasswordFile, a password is made for this run (owner-only file): only workers given it
                // (the executor's blocks get it) can join, so no other local process can pose as a worker.
                state.PasswordPath <- WorkerExecutors.runPassword passwordFile root
                let password = Some(File.ReadAllText state.PasswordPath)
                state.Manager <- Some(state.Parts.StartManager context root password)
                state.Scaler <-
                    WorkerExecutors.startScaler
                        label
                        provider
                        context
                        strategy
                        strategyPeriod
                        maxIdleTime
                        state.Parts.WorkerCommand
                        (fun () -> state.InFlight.Count)
            }
            :> Task

        member _.Submit t =
            WorkerExecutors.submit state.Context label state.InFlight (state.Manager |> Option.map (fun m -> SubmitTask >> m.Post)) state.Parts.Build t

        member _.Cancel(id, tryId) =
            state.Manager |> Option.iter (fun m -> m.Post(CancelTask(Protocol.key id.Value tryId.Value)))

        member _.ShutdownAsync(wait) =
            task {
                if wait then
                    // Tries already submitted finish first (Parsl's wait-for-tasks shutdown).
                    do! state.InFlight.WhenEmpty()
                match state.Manager with
                | Some m -> do! WorkerExecutors.stopActor (fun r -> m.Post(StopManager r)) m.Completion
                | None -> ()
                do! WorkerExecutors.stopScaler state.Scaler provider
                for k in state.InFlight.Keys do
                    state.Report(k, Error(KernelShutdownError(TaskId(fst (Protocol.ofKey k)))))
            }
            :> Task
