namespace Parsl.Monitoring

open System
open System.Threading
open System.Threading.Channels
open System.Threading.Tasks

/// Requests to the executor poller.
type ExecutorPollerRequest =
    /// Poll now and answer when the snapshot is posted (before the executors shut down).
    | PollNow of TaskCompletionSource<unit>
    /// Stop.
    | StopPolling of TaskCompletionSource<unit>

/// The handle of a running poller.
[<Sealed>]
type ExecutorPollerHandle internal (channel: Channel<ExecutorPollerRequest>, completion: Task) =
    /// Sends a request. Never blocks.
    member _.Post r = channel.Writer.TryWrite r |> ignore
    /// Ends when the loop ended.
    member _.Completion = completion

/// Polls executors that report managers and blocks (the HTEx) and hands the snapshots to monitoring, which
/// writes a `node` row for each new or changed manager and a `block` row for each change of block status.
/// Parsl's interchange and block poller send these messages themselves; polling keeps the executors unaware
/// of monitoring.
[<RequireQualifiedAccess>]
module ExecutorPoller =
    /// Starts the poller over the executors (label, executor), every `interval`.
    let start (executors: (string * IMonitoredExecutor) list) (radioDir: string option) (interval: TimeSpan) (sink: MonitoringRecord -> unit) (log: Serilog.ILogger) =
        let channel = Channel.CreateUnbounded<ExecutorPollerRequest>(UnboundedChannelOptions(SingleReader = true))
        let drain () =
            match radioDir with
            | Some d ->
                try
                    for r in RadioReader.drain d do
                        sink r
                with e ->
                    log.Warning(e, "Monitoring: reading the workers' radio files failed")
            | None -> ()
        let poll () =
            task {
                drain ()
                for label, ex in executors do
                    try
                        let! nodes, blocks = ex.MonitoringSnapshotAsync()
                        sink (ExecutorSnapshot(label, nodes, blocks, DateTime.UtcNow))
                    with e ->
                        log.Warning(e, "Monitoring: polling executor {Label} failed", label)
            }
        let run () =
            task {
                use cts = new CancellationTokenSource()
                let mutable go = true
                let mutable tick: Task = Task.Delay(interval, cts.Token)
                do! poll ()
                // One wait at a time: a single-reader channel allows no second waiter, so a wait outlives ticks.
                let mutable wait = channel.Reader.WaitToReadAsync().AsTask()
                while go do
                    let! first = Task.WhenAny(wait, tick)
                    if obj.ReferenceEquals(first, tick) then
                        do! poll ()
                        tick <- Task.Delay(interval, cts.Token)
                    else
                        wait <- channel.Reader.WaitToReadAsync().AsTask()
                        let mutable r = Unchecked.defaultof<ExecutorPollerRequest>
                        while channel.Reader.TryRead(&r) do
                            match r with
                            | PollNow t ->
                                do! poll ()
                                t.TrySetResult() |> ignore
                            | StopPolling t ->
                                go <- false
                                t.TrySetResult() |> ignore
                // The workers' last files, written as they exited.
                drain ()
                cts.Cancel()
                try
                    do! tick
                with _ ->
                    ()
            }
        ExecutorPollerHandle(channel, Task.Run<unit>(Func<Task<unit>>(run)))
