/// WorkQueueExecutor figures through the full kernel, on one local `work_queue_worker` with 2 cores started as a
/// LocalProvider block. PARSL_BENCH_WQ_WORKER names the worker program (default `work_queue_worker` on PATH).
module Parsl.Bench.WorkQueue

open System
open System.Diagnostics
open System.IO
open System.Threading
open Parsl
open Parsl.Executors
open Parsl.Executors.WorkQueue
open Parsl.Providers

let private load (longLived: bool) =
    let runDir, work = WorkerRows.runFolders ()
    let exe = WorkerRows.workerProgram (if longLived then "PARSL_BENCH_WQ11_WORKER" else "PARSL_BENCH_WQ_WORKER") "work_queue_worker"
    let wq =
        WorkQueueExecutor(
            { WorkQueueOptions.defaults () with
                Provider = Some(LocalProvider { LocalProvider.Defaults with StatusPollingInterval = TimeSpan.FromSeconds 1.0 } :> IExecutionProvider)
                WorkerExecutable = exe
                LongLivedRunner = longLived
                WorkerOptions = [ "-s"; work; "--cores"; "2"; "-t"; "120" ] })
    let ready () = wq.WorkersAsync().Result |> List.filter (fun w -> w.Cores > 0L) |> List.length
    wq, WorkerRows.load runDir wq ready

/// The rows with a runner start per function app, and the shell rows.
let private rows (dfk: DataFlowKernel) (print: string -> unit) =
    let n = 100
    print (sprintf "WQ no-op function apps/s over %d tasks (runner per task): %.1f" n (WorkerRows.noopRate dfk n))
    let hops = 100
    print (sprintf "WQ ms/hop on a %d-hop function chain (runner per task): %.1f" hops (WorkerRows.chainMsPerHop dfk hops))
    let shTrue = App.shell dfk (fun (_: int) -> "true")
    let sh = App.shell dfk (fun (x: int) -> sprintf "exit %d" (x * 0))
    let hopsSh = 100
    let sw = Stopwatch.StartNew()
    let mutable g = sh (Arg.value 0)
    for _ in 2..hopsSh do
        g <- sh (Arg.future g)
    g.Task.Wait()
    print (sprintf "WQ ms/hop on a %d-hop shell chain: %.1f" hopsSh (sw.Elapsed.TotalMilliseconds / float hopsSh))
    let m = 500
    let sw = Stopwatch.StartNew()
    let ts = [ for i in 1..m -> shTrue (Arg.value i) ]
    for t in ts do
        t.Task.Wait()
    print (sprintf "WQ shell true tasks/s over %d tasks: %.0f" m (float m / sw.Elapsed.TotalSeconds))

/// Function apps through the long-lived runner (a coprocess of a protocol-11 worker named by
/// PARSL_BENCH_WQ11_WORKER): no-op tasks/s and ms per hop of a 100-task chain.
let private longLived (print: string -> unit) =
    let _, dfk = load true
    use _ = dfk
    let n = 1000
    print (sprintf "WQ no-op function apps/s over %d tasks (long-lived runner): %.0f" n (WorkerRows.noopRate dfk n))
    let hops = 100
    print (sprintf "WQ ms/hop on a %d-hop function chain (long-lived runner): %.1f" hops (WorkerRows.chainMsPerHop dfk hops))

/// Prints: no-op function apps/s, ms per hop of a 100-task chain, shell `true` tasks/s (a runner start per function
/// app), then the function rows again through the long-lived runner when PARSL_BENCH_WQ11_WORKER is set.
let run (print: string -> unit) =
    let () =
        let _, dfk = load false
        use _ = dfk
        rows dfk print
    if not (String.IsNullOrEmpty(Environment.GetEnvironmentVariable "PARSL_BENCH_WQ11_WORKER")) then longLived print
