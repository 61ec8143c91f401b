/// Monitoring's overhead: 100,000 no-op tasks on the thread pool with and without the database, the rate of each
/// (tasks finished per second, submit to last result), the time until every row is on disk, and every row counted.
module Parsl.Bench.Monitoring

open System
open System.IO
open System.Threading.Tasks
open Parsl
open Parsl.Executors
open Parsl.Monitoring
open Parsl.Bench.Measure

let private rate (monitoring: MonitoringConfig option) (n: int) =
    let dfk = DataFlowKernel.Load { config [ ThreadPoolExecutor("threads", Environment.ProcessorCount) ] with Monitoring = monitoring }
    let noop = App.func dfk (fun (x: int) -> x)
    Task.WaitAll [| for i in 1..5000 -> (noop (Arg.value i)).Task :> Task |]
    let secs = time (fun () -> Task.WaitAll [| for i in 0 .. n - 1 -> (noop (Arg.value i)).Task :> Task |])
    let drained = time (fun () -> (dfk :> IDisposable).Dispose())
    let db = dfk.Monitoring |> Option.bind (fun h -> h.DatabasePath)
    let runId = dfk.Monitoring |> Option.map (fun h -> h.RunId)
    float n / secs, drained, db, runId

/// Prints the figures.
let run (print: string -> unit) =
    let n = 100_000
    let without, _, _, _ = rate None n
    let withDb, drained, db, runId = rate (Some MonitoringConfig.defaults) n
    figure print "monitoring off: no-op tasks/s (thread pool)" without "tasks/s"
    figure print "monitoring on: no-op tasks/s (thread pool)" withDb "tasks/s"
    figure print "monitoring on: rate against off" (100.0 * withDb / without) "%"
    figure print "monitoring on: cleanup until every row is written" drained "s"
    match db, runId with
    | Some db, Some runId ->
        use c = Database.openRead db
        let rows = Database.rowCounts c (Some runId)
        let tasks = int64 (n + 5000)
        // Each thread-pool task: pending, launched, running, running_ended, exec_done.
        let expected = Map.ofList [ "task", tasks; "try", tasks; "status", 5L * tasks ]
        for KeyValue(t, e) in expected do
            figure print (sprintf "monitoring on: %s rows (expected %d)" t e) (float rows[t]) "rows"
            if rows[t] <> e then failwithf "monitoring lost rows: %s has %d, expected %d" t rows[t] e
        File.Delete db
    | _ -> ()
