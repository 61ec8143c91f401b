/// One interchange, many managers: simulated managers (Parsl.ManagerSim, a few processes of ~1,000 connections each,
/// over TCP with CURVE and the proof of the run's secret) register with a real HighThroughputExecutor, answer every
/// task at once, heartbeat, and are killed a process at a time. Arguments (`key=value` after `scale`): managers,
/// slots, procs, tasks, lost, prefetch, hb-ms, threshold-ms, sockets (the interchange's ROUTER sockets; default one per
/// 1,000 managers, as `InterchangeSockets` would choose for a provider of that many nodes).
module Parsl.Bench.Scale

open System
open System.Diagnostics
open System.IO
open System.Threading
open Parsl
open Parsl.Executors
open Parsl.Executors.HighThroughput
open Parsl.Node.HighThroughput
open Parsl.Jobs
open Parsl.ManagerSim.Sim
open Parsl.Providers

let private arg (argv: string[]) (name: string) (otherwise: int) =
    argv
    |> Array.tryPick (fun a -> if a.StartsWith(name + "=") then Some(int (a.Substring(name.Length + 1))) else None)
    |> Option.defaultValue otherwise

/// This process's resident memory after a full collection (the interchange lives in the client process).
let private rssMb () =
    Measure.heapBytes () |> ignore
    File.ReadLines "/proc/self/status"
    |> Seq.find (fun l -> l.StartsWith "VmRSS:")
    |> fun l -> float (l.Split([| ' '; '\t' |], StringSplitOptions.RemoveEmptyEntries)[1]) / 1024.0

let private load (hbMs: int) (thresholdMs: int) (sockets: int) =
    let htex =
        HighThroughputExecutor(
            { HtexOptions.defaults () with
                // No blocks: every manager is simulated.
                Provider = LocalProvider { LocalProvider.Defaults with InitBlocks = 0; MinBlocks = 0; MaxBlocks = 0 }
                Strategy = NoScaling
                SameHostSocket = false
                InterchangeSockets = Some sockets
                HeartbeatPeriod = TimeSpan.FromMilliseconds(float hbMs)
                HeartbeatThreshold = TimeSpan.FromMilliseconds(float thresholdMs) })
    htex, DataFlowKernel.Load(Measure.config [ htex ])

/// Simulator processes for `counts` managers each, started together.
let private simulate (htex: HighThroughputExecutor) (counts: int list) (slots: int) (prefetch: int) (hbMs: int) =
    counts
    |> List.mapi (fun i n ->
        new SimProcess(
            [ "--address"; InterchangePorts.format "127.0.0.1" htex.WorkerPorts.Value
              yield! (match htex.CertificateDirectory with Some d -> [ "--cert-dir"; d ] | None -> [])
              "--managers"; string n
              "--slots"; string slots
              "--prefetch"; string prefetch
              "--hb-period"; string hbMs
              "--prefix"; sprintf "sim%d-" i
              "--block-id"; string i ]))

/// CPU ticks (10 ms) of this process's threads, by name and id (to see where a phase's CPU goes).
let private threadTicks () =
    Directory.GetDirectories "/proc/self/task"
    |> Array.choose (fun d ->
        try
            let stat = File.ReadAllText(Path.Combine(d, "stat"))
            let name = stat.Substring(stat.IndexOf '(' + 1, stat.LastIndexOf ')' - stat.IndexOf '(' - 1)
            let rest = stat.Substring(stat.LastIndexOf ')' + 2).Split ' '
            Some(name + "/" + Path.GetFileName d, int64 rest[11] + int64 rest[12])
        with _ -> None)
    |> Map.ofArray

/// The threads that took CPU between two `threadTicks`, busiest first, in ms.
let private busiest (before: Map<string, int64>) (after: Map<string, int64>) =
    after
    |> Map.toList
    |> List.map (fun (k, v) -> k, v - (Map.tryFind k before |> Option.defaultValue 0L))
    |> List.filter (fun (_, d) -> d > 0L)
    |> List.sortByDescending snd
    |> List.truncate 6
    |> List.map (fun (k, d) -> sprintf "%s %d" k (d * 10L))
    |> fun parts -> String.Join(", ", parts)

/// No-op tasks/s over `n` tasks (after a warm-up of 5,000), each checked for its own value; and the client's CPU µs
/// per task, with the threads that took it.
let private rate (dfk: DataFlowKernel) (n: int) =
    let noop = App.func dfk (fun (x: int) -> x)
    [| for i in 1..5000 -> noop (Arg.value i) |] |> Array.iter (fun f -> f.Task.Wait())
    let me = Process.GetCurrentProcess()
    let c0, t0 = me.TotalProcessorTime, threadTicks ()
    let sw = Stopwatch.StartNew()
    let fs = Array.init n (fun i -> noop (Arg.value i))
    fs |> Array.iteri (fun i f -> if f.Task.Result <> i then failwithf "task %d returned %d" i f.Task.Result)
    let secs = sw.Elapsed.TotalSeconds
    me.Refresh()
    float n / secs, (me.TotalProcessorTime - c0).TotalMilliseconds * 1000.0 / float n, busiest t0 (threadTicks ())

/// CPU ms used so far by the simulator processes (they share the machine's cores with the client).
let private simMs (sims: SimProcess list) =
    sims |> List.sumBy (fun s ->
        try
            let stat = File.ReadAllText(sprintf "/proc/%d/stat" s.Pid)
            let rest = stat.Substring(stat.LastIndexOf ')' + 2).Split ' '
            (int64 rest[11] + int64 rest[12]) * 10L
        with _ -> 0L)

let run (argv: string[]) (print: string -> unit) =
    let managers = arg argv "managers" 10_000
    let slots = arg argv "slots" 64
    let procs = arg argv "procs" (max 2 ((managers + 999) / 1000))
    let tasks = arg argv "tasks" 200_000
    let lost = arg argv "lost" (min 1000 (managers / procs))
    let prefetch = arg argv "prefetch" 0
    let hbMs = arg argv "hb-ms" 2000
    let thresholdMs = arg argv "threshold-ms" 30_000
    let sockets = arg argv "sockets" (max 1 ((managers + 999) / 1000))
    let files = Limits.raiseFiles 1_048_576UL
    print (sprintf "scale: %d managers x %d slots in %d simulator processes on %d interchange sockets (prefetch %d, heartbeat %d ms, threshold %d ms, file limit %d)"
               managers slots procs sockets prefetch hbMs thresholdMs files)
    let fig = Measure.figure print
    // The baseline: one manager with as many slots as all of them (with 64, one manager's rate is bound by its round
    // trip, not by the interchange).
    let one =
        let htex, dfk = load hbMs thresholdMs sockets
        use dfk = dfk
        let sims = simulate htex [ 1 ] (managers * slots) prefetch hbMs
        try
            sims.Head.WaitFor("registered", TimeSpan.FromMinutes 2.0) |> ignore
            let s0 = simMs sims
            let r, cpu, threads = rate dfk tasks
            fig (sprintf "scale: client CPU per task with 1 manager of %d slots" (managers * slots)) cpu "us"
            fig "scale: simulator CPU per task with 1 manager" (float (simMs sims - s0) * 1000.0 / float tasks) "us"
            print ("  threads (CPU ms): " + threads)
            r, cpu
        finally
            (dfk :> IDisposable).Dispose()
            for s in sims do (s :> IDisposable).Dispose()
    let one, cpuOne = one
    fig (sprintf "scale: no-op tasks/s with 1 manager of %d slots" (managers * slots)) one "tasks/s"
    let htex, dfk = load hbMs thresholdMs sockets
    let rss0 = rssMb ()
    // The lost ones are one process of their own, so that killing it loses exactly them.
    let rest = managers - lost
    let others = List.init (procs - 1) (fun i -> rest / (procs - 1) + (if i < rest % (procs - 1) then 1 else 0))
    let t0 = threadTicks ()
    let sw = Stopwatch.StartNew()
    let sims = simulate htex (lost :: others) slots prefetch hbMs
    try
        // A line every 30 s meanwhile: on a loaded machine registering thousands takes minutes.
        for s in sims do
            let mutable waiting = true
            while waiting do
                try
                    s.WaitFor("registered", TimeSpan.FromSeconds 30.0) |> ignore
                    waiting <- false
                with _ when sw.Elapsed < TimeSpan.FromMinutes 40.0 && not s.HasExited ->
                    print (sprintf "  %.0f s: %d managers registered" sw.Elapsed.TotalSeconds (htex.ConnectedManagersAsync().Result.Length))
        let registered = sw.Elapsed.TotalSeconds
        let simCpu = simMs sims
        print (sprintf "  registration: simulators' CPU %d ms; client threads (CPU ms): %s" simCpu (busiest t0 (threadTicks ())))
        let connected = htex.ConnectedManagersAsync().Result.Length
        if connected <> managers then failwithf "%d managers connected, not %d" connected managers
        fig (sprintf "scale: s until %d managers registered" managers) registered "s"
        let rss1 = rssMb ()
        fig (sprintf "scale: client RSS with %d managers (%d worker slots)" managers (managers * slots)) rss1 "MB"
        fig "scale: client RSS per manager" ((rss1 - rss0) * 1024.0 / float managers) "KB"
        // Heartbeats alone: the client's CPU over a quiet window, per heartbeat answered (counted by the simulators).
        let beats () = sims |> List.sumBy (fun s -> let _, _, _, h, _ = s.Stats(TimeSpan.FromSeconds 30.0) in h)
        let me = Process.GetCurrentProcess()
        let h0, c0, t0 = beats (), me.TotalProcessorTime, threadTicks ()
        let window = TimeSpan.FromMilliseconds(float (max 6000 (3 * hbMs)))
        Thread.Sleep window
        me.Refresh()
        let h1, c1 = beats (), me.TotalProcessorTime
        print (sprintf "  %d heartbeats; threads (CPU ms): %s" (h1 - h0) (busiest t0 (threadTicks ())))
        fig "scale: client CPU per heartbeat (quiet)" ((c1 - c0).TotalMilliseconds * 1000.0 / float (max 1L (h1 - h0))) "us"
        fig (sprintf "scale: client CPU share for heartbeats every %d ms" hbMs) ((c1 - c0).TotalMilliseconds * 100.0 / window.TotalMilliseconds) "% of a core"
        let s0 = simMs sims
        let many, cpu, threads = rate dfk tasks
        fig (sprintf "scale: client CPU per task with %d managers" managers) cpu "us"
        fig (sprintf "scale: simulator CPU per task with %d managers" managers) (float (simMs sims - s0) * 1000.0 / float tasks) "us"
        print ("  threads (CPU ms): " + threads)
        fig (sprintf "scale: no-op tasks/s with %d managers" managers) many "tasks/s"
        fig "scale: with many managers / with 1" (100.0 * many / one) "%"
        // The simulators share the client's two cores: what the client itself spends per task is the interchange's
        // side of the ratio (1 manager's CPU per task over many managers').
        fig "scale: client CPU per task, 1 manager / many" (100.0 * cpuOne / cpu) "%"
        let dups = sims |> List.sumBy (fun s -> let _, _, d, _, _ = s.Stats(TimeSpan.FromSeconds 30.0) in d)
        if dups <> 0L then failwithf "%d tries were sent twice" dups
        // A node failure at scale: one process's managers die at once, and tasks keep coming.
        let doomed = sims.Head
        let noop = App.func dfk (fun (x: int) -> x)
        let k = max 1000 (tasks / 10)
        let t0 = Stopwatch.StartNew()
        doomed.Kill()
        let fs = Array.init k (fun i -> noop (Arg.value i))
        let mutable failed = 0
        for f in fs do
            try f.Task.Wait() with :? AggregateException as e when (e.InnerException :? ManagerLost) -> failed <- failed + 1
        let resolved = t0.Elapsed.TotalSeconds
        let mutable left = htex.ConnectedManagersAsync().Result.Length
        while left > managers - lost do
            Thread.Sleep 100
            left <- htex.ConnectedManagersAsync().Result.Length
        fig (sprintf "scale: s until %d managers killed at once are declared lost" lost) t0.Elapsed.TotalSeconds "s"
        fig (sprintf "scale: s until %d tasks sent meanwhile resolved (%d ManagerLost)" k failed) resolved "s"
        fig "scale: of which the heartbeat threshold" (float thresholdMs / 1000.0) "s"
    finally
        (dfk :> IDisposable).Dispose()
        for s in sims do (s :> IDisposable).Dispose()
