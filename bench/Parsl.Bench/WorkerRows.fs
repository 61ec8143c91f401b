/// What the Work Queue and TaskVine rows share: a run folder with the worker's scratch folder, the worker program
/// from the environment, waiting for the first worker, and the no-op and chain rows.
module Parsl.Bench.WorkerRows

open System
open System.Diagnostics
open System.IO
open System.Threading
open Parsl

/// A fresh run folder and the worker's scratch folder inside it.
let runFolders () =
    let runDir = Measure.runDir ()
    let work = Path.Combine(runDir, "worker")
    Directory.CreateDirectory work |> ignore
    runDir, work

/// The worker program named by `variable`, else `fallback` on PATH.
let workerProgram (variable: string) (fallback: string) =
    match Environment.GetEnvironmentVariable variable with
    | null | "" -> fallback
    | p -> p

/// A kernel on one executor in `runDir`, once `ready ()` (workers with cores) is above 0; fails after 60 s.
let load (runDir: string) (executor: Parsl.Executors.IExecutor) (ready: unit -> int) =
    let dfk = DataFlowKernel.Load { Config.defaults with RunDir = runDir; Executors = [ executor ]; InitializeLogging = false }
    let sw = Stopwatch.StartNew()
    while ready () = 0 do
        if sw.Elapsed.TotalSeconds > 60.0 then failwith "no worker connected within 60 s"
        Thread.Sleep 20
    dfk

/// No-op function apps per second over `n` tasks (after one to warm up).
let noopRate (dfk: DataFlowKernel) (n: int) =
    let noop = App.func dfk (fun (x: int) -> x)
    (noop (Arg.value 0)).Task.Wait()
    let sw = Stopwatch.StartNew()
    let fs = [ for i in 1..n -> noop (Arg.value i) ]
    for f in fs do
        f.Task.Wait()
    float n / sw.Elapsed.TotalSeconds

/// Milliseconds per hop of a chain of `hops` function apps, each taking the one before.
let chainMsPerHop (dfk: DataFlowKernel) (hops: int) =
    let inc = App.func dfk (fun (x: int) -> x + 1)
    let sw = Stopwatch.StartNew()
    let mutable f = inc (Arg.value 0)
    for _ in 2..hops do
        f <- inc (Arg.future f)
    if f.Task.Result <> hops then failwith "the chain computed the wrong value"
    sw.Elapsed.TotalMilliseconds / float hops
