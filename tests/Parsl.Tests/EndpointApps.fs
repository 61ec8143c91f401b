/// Apps the endpoint tests run on endpoints. A file of its own with no module-level values: the endpoint (or its
/// HTEx workers) loads this assembly, and a module initializer of the test file would run there.
module Parsl.Tests.EndpointApps

open System
open System.IO
open System.Threading

/// A task that waits for a gate file (its work: the test opens the gate when it has killed what it meant to), after
/// leaving a marker that says it started.
let gated (dir: string) (x: int) =
    File.WriteAllText(Path.Combine(dir, sprintf "started-%d-%d" x Environment.ProcessId), "")
    while not (File.Exists(Path.Combine(dir, "gate"))) do
        Thread.Sleep 50
    x * 10

/// Raises when the app's argument is negative (a typed remote exception).
let checkedSquare (x: int) =
    if x < 0 then raise (InvalidOperationException(sprintf "negative: %d" x))
    x * x

