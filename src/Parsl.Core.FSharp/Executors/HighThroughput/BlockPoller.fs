namespace Parsl.Executors.HighThroughput

open System
open System.Collections.Generic
open System.Threading
open System.Threading.Channels
open System.Threading.Tasks
open Parsl
open Parsl.Jobs
open Parsl.Providers
open Parsl.Node.HighThroughput

/// One block, as the executor reports it (Parsl's `status()` entries).
type BlockInfo =
    { BlockId: string
      /// The provider's job id (None when submission failed).
      JobId: string option
      Status: JobStatus
      /// True once the strategy scaled it in (Parsl's `SCALED_IN`).
      ScaledIn: bool }

/// Requests to the block poller.
type BlockPollerRequest =
    | Poll
    | QueryBlockStatus of TaskCompletionSource<BlockInfo list>
    | StopPoller of TaskCompletionSource<unit>
    /// A manager of this block was refused (another version): the block has failed, and its job is cancelled.
    | FailBlock of blockId: string * error: exn

/// What the poller needs from its executor.
type BlockPollerSettings =
    { Label: string
      Provider: IExecutionProvider
      Options: HtexOptions
      /// The command a block runs for a block id.
      LaunchCommand: string -> string
      /// Tries queued or running.
      Outstanding: unit -> int
      /// The interchange (it may still be starting when the first block is launched: the poller awaits it).
      Interchange: Task<InterchangeHandle>
      /// Puts the executor in a bad state (every pending task fails with this error).
      SetBad: exn -> unit
      IsBad: unit -> bool
      Log: Serilog.ILogger }

/// The handle of a running poller.
[<Sealed>]
type BlockPollerHandle internal (channel: Channel<BlockPollerRequest>, completion: Task, final: unit -> BlockInfo list) =
    /// Sends a request. Never blocks. Once the loop has ended a request is answered here, from the blocks as the loop
    /// left them: a caller awaiting a reply (the monitoring poller asks for block status at any time) is never left
    /// waiting.
    member _.Post r =
        if not (channel.Writer.TryWrite r) then
            match r with
            | QueryBlockStatus reply -> reply.TrySetResult(final ()) |> ignore
            | StopPoller reply -> reply.TrySetResult() |> ignore
            | _ -> ()
    /// Ends when the loop ended.
    member _.Completion = completion

/// The job-status poller and strategy of one executor (Parsl's `JobStatusPoller` + `Strategy` +
/// `BlockProviderExecutor`): polls block status, applies the block error handler, asks `Strategy.decide`
/// and starts or stops blocks. One actor; the decision itself is pure.
[<RequireQualifiedAccess>]
module BlockPoller =
    type private Block =
        { Id: string
          mutable JobId: string option
          mutable Status: JobStatus
          mutable ScaledIn: bool }

    let private summary (b: Block) =
        let s = b.Status
        let part name (v: string option) =
            match v with
            | Some t when not (String.IsNullOrWhiteSpace t) -> sprintf "\n%s:\n%s" name (t.TrimEnd())
            | _ -> ""
        sprintf "block %s: %s%s%s%s%s" b.Id (JobState.name s.State)
            (match s.ExitCode with Some c -> sprintf ", exit code %d" c | None -> "")
            (match s.Message with Some m -> sprintf " (%s)" m | None -> "")
            (part "stdout" s.Stdout) (part "stderr" s.Stderr)

    /// Starts the poller; its first poll (which starts `InitBlocks`) runs at once.
    let start (s: BlockPollerSettings) : BlockPollerHandle =
        let channel = Channel.CreateUnbounded<BlockPollerRequest>(UnboundedChannelOptions(SingleReader = true))
        let blocks = List<Block>()
        let mutable nextId = 0
        let mutable first = true
        let mutable idleSince: DateTime option = None
        let mutable lastStatus = DateTime.MinValue
        let stopTimer = new CancellationTokenSource()
        let causes = Dictionary<string, exn>()

        let live () = blocks |> Seq.filter (fun b -> not b.ScaledIn && not (JobState.isTerminal b.Status.State)) |> List.ofSeq

        let scaleOut n =
            task {
                for _ in 1..n do
                    let id = string nextId
                    nextId <- nextId + 1
                    let b = { Id = id; JobId = None; Status = JobStatus.ofState Pending; ScaledIn = false }
                    blocks.Add b
                    try
                        let! job = s.Provider.SubmitAsync(s.LaunchCommand id, 1, sprintf "parsl.%s.block-%s" s.Label id, CancellationToken.None)
                        b.JobId <- Some job
                        s.Log.Information("{Label}: block {Block} submitted as job {Job}", s.Label, id, job)
                    with e ->
                        b.Status <- { JobStatus.ofState ScalingFailed with Message = Some e.Message }
                        s.Log.Error(e, "{Label}: block {Block} could not be submitted", s.Label, id)
            }

        let cancel (chosen: Block list) =
            task {
                if not chosen.IsEmpty then
                    let hold = TaskCompletionSource<unit>(TaskCreationOptions.RunContinuationsAsynchronously)
                    let! ic = s.Interchange
                    ic.Post(HoldBlocks(chosen |> List.map (fun b -> b.Id), hold))
                    do! hold.Task.WaitAsync(TimeSpan.FromSeconds 10.0)
                    let jobs = chosen |> List.choose (fun b -> b.JobId)
                    if not jobs.IsEmpty then
                        let! _ = s.Provider.CancelAsync(jobs, CancellationToken.None)
                        ()
                    for b in chosen do
                        b.ScaledIn <- true
                        b.Status <- JobStatus.ofState Cancelled
                        s.Log.Information("{Label}: block {Block} scaled in", s.Label, b.Id)
            }

        let scaleIn n (onlyIdle: TimeSpan option) =
            task {
                let q = TaskCompletionSource<ManagerInfo list>(TaskCreationOptions.RunContinuationsAsynchronously)
                let! ic = s.Interchange
                ic.Post(QueryManagers q)
                let! managers = q.Task.WaitAsync(TimeSpan.FromSeconds 10.0)
                let info (b: Block) =
                    let ms = managers |> List.filter (fun m -> m.BlockId = b.Id && m.Active)
                    if ms.IsEmpty then TimeSpan.MaxValue, 0
                    else (ms |> List.map (fun m -> m.IdleFor) |> List.min), (ms |> List.sumBy (fun m -> m.TasksInFlight))
                let candidates =
                    live ()
                    |> List.map (fun b -> b, info b)
                    |> List.sortBy (fun (_, (idle, tasks)) -> -idle.Ticks, tasks)
                let chosen =
                    match onlyIdle with
                    | None -> candidates |> List.truncate n
                    | Some limit -> candidates |> List.filter (fun (_, (idle, tasks)) -> idle > limit && tasks = 0) |> List.truncate n
                do! cancel (chosen |> List.map fst)
            }

        let refreshStatus () =
            task {
                let now = DateTime.UtcNow
                if now - lastStatus >= s.Provider.StatusPollingInterval then
                    lastStatus <- now
                    let polled = live () |> List.filter (fun b -> b.JobId.IsSome)
                    if not polled.IsEmpty then
                        let! statuses = s.Provider.StatusAsync(polled |> List.map (fun b -> b.JobId.Value), CancellationToken.None)
                        let q = TaskCompletionSource<string list>(TaskCreationOptions.RunContinuationsAsynchronously)
                        let! ic = s.Interchange
                        ic.Post(QueryBlocks q)
                        let! connected = q.Task.WaitAsync(TimeSpan.FromSeconds 10.0)
                        for b, st in List.zip polled statuses do
                            // A block that ended without ever connecting is MISSING (Parsl's HTEx `status()`).
                            let st =
                                if JobState.isTerminal st.State && not (List.contains b.Id connected) then
                                    { st with
                                        State = Missing
                                        Message =
                                            Some(
                                                sprintf "the block ended (%s) without its manager connecting to the interchange%s"
                                                    (JobState.name st.State)
                                                    (match st.Message with Some m -> ": " + m | None -> "")) }
                                else st
                            if st.State <> b.Status.State then
                                s.Log.Information("{Label}: block {Block} is {State}", s.Label, b.Id, JobState.name st.State)
                            b.Status <- st
            }

        let handleErrors () =
            task {
              if not (s.IsBad()) then
                // A block that could not even be submitted failed as surely as one that exited non-zero.
                let statuses =
                    blocks
                    |> Seq.map (fun b ->
                        b.Id, (if b.Status.State = ScalingFailed then { b.Status with State = Failed } else b.Status))
                    |> List.ofSeq
                let! served =
                    task {
                        if statuses |> List.exists (snd >> ErrorHandlers.isFailure) then
                            let q = TaskCompletionSource<string list>(TaskCreationOptions.RunContinuationsAsynchronously)
                            let! ic = s.Interchange
                            ic.Post(QueryServedBlocks q)
                            return! q.Task.WaitAsync(TimeSpan.FromSeconds 10.0)
                        else return []
                    }
                let judged = ErrorHandlers.withoutLostNodes (Set.ofList served) statuses
                match ErrorHandlers.decide s.Options.BlockErrorHandler s.Provider.InitBlocks judged with
                | Healthy -> ()
                | SetBadState _ ->
                    let failed = statuses |> List.filter (snd >> ErrorHandlers.isFailure) |> List.length
                    let message =
                        sprintf "%d of %d blocks failed:\n%s" failed blocks.Count (blocks |> Seq.map summary |> String.concat "\n")
                    // A block refused for its version carries that error as the cause.
                    s.SetBad(BadStateException(s.Label, message, (if causes.Count > 0 then Seq.head causes.Values else null)))
            }

        let strategize () =
            task {
                if not (s.IsBad()) then
                    let running = blocks |> Seq.filter (fun b -> not b.ScaledIn && b.Status.State = Running) |> Seq.length
                    let pending =
                        blocks |> Seq.filter (fun b -> not b.ScaledIn && (b.Status.State = Pending || b.Status.State = Unknown)) |> Seq.length
                    let out =
                        Strategy.decide
                            { Kind = s.Options.Strategy
                              FirstPoll = first
                              ActiveTasks = s.Outstanding()
                              RunningBlocks = running
                              PendingBlocks = pending
                              TasksPerNode = HtexOptions.workersPerNode s.Options
                              NodesPerBlock = s.Provider.NodesPerBlock
                              InitBlocks = s.Provider.InitBlocks
                              MinBlocks = s.Provider.MinBlocks
                              MaxBlocks = s.Provider.MaxBlocks
                              Parallelism = s.Provider.Parallelism
                              MaxIdleTime = s.Options.MaxIdleTime
                              Now = DateTime.UtcNow
                              IdleSince = idleSince }
                    first <- false
                    idleSince <- out.IdleSince
                    match out.Decision with
                    | NoChange -> ()
                    | ScaleOut n -> do! scaleOut n
                    | ScaleIn(n, idle) -> do! scaleIn n idle
            }

        // The blocks as the loop left them, for requests that arrive after it ended (written once, before the channel
        // is completed: a request refused by the completed channel reads it).
        let mutable finalBlocks: BlockInfo list = []
        let snapshot () =
            blocks
            |> Seq.map (fun b -> { BlockId = b.Id; JobId = b.JobId; Status = b.Status; ScaledIn = b.ScaledIn })
            |> List.ofSeq

        let timer =
            task {
                use t = new PeriodicTimer(s.Options.StrategyPeriod)
                try
                    while! t.WaitForNextTickAsync(stopTimer.Token) do
                        channel.Writer.TryWrite Poll |> ignore
                with :? OperationCanceledException -> ()
            }

        let loop =
            task {
                // Off the caller's thread: the executor starts this before its interchange, and a second poll (queued by
                // the timer while a slow first block launch ran) asks for the interchange, which waits for the
                // caller to finish starting it; run inline, that wait was a deadlock (seen under load).
                do! Task.Yield()
                let mutable go = true
                channel.Writer.TryWrite Poll |> ignore
                while go do
                    let! r = channel.Reader.ReadAsync()
                    match r with
                    | Poll ->
                        try
                            do! refreshStatus ()
                            do! handleErrors ()
                            do! strategize ()
                        with e -> s.Log.Error(e, "{Label}: strategy poll failed", s.Label)
                    | QueryBlockStatus reply -> reply.TrySetResult(snapshot ()) |> ignore
                    | FailBlock(id, error) ->
                        match blocks |> Seq.tryFind (fun b -> b.Id = id && not b.ScaledIn && not (JobState.isTerminal b.Status.State)) with
                        | Some b ->
                            b.Status <- { JobStatus.ofState Failed with Message = Some error.Message }
                            causes[b.Id] <- error
                            s.Log.Error("{Label}: block {Block} failed: {Error}", s.Label, id, error.Message)
                            try
                                match b.JobId with
                                | Some job ->
                                    let! _ = s.Provider.CancelAsync([ job ], CancellationToken.None)
                                    ()
                                | None -> ()
                            with e -> s.Log.Error(e, "{Label}: cancelling block {Block} failed", s.Label, id)
                            do! handleErrors ()
                        | None -> s.Log.Warning("{Label}: a manager of block {Block}, which this executor does not run, was refused: {Error}", s.Label, id, error.Message)
                    | StopPoller reply ->
                        go <- false
                        stopTimer.Cancel()
                        try
                            let jobs = blocks |> Seq.filter (fun b -> not b.ScaledIn) |> Seq.choose (fun b -> b.JobId) |> List.ofSeq
                            if not jobs.IsEmpty then
                                let! _ = s.Provider.CancelAsync(jobs, CancellationToken.None)
                                ()
                        with e -> s.Log.Error(e, "{Label}: cancelling blocks failed", s.Label)
                        do! timer
                        reply.TrySetResult() |> ignore
                finalBlocks <- snapshot ()
                channel.Writer.TryComplete() |> ignore
                let mutable r = Unchecked.defaultof<BlockPollerRequest>
                while channel.Reader.TryRead(&r) do
                    match r with
                    | QueryBlockStatus reply -> reply.TrySetResult(finalBlocks) |> ignore
                    | StopPoller reply -> reply.TrySetResult() |> ignore
                    | Poll
                    | FailBlock _ -> ()
                stopTimer.Dispose()
            }
        BlockPollerHandle(channel, loop, fun () -> Volatile.Read(&finalBlocks))
