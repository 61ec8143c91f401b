module Parsl.Tests.HtexTests

open System
open System.IO
open Expecto
open Parsl
open Parsl.Executors
open Parsl.Executors.HighThroughput
open Parsl.Providers
open Parsl.Tests.TestUtil

/// A record and a union that travel as arguments and results.
type Point = { X: int; Y: int; Label: string }

type Shape =
    | Circle of radius: float
    | Rect of Point * Point

/// Short heartbeats and polls so failures are seen quickly.
let fastOptions (f: HtexOptions -> HtexOptions) =
    f
        { HtexOptions.defaults with
            MaxWorkersPerNode = Some 2
            HeartbeatPeriod = TimeSpan.FromMilliseconds 200.0
            HeartbeatThreshold = TimeSpan.FromSeconds 3.0
            StrategyPeriod = TimeSpan.FromMilliseconds 200.0
            Provider = LocalProvider { LocalProvider.Defaults with StatusPollingInterval = TimeSpan.FromMilliseconds 200.0 } }

let withHtex (f: HtexOptions -> HtexOptions) =
    let htex = HighThroughputExecutor(fastOptions f)
    let dfk = load (fun c -> { c with Executors = [ htex ] })
    htex, dfk

let e2e =
    testList "HTEx end to end" [
        test "function apps, closures, records and unions run on worker processes" {
            let htex, dfk = withHtex id
            use _ = dfk
            let square = App.func dfk (fun (x: int) -> x * x)
            let offset = 1000 + Environment.ProcessId % 1
            let shift = App.func dfk (fun (x: int) -> x + offset)
            let pid = App.func dfk (fun (_: int) -> Environment.ProcessId)
            let moved = App.func dfk (fun (p: Point) -> { p with X = p.X + 1; Label = p.Label + "!" })
            let area = App.func dfk (fun (s: Shape) -> match s with Circle r -> Rect({ X = 0; Y = 0; Label = "c" }, { X = int r; Y = int r; Label = "c" }) | r -> r)
            let a = square (Arg.value 7)
            let b = shift (Arg.future a)
            Expect.equal (await b.Task) 1049 "closure captured offset"
            let p = await (moved (Arg.value { X = 1; Y = 2; Label = "p" })).Task
            Expect.equal p { X = 2; Y = 2; Label = "p!" } "record round trip"
            let s = await (area (Arg.value (Circle 3.0))).Task
            Expect.equal s (Rect({ X = 0; Y = 0; Label = "c" }, { X = 3; Y = 3; Label = "c" })) "union round trip"
            let remote = await (pid (Arg.value 0)).Task
            Expect.notEqual remote Environment.ProcessId "ran in another process"
            let managers = await (htex.ConnectedManagersAsync())
            Expect.equal managers.Length 1 "one manager"
            Expect.equal managers.Head.WorkerCount 2 "two workers"
        }
    ]

let tests = testList "HTEx" [ e2e ]
