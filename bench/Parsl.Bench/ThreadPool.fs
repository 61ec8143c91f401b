/// Thread-pool executor figures: no-op throughput, chain latency, shell apps against the machine's spawn
/// limit, and memory retained after a million tasks.
module Parsl.Bench.ThreadPool

open System
open System.Diagnostics
open System.Threading.Tasks
open Parsl
open Parsl.Executors
open Parsl.Bench.Measure

let private noopRate (n: int) =
    use dfk = DataFlowKernel.Load(config [ ThreadPoolExecutor("threads", Environment.ProcessorCount) ])
    let noop = App.func dfk (fun (x: int) -> x)
    // Warm up the JIT and the loops.
    Task.WaitAll [| for i in 1..5000 -> (noop (Arg.value i)).Task :> Task |]
    let mutable submitted = 0.0
    let cpu0 = Process.GetCurrentProcess().TotalProcessorTime
    let secs =
        time (fun () ->
            let mutable fs = [||]
            submitted <- time (fun () -> fs <- Array.init n (fun i -> (noop (Arg.value i)).Task :> Task))
            Task.WaitAll fs)
    let cpu = (Process.GetCurrentProcess().TotalProcessorTime - cpu0).TotalMilliseconds * 1000.0 / float n
    float n / submitted, float n / secs, cpu

let private chainHop (n: int) =
    use dfk = DataFlowKernel.Load(config [ ThreadPoolExecutor("threads", Environment.ProcessorCount) ])
    let inc = App.func dfk (fun (x: int) -> x + 1)
    let build n =
        let mutable f = inc (Arg.value 0)
        for _ in 2..n do
            f <- inc (Arg.future f)
        f
    (build 1000).Task.Wait()
    let mutable last = Unchecked.defaultof<AppFuture<int>>
    let secs = time (fun () -> last <- build n; last.Task.Wait())
    if last.Result <> n then failwithf "chain computed %d, expected %d" last.Result n
    secs / float n * 1e6

/// `bash -c true` spawned as fast as this machine allows: one Process per call, as many at once as cores.
let private spawnLimit (n: int) =
    let one () =
        let psi = ProcessStartInfo("/bin/bash")
        psi.ArgumentList.Add "-c"
        psi.ArgumentList.Add "true"
        use p = Process.Start psi
        p.WaitForExit()
    for _ in 1..20 do one ()
    let secs = time (fun () -> Parallel.For(0, n, ParallelOptions(MaxDegreeOfParallelism = Environment.ProcessorCount), fun _ -> one ()) |> ignore)
    float n / secs

let private shellRate (n: int) =
    use dfk = DataFlowKernel.Load(config [ ThreadPoolExecutor("threads", Environment.ProcessorCount) ])
    let t = App.shell dfk (fun (_: int) -> "true")
    Task.WaitAll [| for i in 1..20 -> (t (Arg.value i)).Task :> Task |]
    let secs = time (fun () -> Task.WaitAll [| for i in 1..n -> (t (Arg.value i)).Task :> Task |])
    float n / secs

let private retained (n: int) =
    let before = heapBytes ()
    let after =
        use dfk = DataFlowKernel.Load(config [ ThreadPoolExecutor("threads", Environment.ProcessorCount) ])
        let noop = App.func dfk (fun (x: int) -> x)
        // Submit in waves and drop each wave's futures, as a long-running workflow does.
        for _ in 1..(n / 100_000) do
            let fs = Array.init 100_000 (fun i -> (noop (Arg.value i)).Task :> Task)
            Task.WaitAll fs
        dfk.WaitForCurrentTasks()
        // Measured while the kernel is still loaded: completed task records must already be gone.
        heapBytes ()
    float (after - before) / 1024.0 / 1024.0

/// The no-op throughput figures: the first (cold) run, then the steady state.
let noop (print: string -> unit) =
    let _, cold, _ = noopRate 100_000
    figure print "threads: no-op function apps, first run in a fresh process" cold "tasks/s"
    let submit, total, cpu = steady 2 5 (fun () -> noopRate 100_000) (fun (_, t, _) -> t)
    figure print "threads: no-op submit rate (100,000 calls)" submit "calls/s"
    figure print "threads: no-op CPU time per task (all threads)" cpu "us"
    figure print "threads: no-op function apps (100,000 tasks)" total "tasks/s"

/// The chain figure (steady state).
let chain (print: string -> unit) =
    figure print "threads: dependency chain (10,000 hops)" (steady 2 5 (fun () -> chainHop 10_000) id) "us/hop"

/// Runs every thread-pool figure.
let run (print: string -> unit) =
    print (sprintf "# thread pool executor (%d threads), %d cores" Environment.ProcessorCount Environment.ProcessorCount)
    noop print
    chain print
    let shell = shellRate 2000
    let limit = spawnLimit 2000
    figure print "threads: shell apps `true` (2,000 tasks)" shell "tasks/s"
    figure print "machine: Process.Start `bash -c true` (2,000)" limit "spawns/s"
    figure print "threads: shell rate / spawn limit" (100.0 * shell / limit) "%"
    figure print "threads: heap retained after 1,000,000 no-op tasks" (retained 1_000_000) "MiB"
