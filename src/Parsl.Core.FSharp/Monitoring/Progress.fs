namespace Parsl.Monitoring

open System
open System.Diagnostics
open System.Threading
open System.Threading.Tasks
open Parsl
open Spectre.Console

/// The terminal progress display: counts by state and a rate of tasks finished, redrawn twice a second on the
/// standard error stream (so that a program's own output stays clean). Silent when that stream is not a terminal.
[<RequireQualifiedAccess>]
module Progress =
    /// One line of the display, as text (pure: the display and the tests share it).
    let line (count: TaskState -> int) (elapsed: TimeSpan) =
        let finished = [ ExecDone; MemoDone; Failed; DepFail ] |> List.sumBy count
        let rate = if elapsed.TotalSeconds > 0.0 then float finished / elapsed.TotalSeconds else 0.0
        let shown =
            [ Pending; Launched; Running; Joining; ExecDone; MemoDone; Failed; DepFail ]
            |> List.map (fun s -> sprintf "%s %d" (TaskState.name s) (count s))
        sprintf "%s | %.1f tasks/s" (String.Join("  ", shown)) rate

    /// Starts the display over a monitoring handle; a no-op when standard error is not a terminal.
    let start (handle: MonitoringHandle) : IProgressDisplay =
        if Console.IsErrorRedirected then
            { new IProgressDisplay with
                member _.DisposeAsync() = ValueTask() }
        else
            let console = AnsiConsole.Create(AnsiConsoleSettings(Out = AnsiConsoleOutput(Console.Error)))
            let cts = new CancellationTokenSource()
            let clock = Stopwatch.StartNew()
            let render () =
                let table = Table().AddColumn("state").AddColumn("tasks")
                for s in [ Pending; Launched; Running; Joining; ExecDone; MemoDone; Failed; DepFail; FailRetryable ] do
                    table.AddRow(TaskState.name s, string (handle.Count s)) |> ignore
                let finished = [ ExecDone; MemoDone; Failed; DepFail ] |> List.sumBy handle.Count
                table.Caption <- TableTitle(sprintf "%.1f tasks/s, %d finished in %.0f s" (float finished / max 0.001 clock.Elapsed.TotalSeconds) finished clock.Elapsed.TotalSeconds)
                table
            let run =
                console.Live(render ()).StartAsync(fun ctx ->
                    task {
                        try
                            while not cts.IsCancellationRequested do
                                ctx.UpdateTarget(render ())
                                do! Task.Delay(500, cts.Token)
                        with :? OperationCanceledException -> ()
                        ctx.UpdateTarget(render ())
                    }
                    :> Task)
            { new IProgressDisplay with
                member _.DisposeAsync() =
                    cts.Cancel()
                    ValueTask(
                        task {
                            try
                                do! run
                            with _ ->
                                ()
                            cts.Dispose()
                        })
              }
