/// TaskVineExecutor figures through the full kernel, on one local `vine_worker` with 2 cores started as a LocalProvider
/// block. PARSL_BENCH_VINE_WORKER names the worker program (default `vine_worker` on PATH; tests/harness/taskvine.sh
/// builds one and prints its path).
module Parsl.Bench.TaskVine

open System
open System.Diagnostics
open System.IO
open System.Threading
open Parsl
open Parsl.Data
open Parsl.Executors
open Parsl.Executors.TaskVine
open Parsl.Providers

let private load (mode: FunctionExecMode) =
    let runDir, work = WorkerRows.runFolders ()
    let tv =
        TaskVineExecutor(
            { TaskVineOptions.defaults () with
                Provider = Some(LocalProvider { LocalProvider.Defaults with StatusPollingInterval = TimeSpan.FromSeconds 1.0 } :> IExecutionProvider)
                WorkerExecutable = WorkerRows.workerProgram "PARSL_BENCH_VINE_WORKER" "vine_worker"
                FunctionExecMode = mode
                WorkerOptions = [ "-s"; work; "--cores"; "2"; "-t"; "120" ] })
    let ready () = tv.WorkersAsync().Result |> List.filter (fun w -> w.Cores > 0L) |> List.length
    tv, WorkerRows.load runDir tv ready, runDir

let private sent (tv: TaskVineExecutor) = tv.WorkersAsync().Result |> List.sumBy (fun w -> w.BytesSent)

/// No-op tasks/s and ms per hop of a 100-task chain, in one mode.
let private rows (mode: FunctionExecMode) (dfk: DataFlowKernel) (n: int) (print: string -> unit) =
    let name = if mode = FunctionExecMode.Serverless then "serverless" else "regular"
    print (sprintf "TaskVine no-op function apps/s over %d tasks (%s): %.1f" n name (WorkerRows.noopRate dfk n))
    let hops = 100
    print (sprintf "TaskVine ms/hop on a %d-hop function chain (%s): %.1f" hops name (WorkerRows.chainMsPerHop dfk hops))

/// The 20 MB fan-out: one file given to 20 tasks as a Parsl File (cached on the worker) against the same bytes
/// passed as an argument to each task (sent with every task).
let private fanOut (tv: TaskVineExecutor) (dfk: DataFlowKernel) (runDir: string) (print: string -> unit) =
    let size = 20 * 1024 * 1024
    let big = Path.Combine(runDir, "big.bin")
    File.WriteAllBytes(big, Array.init size (fun i -> byte (i * 7)))
    let viaFile = App.func dfk (fun (f: File) -> FileInfo(f.Filepath).Length)
    let viaArg = App.func dfk (fun (b: byte[]) -> int64 b.Length)
    let before = sent tv
    let sw = Stopwatch.StartNew()
    let fs = [ for _ in 1..20 -> viaFile (Arg.value (File.Of big)) ]
    for f in fs do
        if f.Task.Result <> int64 size then failwith "a task saw a short file"
    let cachedMs = sw.Elapsed.TotalMilliseconds
    let cachedBytes = sent tv - before
    let bytes = File.ReadAllBytes big
    let before = sent tv
    let sw = Stopwatch.StartNew()
    let gs = [ for _ in 1..20 -> viaArg (Arg.value bytes) ]
    for g in gs do
        if g.Task.Result <> int64 size then failwith "a task saw short bytes"
    let perTaskMs = sw.Elapsed.TotalMilliseconds
    let perTaskBytes = sent tv - before
    print (sprintf "TaskVine 20 MB to 20 tasks as a cached File: %.1f MB moved, %.0f ms" (float cachedBytes / 1048576.0) cachedMs)
    print (sprintf "TaskVine 20 MB to 20 tasks sent with every task: %.1f MB moved, %.0f ms" (float perTaskBytes / 1048576.0) perTaskMs)

/// Prints the regular rows and the fan-out, then the serverless rows.
let run (print: string -> unit) =
    let () =
        let tv, dfk, runDir = load FunctionExecMode.Regular
        use _ = dfk
        rows FunctionExecMode.Regular dfk 100 print
        fanOut tv dfk runDir print
    let _, dfk, _ = load FunctionExecMode.Serverless
    use _ = dfk
    rows FunctionExecMode.Serverless dfk 1000 print
