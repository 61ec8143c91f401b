/// HighThroughputExecutor figures through the full kernel, on a local block of 2 workers.
module Parsl.Bench.Htex

open System
open System.Diagnostics
open System.IO
open Parsl
open Parsl.Executors
open Parsl.Executors.HighThroughput
open Parsl.Providers

let private options () =
    { HtexOptions.defaults () with
        MaxWorkersPerNode = Some 2
        // Keep workers fed between batches: throughput comes from batching on every hop.
        PrefetchCapacity = 2000
        Provider = LocalProvider { LocalProvider.Defaults with StatusPollingInterval = TimeSpan.FromSeconds 1.0 } }

let private load () =
    let runDir = Path.Combine(Path.GetTempPath(), "parsl-bench", Guid.NewGuid().ToString("N"))
    let htex = HighThroughputExecutor(options ())
    DataFlowKernel.Load { Config.defaults with RunDir = runDir; Executors = [ htex ]; InitializeLogging = false }

/// Prints: no-op tasks/s over 100,000 tasks; µs per hop on a 1,000-hop chain; shell `true` tasks/s;
/// ms from load to the first result.
let run (print: string -> unit) =
    // Load to first result, on a cold executor.
    let sw = Stopwatch.StartNew()
    let dfk = load ()
    let noop = App.func dfk (fun (x: int) -> x)
    (noop (Arg.value 0)).Task.Wait()
    let firstMs = sw.Elapsed.TotalMilliseconds
    // Warm up the path (JIT on every hop).
    [| for i in 1..5000 -> noop (Arg.value i) |] |> Array.iter (fun f -> f.Task.Wait())
    let n = 100_000
    let sw = Stopwatch.StartNew()
    let fs = Array.init n (fun i -> noop (Arg.value i))
    for f in fs do
        f.Task.Wait()
    let perSec = float n / sw.Elapsed.TotalSeconds
    print (sprintf "HTEx no-op tasks/s over %d tasks: %.0f" n perSec)
    let inc = App.func dfk (fun (x: int) -> x + 1)
    let hops = 1000
    let sw = Stopwatch.StartNew()
    let mutable f = inc (Arg.value 0)
    for _ in 2..hops do
        f <- inc (Arg.future f)
    let v = f.Task.Result
    if v <> hops then failwithf "chain computed %d" v
    print (sprintf "HTEx us/hop on a %d-hop chain: %.1f" hops (sw.Elapsed.TotalMilliseconds * 1000.0 / float hops))
    let tru = App.shell dfk (fun (_: int) -> "true")
    let m = 2000
    let sw = Stopwatch.StartNew()
    let ss = Array.init m (fun i -> tru (Arg.value i))
    for s in ss do
        s.Task.Wait()
    print (sprintf "HTEx shell true tasks/s over %d tasks: %.0f" m (float m / sw.Elapsed.TotalSeconds))
    print (sprintf "HTEx ms from load to first result: %.0f" firstMs)
    (dfk :> IDisposable).Dispose()
