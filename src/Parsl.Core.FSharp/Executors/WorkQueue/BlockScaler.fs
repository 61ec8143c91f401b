namespace Parsl.Executors.WorkQueue

open System
open System.Collections.Generic
open System.Threading
open System.Threading.Channels
open System.Threading.Tasks
open Parsl.Jobs
open Parsl.Providers

/// Requests to the block scaler.
type WqScalerRequest =
    | ScalerPoll
    | ScalerBlocks of TaskCompletionSource<(string * string option * JobState) list>
    | StopScaler of TaskCompletionSource<unit>

/// What the scaler needs from its executor.
type WqScalerSettings =
    { Label: string
      Provider: IExecutionProvider
      Kind: StrategyKind
      Period: TimeSpan
      MaxIdleTime: TimeSpan
      /// The command a block runs for a block id.
      LaunchCommand: string -> string
      /// Tries queued or running.
      Outstanding: unit -> int
      Log: Serilog.ILogger }

/// The handle of a running scaler.
[<Sealed>]
type WqScalerHandle internal (channel: Channel<WqScalerRequest>, completion: Task) =
    /// Sends a request. Never blocks.
    member _.Post r = channel.Writer.TryWrite r |> ignore
    /// Ends when the loop ended.
    member _.Completion = completion

/// Blocks of Work Queue workers, scaled by Parsl's strategy (`Strategy.decide`, pure): polls the provider for the
/// blocks' states, asks the strategy, submits or cancels blocks. One actor. It stays apart from the HTEx's
/// `BlockPoller`, whose submit and poll steps look the same, because what surrounds them differs: the poller holds a
/// block at the interchange before cancelling it, runs the block error handler on each block's full `JobStatus`
/// (exit code, stdout, stderr), and scales in the blocks whose managers report idle; a Work Queue worker says
/// nothing of its block, so this scaler only counts blocks and scales in when no task is outstanding. The decisions
/// themselves are already shared (`Strategy.decide`). A worker takes many tasks, so the
/// strategy counts one task slot per block. Scale-in happens when no task is outstanding (`Simple`): idle-only
/// scale-in (`HtexAutoScale` while tasks remain) is not done, as a worker does not say which block it is in.
[<RequireQualifiedAccess>]
module WqBlockScaler =
    type private Block =
        { Id: string
          mutable JobId: string option
          mutable State: JobState
          mutable ScaledIn: bool }

    /// Starts the scaler; its first poll (which starts `InitBlocks`) runs at once.
    let start (s: WqScalerSettings) : WqScalerHandle =
        let channel = Channel.CreateUnbounded<WqScalerRequest>(UnboundedChannelOptions(SingleReader = true))
        let blocks = List<Block>()
        let mutable nextId = 0
        let mutable first = true
        let mutable idleSince: DateTime option = None
        let mutable lastStatus = DateTime.MinValue
        let stopTimer = new CancellationTokenSource()
        let live () = blocks |> Seq.filter (fun b -> not b.ScaledIn && not (JobState.isTerminal b.State)) |> List.ofSeq

        let scaleOut n =
            task {
                for _ in 1..n do
                    let id = string nextId
                    nextId <- nextId + 1
                    let b = { Id = id; JobId = None; State = Pending; ScaledIn = false }
                    blocks.Add b
                    try
                        let! job = s.Provider.SubmitAsync(s.LaunchCommand id, 1, sprintf "parsl.%s.block-%s" s.Label id, CancellationToken.None)
                        b.JobId <- Some job
                        s.Log.Information("{Label}: block {Block} submitted as job {Job}", s.Label, id, job)
                    with e ->
                        b.State <- ScalingFailed
                        s.Log.Error(e, "{Label}: block {Block} could not be submitted", s.Label, id)
            }

        let cancel (chosen: Block list) =
            task {
                let jobs = chosen |> List.choose (fun b -> b.JobId)
                if not jobs.IsEmpty then
                    let! _ = s.Provider.CancelAsync(jobs, CancellationToken.None)
                    ()
                for b in chosen do
                    b.ScaledIn <- true
                    b.State <- Cancelled
            }

        let poll () =
            task {
                let now = DateTime.UtcNow
                if now - lastStatus >= s.Provider.StatusPollingInterval then
                    lastStatus <- now
                    let polled = live () |> List.filter (fun b -> b.JobId.IsSome)
                    if not polled.IsEmpty then
                        let! statuses = s.Provider.StatusAsync(polled |> List.map (fun b -> b.JobId.Value), CancellationToken.None)
                        for b, st in List.zip polled statuses do
                            b.State <- st.State
                let running = live () |> List.filter (fun b -> b.State = Running) |> List.length
                let pending = live () |> List.filter (fun b -> b.State = Pending || b.State = Unknown) |> List.length
                let out =
                    Strategy.decide
                        { Kind = s.Kind
                          FirstPoll = first
                          ActiveTasks = s.Outstanding()
                          RunningBlocks = running
                          PendingBlocks = pending
                          TasksPerNode = 1
                          NodesPerBlock = s.Provider.NodesPerBlock
                          InitBlocks = s.Provider.InitBlocks
                          MinBlocks = s.Provider.MinBlocks
                          MaxBlocks = s.Provider.MaxBlocks
                          Parallelism = s.Provider.Parallelism
                          MaxIdleTime = s.MaxIdleTime
                          Now = now
                          IdleSince = idleSince }
                first <- false
                idleSince <- out.IdleSince
                match out.Decision with
                | NoChange -> ()
                | ScaleOut n -> do! scaleOut n
                | ScaleIn(n, None) -> do! cancel (live () |> List.rev |> List.truncate n)
                | ScaleIn(_, Some _) -> ()
            }

        let timer =
            task {
                use t = new PeriodicTimer(s.Period)
                try
                    while! t.WaitForNextTickAsync(stopTimer.Token) do
                        channel.Writer.TryWrite ScalerPoll |> ignore
                with :? OperationCanceledException -> ()
            }

        let snapshot () = [ for b in blocks -> b.Id, b.JobId, b.State ]

        let loop =
            task {
                let mutable go = true
                channel.Writer.TryWrite ScalerPoll |> ignore
                while go do
                    let! r = channel.Reader.ReadAsync()
                    match r with
                    | ScalerPoll ->
                        try do! poll () with e -> s.Log.Error(e, "{Label}: strategy poll failed", s.Label)
                    | ScalerBlocks reply -> reply.TrySetResult(snapshot ()) |> ignore
                    | StopScaler reply ->
                        go <- false
                        stopTimer.Cancel()
                        try do! cancel (blocks |> Seq.filter (fun b -> not b.ScaledIn) |> List.ofSeq)
                        with e -> s.Log.Error(e, "{Label}: cancelling blocks failed", s.Label)
                        do! timer
                        reply.TrySetResult() |> ignore
                channel.Writer.TryComplete() |> ignore
                let mutable r = Unchecked.defaultof<WqScalerRequest>
                while channel.Reader.TryRead(&r) do
                    match r with
                    | ScalerBlocks reply -> reply.TrySetResult(snapshot ()) |> ignore
                    | StopScaler reply -> reply.TrySetResult() |> ignore
                    | ScalerPoll -> ()
                stopTimer.Dispose()
            }
        WqScalerHandle(channel, loop)
