module Parsl.Tests.TestUtil

open System
open System.IO
open Parsl

/// A fresh base run directory under the system temp folder, for one test.
let tempRunDir () =
    let d = Path.Combine(Path.GetTempPath(), "parsl-tests", Guid.NewGuid().ToString("N"))
    Directory.CreateDirectory d |> ignore
    d

/// A config with its own run directory.
let config () = { Config.defaults with RunDir = tempRunDir () }

/// Loads a kernel with a config changed by `f`.
let load (f: Config -> Config) = DataFlowKernel.Load(f (config ()))

/// Waits for a task with a generous limit, so that a broken feature fails the test instead of hanging CI.
let await (t: Threading.Tasks.Task<'T>) =
    if not (t.Wait(TimeSpan.FromSeconds 60.0)) then failwith "timed out after 60 s"
    t.Result

/// The exception a future failed with (fails the test if it succeeded).
let errorOf (f: AppFuture<'T>) =
    try
        (f.Task.Wait(TimeSpan.FromSeconds 60.0)) |> ignore
        if not f.IsCompleted then failwith "timed out after 60 s"
        if not f.IsFaulted then failwithf "expected task %d to fail, it returned %A" f.TaskId.Value f.Task.Result
        f.Exception
    with :? AggregateException -> f.Exception

/// A Slurm provider for the one-node test cluster (tests/harness/slurm.sh): nodes shared, five-minute blocks, status
/// polled every second so a block's end is seen at once; `f` sets the rest (the launcher).
let slurmForTests (f: Parsl.Providers.SlurmOptions -> Parsl.Providers.SlurmOptions) =
    new Parsl.Providers.SlurmProvider(
        f
            { Parsl.Providers.Slurm.defaults with
                Exclusive = false
                Walltime = "00:05:00"
                CmdTimeout = TimeSpan.FromSeconds 30.0
                StatusPollingInterval = TimeSpan.FromSeconds 1.0 })

