/// The interchange with many managers: simulated managers (Parsl.ManagerSim, real processes holding many manager
/// connections over TCP with CURVE and the proof of the run's secret) against a real executor. What is checked is
/// what must hold at any scale: every try reaches exactly one manager once, results come back to their own futures,
/// and managers that die together are all declared lost and their tries retried elsewhere. No timing is asserted
/// (the figures are the benchmark's `scale` row).
module Parsl.Tests.HtexScaleTests

open System
open Expecto
open Parsl
open Parsl.Executors
open Parsl.Executors.HighThroughput
open Parsl.Node.HighThroughput
open Parsl.Jobs
open Parsl.ManagerSim.Sim
open Parsl.Providers
open Parsl.Tests.TestUtil
open Parsl.Tests.HtexTests

/// An executor with no blocks of its own (every manager is simulated), on TCP, with heartbeats short enough that a
/// lost manager is declared within seconds.
let private withoutBlocks (retries: int) =
    let htex =
        HighThroughputExecutor(
            { HtexOptions.defaults () with
                Provider = LocalProvider { LocalProvider.Defaults with InitBlocks = 0; MinBlocks = 0; MaxBlocks = 0 }
                Strategy = NoScaling
                SameHostSocket = false
                HeartbeatPeriod = TimeSpan.FromMilliseconds 300.0
                HeartbeatThreshold = TimeSpan.FromSeconds 3.0 })
    let dfk = load (fun c -> { c with Executors = [ htex ]; Retries = retries })
    htex, dfk

/// A simulator process of `n` managers with `slots` each for this executor (`hold`: they never answer).
let private simulator (htex: HighThroughputExecutor) (prefix: string) (n: int) (slots: int) (hold: bool) =
    new SimProcess(
        [ "--address"; sprintf "tcp://127.0.0.1:%d" htex.WorkerPort.Value
          "--cert-dir"; htex.CertificateDirectory.Value
          "--managers"; string n
          "--slots"; string slots
          "--hb-period"; "300"
          "--prefix"; prefix
          "--block-id"; prefix
          if hold then "--hold" ])

let private registered (s: SimProcess) = s.WaitFor("registered", TimeSpan.FromMinutes 3.0) |> ignore

let private stats (s: SimProcess) = s.Stats(TimeSpan.FromSeconds 60.0)

let tests =
    testSequenced <| testList "HTEx at scale (simulated managers)" [
        test "200 simulated managers: every task reaches exactly one manager once and completes with its own value" {
            let htex, dfk = withoutBlocks 0
            use _ = dfk
            use a = simulator htex "a-" 100 4 false
            use b = simulator htex "b-" 100 4 false
            registered a
            registered b
            let managers = await (htex.ConnectedManagersAsync())
            Expect.equal managers.Length 200 "all 200 registered"
            Expect.equal (managers |> List.sumBy (fun m -> m.WorkerCount)) 800 "with 4 slots each"
            let noop = App.func dfk (fun (x: int) -> x)
            let n = 4000
            let fs = Array.init n (fun i -> noop (Arg.value i))
            let values = fs |> Array.map (fun f -> await f.Task)
            Expect.equal values (Array.init n id) "each future has its own task's value"
            let ta, aa, da, _, _ = stats a
            let tb, ab, db, _, _ = stats b
            Expect.equal (ta + tb) (int64 n) "the simulators were given each try once, no more"
            Expect.equal (aa + ab) (int64 n) "and answered each"
            Expect.equal (da + db) 0L "no try was sent twice"
            Expect.isGreaterThan ta 0L "both processes' managers got work"
            Expect.isGreaterThan tb 0L "both processes' managers got work"
        }
        test "100 managers lost at once (their process killed) are all declared lost and their tries run elsewhere" {
            let htex, dfk = withoutBlocks 1
            use _ = dfk
            // The doomed ones take tries and never answer (a node whose workers hang), then die together.
            use doomed = simulator htex "doomed-" 100 4 true
            use alive = simulator htex "alive-" 100 4 false
            registered doomed
            registered alive
            waitUntil 60.0 "200 managers" (fun () -> (await (htex.ConnectedManagersAsync())).Length = 200)
            let noop = App.func dfk (fun (x: int) -> x)
            let n = 1000
            let fs = Array.init n (fun i -> noop (Arg.value i))
            // The doomed managers' 400 slots fill up and stay full; everything else completes on the others.
            waitUntil 120.0 "the doomed managers to hold 400 tries" (fun () -> let t, _, _, _, _ = stats doomed in t = 400L)
            waitUntil 120.0 "every other task to complete" (fun () -> (fs |> Array.filter (fun f -> f.IsCompleted)).Length = n - 400)
            doomed.Kill()
            let values = fs |> Array.map (fun f -> await f.Task)
            Expect.equal values (Array.init n id) "the 400 lost tries were retried elsewhere and completed with their own values"
            waitUntil 60.0 "the interchange to list only the live managers" (fun () ->
                let ms = await (htex.ConnectedManagersAsync())
                ms.Length = 100 && ms |> List.forall (fun m -> m.ManagerId.StartsWith "alive-"))
            let t, a, d, _, live = stats alive
            Expect.equal t (int64 n) "the live managers got the 600 tries and the 400 retries, each once"
            Expect.equal a (int64 n) "and answered each"
            Expect.equal d 0L "no try was sent to them twice"
            Expect.equal live 100L "the live managers were not disturbed"
        }
    ]
