/// Small helpers shared by the benchmarks.
module Parsl.Bench.Measure

open System
open System.Diagnostics
open System.IO
open Parsl

/// A throwaway run directory for one benchmark kernel.
let runDir () =
    let d = Path.Combine(Path.GetTempPath(), "parsl-bench", Guid.NewGuid().ToString("N"))
    Directory.CreateDirectory d |> ignore
    d

/// A benchmark config: no log file, its own run directory.
let config executors =
    { Config.defaults with
        RunDir = runDir ()
        InitializeLogging = false
        Executors = executors }

/// Seconds taken by `f`.
let time (f: unit -> unit) =
    let sw = Stopwatch.StartNew()
    f ()
    sw.Elapsed.TotalSeconds

/// Managed heap after a full, compacting collection.
let heapBytes () =
    GC.Collect(2, GCCollectionMode.Forced, true, true)
    GC.WaitForPendingFinalizers()
    GC.Collect(2, GCCollectionMode.Forced, true, true)
    GC.GetTotalMemory true

/// One figure per line: `name: value unit`.
let figure (print: string -> unit) (name: string) (value: float) (unit: string) =
    print (sprintf "%-52s %12.1f %s" (name + ":") value unit)

/// Steady state, as a long-running workflow sees it: `warm` discarded rounds (the JIT's tiering settles within a
/// few hundred thousand tasks), then the median of `rounds` measured ones (by `key`).
let steady warm rounds (measure: unit -> 'a) (key: 'a -> float) =
    for _ in 1..warm do measure () |> ignore
    let xs = Array.init rounds (fun _ -> measure ()) |> Array.sortBy key
    xs[rounds / 2]
