/// HighThroughputExecutor figures through the full kernel, on a local block of 2 workers.
module Parsl.Bench.Htex

open System
open System.Diagnostics
open System.IO
open Parsl
open Parsl.Executors
open Parsl.Executors.HighThroughput
open Parsl.Node.HighThroughput
open Parsl.Providers

let private options () =
    { HtexOptions.defaults () with
        MaxWorkersPerNode = Some 2
        // Keep workers fed between batches: throughput comes from batching on every hop.
        PrefetchCapacity = 2000
        Encrypted = isNull (Environment.GetEnvironmentVariable "PARSL_BENCH_PLAIN")
        // PARSL_BENCH_TCP=1: the manager over TCP (as one on another host would be) instead of the local socket.
        SameHostSocket = isNull (Environment.GetEnvironmentVariable "PARSL_BENCH_TCP")
        // The Bench target points this at a ReadyToRun publish of Parsl.Workers (deployed as a cluster would).
        WorkerCommand =
            match Environment.GetEnvironmentVariable "PARSL_BENCH_WORKERS" with
            | null
            | "" -> None
            | dll -> Some [ "dotnet"; dll ]
        Provider = LocalProvider { LocalProvider.Defaults with StatusPollingInterval = TimeSpan.FromSeconds 1.0 } }

let private load () =
    let runDir = Path.Combine(Path.GetTempPath(), "parsl-bench", Guid.NewGuid().ToString("N"))
    let htex = HighThroughputExecutor(options ())
    DataFlowKernel.Load { Config.defaults with RunDir = runDir; Executors = [ htex ]; InitializeLogging = false }

/// Runs a chain of `hops` increments, each waiting on the one before; returns µs per hop.
let private chainOf (inc: Arg<int> -> AppFuture<int>) (hops: int) =
    let sw = Stopwatch.StartNew()
    let mutable f = inc (Arg.value 0)
    for _ in 2..hops do
        f <- inc (Arg.future f)
    let v = f.Task.Result
    if v <> hops then failwithf "chain computed %d" v
    sw.Elapsed.TotalMilliseconds * 1000.0 / float hops

/// utime + stime in clock ticks (10 ms) of a process, from /proc.
let private ticksOf (pid: int) =
    try
        let stat = File.ReadAllText(sprintf "/proc/%d/stat" pid)
        let rest = stat.Substring(stat.LastIndexOf ')' + 2).Split ' '
        int64 rest[11] + int64 rest[12]
    with _ -> 0L

/// CPU ticks per thread (name/tid) of a process.
let private threadTicksOf (pid: int) =
    try
        Directory.GetDirectories(sprintf "/proc/%d/task" pid)
        |> Array.choose (fun d ->
            try
                let stat = File.ReadAllText(Path.Combine(d, "stat"))
                let name = stat.Substring(stat.IndexOf '(' + 1, stat.LastIndexOf ')' - stat.IndexOf '(' - 1)
                let rest = stat.Substring(stat.LastIndexOf ')' + 2).Split ' '
                Some(sprintf "%s/%s" name (Path.GetFileName d), int64 rest[11] + int64 rest[12])
            with _ -> None)
        |> Map.ofArray
    with _ -> Map.empty

/// Voluntary context switches (sleeps, so wake-ups) per thread (name/tid) of a process: a count the machine's load
/// hardly changes, unlike times.
let private threadSwitchesOf (pid: int) =
    try
        Directory.GetDirectories(sprintf "/proc/%d/task" pid)
        |> Array.choose (fun d ->
            try
                let stat = File.ReadAllText(Path.Combine(d, "stat"))
                let name = stat.Substring(stat.IndexOf '(' + 1, stat.LastIndexOf ')' - stat.IndexOf '(' - 1)
                let line = File.ReadLines(Path.Combine(d, "status")) |> Seq.find (fun l -> l.StartsWith "voluntary_ctxt_switches:")
                Some(sprintf "%s/%s" name (Path.GetFileName d), int64 ((line.Split(':')[1]).Trim()))
            with _ -> None)
        |> Map.ofArray
    with _ -> Map.empty

/// The processes whose parent is `pid` (a manager's workers).
let private childrenOf (pid: int) =
    let parent (p: string) =
        try
            let stat = File.ReadAllText(sprintf "/proc/%s/stat" p)
            int ((stat.Substring(stat.LastIndexOf ')' + 2).Split ' ')[1])
        with _ -> -1
    Directory.GetDirectories "/proc"
    |> Array.map Path.GetFileName
    |> Array.filter (fun n -> n |> Seq.forall Char.IsDigit && parent n = pid)
    |> Array.map int

/// The threads whose CPU ticks grew between two readings, busiest first, in µs per item (`fmt` formats one).
let private threadCpu (before: Map<string, int64>) (after: Map<string, int64>) (items: int) (fmt: string) =
    let f = Printf.StringFormat<float -> string>(fmt)
    after
    |> Map.toList
    |> List.map (fun (k, v) -> k, v - (Map.tryFind k before |> Option.defaultValue 0L))
    |> List.filter (fun (_, d) -> d > 0L)
    |> List.sortByDescending snd
    |> List.map (fun (k, d) -> k + " " + sprintf f (float d * 10000.0 / float items))
    |> fun parts -> String.Join(", ", parts)

/// Load to first result and the chain only, with CPU time per hop of the client, its manager and workers
/// (quick runs while tuning; CPU time is what a shared machine's load does not distort).
let chain (print: string -> unit) =
    let stamp (what: string) = print (sprintf "%s %s" (DateTime.UtcNow.ToString "HH:mm:ss.fff") what)
    stamp "load"
    let sw = Stopwatch.StartNew()
    let runDir = Path.Combine(Path.GetTempPath(), "parsl-bench", Guid.NewGuid().ToString("N"))
    let htex = HighThroughputExecutor(options ())
    let dfk = DataFlowKernel.Load { Config.defaults with RunDir = runDir; Executors = [ htex ]; InitializeLogging = false }
    stamp "loaded"
    let noop = App.func dfk (fun (x: int) -> x)
    let first = noop (Arg.value 0)
    stamp "submitted"
    first.Task.Wait()
    stamp "first result"
    print (sprintf "HTEx ms from load to first result: %.0f" sw.Elapsed.TotalMilliseconds)
    let manager = (htex.ConnectedManagersAsync().Result |> List.head).Pid
    let ticks = ticksOf
    let workers () = childrenOf manager
    print (
        sprintf "CPU ms until the first result: client %d, manager %d, workers %d (2 cores give %.0f in that time)"
            (ticks Environment.ProcessId * 10L) (ticks manager * 10L) ((workers () |> Array.sumBy ticks) * 10L)
            (2.0 * sw.Elapsed.TotalMilliseconds))
    let inc = App.func dfk (fun (x: int) -> x + 1)
    let threadTicks = threadTicksOf
    let perThread = not (isNull (Environment.GetEnvironmentVariable "PARSL_BENCH_THREADS"))
    for round in 1..(match Environment.GetEnvironmentVariable "ROUNDS" with null -> 4 | r -> int r) do
        let t0c, t0m = (if perThread then threadTicks Environment.ProcessId, threadTicks manager else Map.empty, Map.empty)
        let hops = 1000
        let ws = workers ()
        let c0, m0, w0 = ticks Environment.ProcessId, ticks manager, ws |> Array.sumBy ticks
        let perHop = chainOf inc hops
        let us (t: int64) = float t * 10000.0 / float hops
        print (
            sprintf "HTEx us/hop on a %d-hop chain (round %d): %.1f; CPU us/hop: client %.0f, manager %.0f, workers %.0f"
                hops round perHop
                (us (ticks Environment.ProcessId - c0)) (us (ticks manager - m0)) (us ((ws |> Array.sumBy ticks) - w0)))
        if perThread then
            for who, before, after in [ "client", t0c, threadTicks Environment.ProcessId; "manager", t0m, threadTicks manager ] do
                print (sprintf "  %s threads, CPU us/hop: %s" who (threadCpu before after hops "%.0f"))
    (dfk :> IDisposable).Dispose()

/// The no-op row alone, with CPU time per task of the client, its manager and workers, and per thread
/// (`PARSL_BENCH_THREADS=1`): CPU time is what a shared machine's load does not distort.
let noopCpu (print: string -> unit) =
    let runDir = Path.Combine(Path.GetTempPath(), "parsl-bench", Guid.NewGuid().ToString("N"))
    let htex = HighThroughputExecutor(options ())
    let dfk = DataFlowKernel.Load { Config.defaults with RunDir = runDir; Executors = [ htex ]; InitializeLogging = false }
    let noop = App.func dfk (fun (x: int) -> x)
    (noop (Arg.value 0)).Task.Wait()
    let manager = (htex.ConnectedManagersAsync().Result |> List.head).Pid
    let workers = childrenOf manager
    [| for i in 1..5000 -> noop (Arg.value i) |] |> Array.iter (fun f -> f.Task.Wait())
    let perThread = not (isNull (Environment.GetEnvironmentVariable "PARSL_BENCH_THREADS"))
    let n = 100_000
    for round in 1..(match Environment.GetEnvironmentVariable "ROUNDS" with null -> 3 | r -> int r) do
        let t0c, t0m = threadTicksOf Environment.ProcessId, threadTicksOf manager
        let s0c, s0m = threadSwitchesOf Environment.ProcessId, threadSwitchesOf manager
        let s0w = workers |> Array.sumBy (fun w -> threadSwitchesOf w |> Map.fold (fun a _ v -> a + v) 0L)
        let c0, m0, w0 = ticksOf Environment.ProcessId, ticksOf manager, workers |> Array.sumBy ticksOf
        let sw = Stopwatch.StartNew()
        let fs = Array.init n (fun i -> noop (Arg.value i))
        for f in fs do
            f.Task.Wait()
        let perSec = float n / sw.Elapsed.TotalSeconds
        let us (t: int64) = float t * 10000.0 / float n
        print (
            sprintf "HTEx no-op tasks/s over %d tasks (round %d): %.0f; CPU us/task: client %.1f, manager %.1f, workers %.1f"
                n round perSec (us (ticksOf Environment.ProcessId - c0)) (us (ticksOf manager - m0))
                (us ((workers |> Array.sumBy ticksOf) - w0)))
        if perThread then
            for who, before, after in [ "client", t0c, threadTicksOf Environment.ProcessId; "manager", t0m, threadTicksOf manager ] do
                print (sprintf "  %s threads, CPU us/task: %s" who (threadCpu before after n "%.1f"))
            let s1w = workers |> Array.sumBy (fun w -> threadSwitchesOf w |> Map.fold (fun a _ v -> a + v) 0L)
            for who, before, after in [ "client", s0c, threadSwitchesOf Environment.ProcessId; "manager", s0m, threadSwitchesOf manager ] do
                let parts =
                    after
                    |> Map.toList
                    |> List.map (fun (k, v) -> k, v - (Map.tryFind k before |> Option.defaultValue 0L))
                    |> List.filter (fun (_, d) -> d * 1000L / int64 n > 0L)
                    |> List.sortByDescending snd
                    |> List.map (fun (k, d) -> sprintf "%s %.1f" k (float d * 1000.0 / float n))
                print (sprintf "  %s threads, wake-ups per 1,000 tasks: %s" who (String.Join(", ", parts)))
            print (sprintf "  workers, wake-ups per 1,000 tasks: %.1f" (float (s1w - s0w) * 1000.0 / float n))
    (dfk :> IDisposable).Dispose()

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
    // Steady state, as for the thread pool: two warm-up chains, then the median of three.
    print (sprintf "HTEx us/hop on a %d-hop chain: %.1f" hops (Measure.steady 2 3 (fun () -> chainOf inc hops) id))
    let tru = App.shell dfk (fun (_: int) -> "true")
    let m = 2000
    let sw = Stopwatch.StartNew()
    let ss = Array.init m (fun i -> tru (Arg.value i))
    for s in ss do
        s.Task.Wait()
    print (sprintf "HTEx shell true tasks/s over %d tasks: %.0f" m (float m / sw.Elapsed.TotalSeconds))
    print (sprintf "HTEx ms from load to first result: %.0f" firstMs)
    (dfk :> IDisposable).Dispose()
