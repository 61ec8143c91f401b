/// The interchange with many managers: simulated managers (Parsl.ManagerSim, real processes holding many manager
/// connections over TCP with CURVE and the proof of the run's secret) against a real executor. What is checked is
/// what must hold at any scale: every try reaches exactly one manager once, results come back to their own futures,
/// and managers that die together are all declared lost and their tries retried elsewhere. No timing is asserted
/// (the figures are the benchmark's `scale` row). The interchange spreads them over several ROUTER sockets
/// (`InterchangeSockets`): every socket's managers get work, a real manager finds its socket from the launch command,
/// an identity proven on one socket is nobody on another, and a manager let go must prove the secret again.
module Parsl.Tests.HtexScaleTests

open System
open System.IO
open System.Text
open Expecto
open FsCheck
open NetMQ
open NetMQ.Sockets
open Parsl
open Parsl.Executors
open Parsl.Executors.HighThroughput
open Parsl.Node.HighThroughput
open Parsl.Jobs
open Parsl.ManagerSim.Sim
open Parsl.Providers
open Parsl.Tests.TestUtil
open Parsl.Tests.HtexTests
open Parsl.Tests.HtexSecurityTests

/// An executor with no blocks of its own (every manager is simulated), on TCP, with heartbeats short enough that a
/// lost manager is declared within seconds.
let private withoutBlocks (retries: int) (sockets: int) =
    let htex =
        HighThroughputExecutor(
            { HtexOptions.defaults () with
                Provider = LocalProvider { LocalProvider.Defaults with InitBlocks = 0; MinBlocks = 0; MaxBlocks = 0 }
                Strategy = NoScaling
                SameHostSocket = false
                InterchangeSockets = Some sockets
                HeartbeatPeriod = TimeSpan.FromMilliseconds 300.0
                HeartbeatThreshold = TimeSpan.FromSeconds 3.0 })
    let dfk = load (fun c -> { c with Executors = [ htex ]; Retries = retries })
    htex, dfk

/// A simulator process of `n` managers with `slots` each for this executor (`hold`: they never answer).
let private simulator (htex: HighThroughputExecutor) (prefix: string) (n: int) (slots: int) (hold: bool) =
    new SimProcess(
        [ "--address"; InterchangePorts.format "127.0.0.1" htex.WorkerPorts.Value
          "--cert-dir"; htex.CertificateDirectory.Value
          "--managers"; string n
          "--slots"; string slots
          "--hb-period"; "300"
          "--prefix"; prefix
          "--block-id"; prefix
          if hold then "--hold" ])

let private registered (s: SimProcess) = s.WaitFor("registered", TimeSpan.FromMinutes 3.0) |> ignore

let private stats (s: SimProcess) = s.Stats(TimeSpan.FromSeconds 60.0)

/// A DEALER on one of the interchange's ports under `identity`, with the run's CURVE keys (as a manager has them).
let private dealer (htex: HighThroughputExecutor) (identity: string) (port: int) =
    let dir = htex.CertificateDirectory.Value
    let client = File.ReadAllLines(Path.Combine(dir, "client.key"))
    let d = new DealerSocket()
    d.Options.Identity <- Encoding.UTF8.GetBytes identity
    d.Options.Linger <- TimeSpan.Zero
    d.Options.CurveServerKey <- NetMQCertificate.FromPublicKey(File.ReadAllText(Path.Combine(dir, "server.key")).Trim()).PublicKey
    d.Options.CurveCertificate <- NetMQCertificate(client[1].Trim(), client[0].Trim())
    d.Connect(sprintf "tcp://127.0.0.1:%d" port)
    d

/// The next message the interchange sends this socket (failing after a minute).
let private next (d: DealerSocket) =
    let mutable frame: byte[] = null
    if not (d.TryReceiveFrameBytes(TimeSpan.FromSeconds 60.0, &frame)) then failtest "the interchange sent nothing within 60 s"
    Protocol.decodeToManager frame

/// Says hello, answers the challenge with the run's secret, registers; returns what the interchange answered.
let private answer (htex: HighThroughputExecutor) (d: DealerSocket) (identity: string) (challenge: ToManager) =
    let key = File.ReadAllLines(Path.Combine(htex.CertificateDirectory.Value, "client.key"))
    let secret = key[1].Trim()
    match challenge with
    | Challenge nonce ->
        d.SendFrame(Handshake.proof (Handshake.key secret) nonce (Encoding.UTF8.GetBytes identity))
        d.SendFrame(register (Protocol.parslVersion ()) identity)
        next d
    | m -> failtestf "expected a challenge, got %A" m

let private proveAndRegister (htex: HighThroughputExecutor) (d: DealerSocket) (identity: string) =
    d.SendFrame(Handshake.hello ())
    answer htex d identity (next d)

/// Registers without a proof, then says hello: an identity the interchange trusts would be accepted (and its hello
/// ignored as malformed); a stranger's registration is dropped and its hello answered with a challenge.
let private registerUnproven (d: DealerSocket) (identity: string) =
    d.SendFrame(register (Protocol.parslVersion ()) identity)
    d.SendFrame(Handshake.hello ())
    next d

let private ports =
    testList "InterchangePorts" [
        testProperty "an address listing the ports parses back to its host and ports" (fun (NonEmptyArray(ps: PositiveInt[])) ->
            let ports = ps |> Array.map (fun p -> 1 + (p.Get - 1) % 65535) |> List.ofArray
            InterchangePorts.parse (InterchangePorts.format "node-1.cluster" ports) = Ok("node-1.cluster", ports))
        testProperty "a manager's socket is one of them, and always the same for its id" (fun (id: NonNull<string>) (PositiveInt k) ->
            let c = InterchangePorts.choose id.Get k
            c >= 0 && c < k && c = InterchangePorts.choose id.Get k)
        test "managers numbered as a block's are spread evenly over the sockets" {
            let counts = [ for i in 0..9999 -> InterchangePorts.choose (sprintf "sim%d-%d" (i / 1000) i) 10 ] |> List.countBy id |> Map.ofList
            Expect.equal counts.Count 10 "every socket has managers"
            for KeyValue(k, n) in counts do
                Expect.isTrue (n > 800 && n < 1200) (sprintf "socket %d has %d of 10,000 managers (1,000 expected)" k n)
        }
        test "a manager picks one port of the address; a malformed address is refused with the form expected" {
            Expect.equal (InterchangePorts.pick "m" "tcp://10.0.0.1:54000") (Ok "tcp://10.0.0.1:54000") "one port: that one"
            let picked = InterchangePorts.pick "m" "tcp://10.0.0.1:54000,54001,54002"
            Expect.contains [ Ok "tcp://10.0.0.1:54000"; Ok "tcp://10.0.0.1:54001"; Ok "tcp://10.0.0.1:54002" ] picked "one of the three"
            for bad in [ "10.0.0.1:54000"; "tcp://10.0.0.1:"; "tcp://10.0.0.1:54000,x"; "tcp://:54000"; "tcp://h:70000" ] do
                match InterchangePorts.parse bad with
                | Error e -> Expect.stringContains e "tcp://HOST:PORT" (sprintf "%s: says the form" bad)
                | Ok r -> failtestf "%s parsed as %A" bad r
        }
        test "InterchangeSockets out of range is refused at load, naming the field" {
            for k in [ 0; 65 ] do
                let htex = HighThroughputExecutor({ HtexOptions.defaults () with InterchangeSockets = Some k })
                match (try (load (fun c -> { c with Executors = [ htex ] }) :> IDisposable).Dispose(); None with :? ConfigurationError as c -> Some c) with
                | Some e ->
                    Expect.equal e.Field "HighThroughputExecutor.InterchangeSockets" (sprintf "%d sockets: the field is named" k)
                    Expect.stringContains e.Message "from 1 to 64" "and the range allowed"
                | None -> failtestf "%d sockets loaded" k
            let errors = HtexOptions.validate { HtexOptions.defaults () with InterchangeSockets = Some 8; WorkerPortRange = (54000, 54004) }
            Expect.contains (errors |> List.map (fun e -> e.Field)) "HighThroughputExecutor.InterchangeSockets" "more sockets than ports in the range"
            Expect.equal (HtexOptions.interchangeSockets (HtexOptions.defaults ())) 1 "one socket for a local provider's one block"
            let big = { HtexOptions.defaults () with Provider = LocalProvider { LocalProvider.Defaults with MaxBlocks = 50; NodesPerBlock = 200 } }
            Expect.equal (HtexOptions.interchangeSockets big) 10 "one per 1,000 managers the provider may start"
        }
    ]

let private scale =
    testSequenced <| testList "HTEx at scale (simulated managers)" [
        test "200 simulated managers over 4 interchange sockets: every socket's managers get work; every task reaches exactly one manager once and completes with its own value" {
            let htex, dfk = withoutBlocks 0 4
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
            let byPort =
                a.ByPort(TimeSpan.FromSeconds 60.0) @ b.ByPort(TimeSpan.FromSeconds 60.0)
                |> List.groupBy fst
                |> List.map (fun (p, xs) -> p, List.sumBy snd xs)
            Expect.equal (byPort |> List.map fst |> List.sort) (List.sort htex.WorkerPorts.Value) "the managers used the interchange's 4 ports"
            Expect.equal htex.WorkerPorts.Value.Length 4 "4 sockets"
            Expect.equal htex.WorkerPort (Some htex.WorkerPorts.Value.Head) "WorkerPort is the first socket's"
            for p, n in byPort do
                Expect.isGreaterThan n 0L (sprintf "the managers on port %d got tries" p)
        }
        test "a real manager launched by the executor connects over TCP to the socket its id picks, and runs tasks" {
            let htex, dfk = withoutBlocks 0 3
            use _ = dfk
            // An id that picks the last of the three sockets (not the first, which WorkerPort names).
            let id = Seq.initInfinite (sprintf "real-%d") |> Seq.find (fun i -> InterchangePorts.choose i 3 = 2)
            let manager = startManager htex "real" ("--manager-id " + id)
            try
                let add = App.func dfk (fun (x: int) -> x + 1)
                Expect.equal ([ for i in 1..20 -> add (Arg.value i) ] |> List.map (fun f -> await f.Task)) [ 2..21 ] "its tasks ran"
                let managers = await (htex.ConnectedManagersAsync())
                Expect.equal (managers |> List.map (fun m -> m.ManagerId)) [ id ] "the manager registered under its id"
                Expect.isFalse managers.Head.Local "over TCP"
            finally
                stopManager manager
        }
        test "an identity proven on one socket is a stranger on another; a manager declared lost must prove the secret again, even on its open connection" {
            let htex, dfk = withoutBlocks 0 2
            use _ = dfk
            let ports = htex.WorkerPorts.Value
            use first = dealer htex "returning" ports[0]
            Expect.equal (proveAndRegister htex first "returning") Accepted "registered after proving the secret"
            // The same identity on the other socket, without the proof: its registration is dropped.
            use other = dealer htex "returning" ports[1]
            match registerUnproven other "returning" with
            | Challenge _ -> ()
            | m -> failtestf "a stranger on the other socket under a proven identity was answered %A" m
            Expect.equal ((await (htex.ConnectedManagersAsync())) |> List.map (fun m -> m.ManagerId)) [ "returning" ] "still one manager"
            // It falls silent (its connection stays open) and is declared lost after the heartbeat threshold: the
            // identity is forgotten with it.
            waitUntil 60.0 "the silent manager to be declared lost" (fun () -> (await (htex.ConnectedManagersAsync())).IsEmpty)
            let again = first
            let challenge = registerUnproven again "returning"
            match challenge with
            | Challenge _ -> ()
            | m -> failtestf "a lost manager's identity, without the proof, was answered %A" m
            Expect.isEmpty (await (htex.ConnectedManagersAsync())) "it did not register"
            // With the proof it comes back.
            Expect.equal (answer htex again "returning" challenge) Accepted "registered again after proving the secret"
        }
        test "a connection that closes takes its proof with it: a new connection under its identity must prove the secret again, long before the heartbeat threshold" {
            let htex =
                HighThroughputExecutor(
                    { HtexOptions.defaults () with
                        Provider = LocalProvider { LocalProvider.Defaults with InitBlocks = 0; MinBlocks = 0; MaxBlocks = 0 }
                        Strategy = NoScaling
                        SameHostSocket = false
                        InterchangeSockets = Some 2
                        HeartbeatPeriod = TimeSpan.FromSeconds 10.0
                        HeartbeatThreshold = TimeSpan.FromSeconds 300.0 })
            use _ = load (fun c -> { c with Executors = [ htex ] })
            let port = htex.WorkerPorts.Value[1]
            let first = dealer htex "node-7" port
            Expect.equal (proveAndRegister htex first "node-7") Accepted "registered after proving the secret"
            first.Dispose()
            // NetMQ reports the closed connection and the interchange's next ticks (at most a second apart) forget the
            // identity; a connection that speaks before that is still trusted, so connect until the proof is asked for.
            // (A connection made while the ROUTER still holds the old one's pipe waits unread: NetMQ identifies it only
            // when more arrives, so an attempt that hears nothing is closed and made again.)
            let deadline = DateTime.UtcNow + TimeSpan.FromSeconds 60.0
            let mutable asked = false
            while not asked do
                use again = dealer htex "node-7" port
                again.SendFrame(register (Protocol.parslVersion ()) "node-7")
                again.SendFrame(Handshake.hello ())
                let mutable frame: byte[] = null
                let answer = if again.TryReceiveFrameBytes(TimeSpan.FromSeconds 3.0, &frame) then Some(Protocol.decodeToManager frame) else None
                match answer with
                | Some(Challenge _) -> asked <- true
                | Some Accepted
                | None when DateTime.UtcNow < deadline -> ()
                | m -> failtestf "60 s after its connection closed (the threshold is 300 s), a new connection under the identity without the proof was answered %A" m
            Expect.equal ((await (htex.ConnectedManagersAsync())) |> List.map (fun m -> m.ManagerId)) [ "node-7" ] "the manager is not declared lost yet: the proof went with the connection"
        }
        test "100 managers lost at once (their process killed) are all declared lost and their tries run elsewhere" {
            let htex, dfk = withoutBlocks 1 2
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

let tests = testList "HTEx at scale" [ ports; scale ]
