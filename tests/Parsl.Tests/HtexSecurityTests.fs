/// The interchange against strangers: peers that speak old ZMTP versions, peers without the run's secret, floods of
/// malformed messages, idle local connections, and managers of another version. Real sockets on loopback, a real
/// executor and real managers throughout.
module Parsl.Tests.HtexSecurityTests

open System
open System.Diagnostics
open System.IO
open System.Net.Sockets
open System.Text
open Expecto
open FsCheck
open Parsl
open Parsl.Executors
open Parsl.Executors.HighThroughput
open Parsl.Node.HighThroughput
open Parsl.Providers
open Parsl.Tests.TestUtil
open Parsl.Tests.HtexTests

/// What a task's argument carries, so that a stranger that got the task would hold these bytes.
let marker = "TASK-PAYLOAD-ONLY-FOR-MANAGERS-7f3a"

/// A raw TCP connection to the interchange that records every byte it receives (read by its own loop, awaited by
/// `Dispose`).
type RawPeer(port: int) =
    let client = new TcpClient()
    do client.Connect(Net.IPAddress.Loopback, port)
    let received = new MemoryStream()
    let stream = client.GetStream()
    let reader =
        task {
            let buffer = Array.zeroCreate<byte> 65536
            let mutable go = true
            while go do
                let! n = (try stream.ReadAsync(buffer, 0, buffer.Length) with _ -> Threading.Tasks.Task.FromResult 0)
                if n <= 0 then go <- false else lock received (fun () -> received.Write(buffer, 0, n))
        }
    member _.Send(bytes: byte[]) = try stream.Write(bytes, 0, bytes.Length) with :? IOException -> ()
    /// Everything received so far.
    member _.Received = lock received (fun () -> received.ToArray())
    member this.Contains(needle: byte[]) = (ReadOnlySpan this.Received).IndexOf(ReadOnlySpan needle) >= 0
    interface IDisposable with
        member _.Dispose() =
            client.Close()
            (try reader.Wait(TimeSpan.FromSeconds 10.0) |> ignore with _ -> ())
            received.Dispose()

/// ZMTP framing written by hand, as a stranger's program would.
module Zmtp =
    /// The signature every versioned ZMTP peer starts with (also a ZMTP 1.0 identity header).
    let signature = [| 0xFFuy; 0uy; 0uy; 0uy; 0uy; 0uy; 0uy; 0uy; 1uy; 0x7Fuy |]
    /// A ZMTP 1.0 peer: revision 0, a DEALER, an empty identity frame; then 1.0 frames (length, flags, body).
    let v1Greeting = Array.concat [ signature; [| 0uy; 5uy |]; [| 1uy; 0uy |] ]
    let v1Frame (body: byte[]) =
        if body.Length + 1 < 255 then Array.concat [ [| byte (body.Length + 1); 0uy |]; body ]
        else Array.concat [ [| 0xFFuy |]; BitConverter.GetBytes(int64 (body.Length + 1)) |> Array.rev; [| 0uy |]; body ]
    /// A ZMTP 2.0 peer: revision 1, a DEALER, an empty identity frame; then 2.0 frames (flags, length, body).
    let v2Greeting = Array.concat [ signature; [| 1uy; 5uy |]; [| 0uy; 0uy |] ]
    let v2Frame (body: byte[]) =
        if body.Length < 256 then Array.concat [ [| 0uy; byte body.Length |]; body ]
        else Array.concat [ [| 2uy |]; BitConverter.GetBytes(int64 body.Length) |> Array.rev; body ]
    /// A 2.0 frame header claiming `size` bytes (that never come).
    let v2Claim (size: int64) = Array.concat [ [| 2uy |]; BitConverter.GetBytes size |> Array.rev ]

/// The start of an encoded `Challenge` (a MessagePack array of two: tag 8, 32 bytes).
let challengePrefix = [| 0x92uy; 8uy; 0xC4uy; 32uy |]

let register version id =
    Protocol.encodeToInterchange (Register { intruder id with ParslVersion = version })

/// Starts a manager by hand, as a block would (its command line from the executor), with extra flags.
let startManager (htex: HighThroughputExecutor) (blockId: string) (extra: string) =
    let psi = ProcessStartInfo("/bin/sh")
    psi.ArgumentList.Add "-c"
    psi.ArgumentList.Add("exec " + htex.LaunchCommand blockId + " " + extra)
    psi.RedirectStandardError <- true
    let p = Process.Start psi
    p.BeginErrorReadLine()
    p

let stopManager (p: Process) =
    if not p.HasExited then (try p.Kill true with _ -> ())
    p.WaitForExit 30000 |> ignore
    p.Dispose()

/// An executor with no blocks of its own and one task (carrying `marker`) waiting in its interchange.
let queued (f: HtexOptions -> HtexOptions) =
    let htex, dfk = withHtex (fun o -> f { o with Provider = LocalProvider { LocalProvider.Defaults with InitBlocks = 0; MinBlocks = 0; MaxBlocks = 0 } })
    let app = App.func dfk (fun (s: string) -> s.Length)
    let first = app (Arg.value marker)
    waitUntil 30.0 "the task to be queued" (fun () -> htex.Outstanding = 1)
    htex, dfk, app, first

/// This process's resident memory, in bytes, after a full collection.
let rss () =
    GC.Collect()
    GC.WaitForPendingFinalizers()
    GC.Collect()
    File.ReadLines "/proc/self/status"
    |> Seq.find (fun l -> l.StartsWith "VmRSS:")
    |> fun l -> int64 (l.Split([| ' '; '\t' |], StringSplitOptions.RemoveEmptyEntries)[1]) * 1024L

let threads () = Directory.GetDirectories("/proc/self/task").Length

let handshake =
    testList "HTEx handshake (pure)" [
        testProperty "a proof verifies for its own key, nonce and identity, and for no other" (fun (secret: NonEmptyString) (other: NonEmptyString) (nonce: byte[]) (identity: byte[]) (flip: byte) ->
            let nonce = if isNull nonce then [||] else nonce
            let identity = if isNull identity then [||] else identity
            let key = Handshake.key secret.Get
            let proof = Handshake.proof key nonce identity
            let ok = Handshake.verify key nonce identity (ReadOnlySpan proof)
            let otherKey = secret.Get <> other.Get && Handshake.verify (Handshake.key other.Get) nonce identity (ReadOnlySpan proof)
            let otherNonce = Handshake.verify key (Array.append nonce [| flip |]) identity (ReadOnlySpan proof)
            let otherIdentity = Handshake.verify key nonce (Array.append identity [| flip |]) (ReadOnlySpan proof)
            ok && not otherKey && not otherNonce && not otherIdentity)
        testProperty "arbitrary bytes are neither a hello nor a proof (and never throw)" (fun (bytes: byte[]) ->
            let bytes = if isNull bytes then [||] else bytes
            let key = Handshake.key "secret"
            not (Handshake.verify key [| 1uy |] [| 2uy |] (ReadOnlySpan bytes))
            && (Handshake.isHello (ReadOnlySpan bytes) = (bytes = Handshake.hello ())))
        test "a proof is not the secret, and the hello fits the bound" {
            let secret = NetMQ.NetMQCertificate().SecretKeyZ85
            let proof = Handshake.proof (Handshake.key secret) (Array.zeroCreate 32) [||]
            Expect.isLessThan ((ReadOnlySpan proof).IndexOf(ReadOnlySpan(Encoding.UTF8.GetBytes secret))) 0 "the secret is not in the proof"
            Expect.equal proof.Length Handshake.MaxFrame "a proof is the largest handshake frame"
            Expect.isLessThanOrEqual (Handshake.hello ()).Length Handshake.MaxFrame "the hello fits"
        }
    ]

let strangers =
    testList "HTEx strangers" [
        test "ZMTP 1.0 and 2.0 peers and a peer with only the server's key get no task and fail none; a real manager over TCP runs them" {
            let htex, dfk, app, first = queued (fun o -> { o with SameHostSocket = false })
            use _ = dfk
            let port = htex.WorkerPort.Value
            // Downgrades that NetMQ lets past a CURVE server: no CURVE handshake at all, a Register in clear text.
            use v1 = new RawPeer(port)
            v1.Send(Array.append Zmtp.v1Greeting (Zmtp.v1Frame (register (Protocol.parslVersion ()) "v1")))
            use v2 = new RawPeer(port)
            v2.Send(Array.append Zmtp.v2Greeting (Zmtp.v2Frame (register (Protocol.parslVersion ()) "v2")))
            // CURVE done right with the server's public key and a key pair of its own: it registers, and it answers
            // a challenge with a proof made from the key it has (not the run's secret).
            let dir = htex.CertificateDirectory.Value
            use curve = new NetMQ.Sockets.DealerSocket()
            curve.Options.Identity <- Encoding.UTF8.GetBytes "serverkeyonly"
            curve.Options.CurveServerKey <- NetMQ.NetMQCertificate.FromPublicKey(File.ReadAllText(Path.Combine(dir, "server.key")).Trim()).PublicKey
            let own = NetMQ.NetMQCertificate()
            curve.Options.CurveCertificate <- own
            curve.Connect(sprintf "tcp://127.0.0.1:%d" port)
            NetMQ.OutgoingSocketExtensions.SendFrame(curve, register (Protocol.parslVersion ()) "serverkeyonly")
            NetMQ.OutgoingSocketExtensions.SendFrame(curve, Handshake.hello ())
            let mutable frame: byte[] = null
            Expect.isTrue (NetMQ.ReceivingSocketExtensions.TryReceiveFrameBytes(curve, TimeSpan.FromSeconds 30.0, &frame)) "a hello is answered"
            match Protocol.decodeToManager frame with
            | Challenge nonce ->
                NetMQ.OutgoingSocketExtensions.SendFrame(curve, Handshake.proof (Handshake.key own.SecretKeyZ85) nonce curve.Options.Identity)
                NetMQ.OutgoingSocketExtensions.SendFrame(curve, register (Protocol.parslVersion ()) "serverkeyonly")
            | m -> failtestf "expected a challenge, got %A" m
            // Then the real manager: its tasks, and the one every stranger could have taken first, complete.
            let manager = startManager htex "real" ""
            try
                Expect.equal (await first.Task) marker.Length "the queued task ran on the real manager"
                let results = [ for i in 1..20 -> app (Arg.value (String('x', i))) ] |> List.map (fun f -> await f.Task)
                Expect.equal results [ 1..20 ] "later tasks run"
                let managers = await (htex.ConnectedManagersAsync())
                Expect.equal (managers |> List.map (fun m -> m.BlockId)) [ "real" ] "only the real manager registered"
                Expect.isFalse managers.Head.Local "it came over TCP"
                let payload = Encoding.UTF8.GetBytes marker
                Expect.isFalse (v1.Contains payload) "the ZMTP 1.0 peer got no task"
                Expect.isFalse (v2.Contains payload) "the ZMTP 2.0 peer got no task"
                let mutable got = 0
                while NetMQ.ReceivingSocketExtensions.TryReceiveFrameBytes(curve, TimeSpan.Zero, &frame) do
                    match Protocol.decodeToManager frame with
                    | Tasks _ | Accepted -> got <- got + 1
                    | _ -> ()
                Expect.equal got 0 "the peer with only the server's key was neither accepted nor given a task"
                Expect.isNone htex.BadState "the executor is not in a bad state"
            finally
                stopManager manager
        }
        test "without encryption the run's secret is still required: a plain peer gets no task, a real manager does" {
            let htex, dfk, app, first = queued (fun o -> { o with SameHostSocket = false; Encrypted = false })
            use _ = dfk
            let port = htex.WorkerPort.Value
            Expect.isTrue (File.Exists(Path.Combine(htex.CertificateDirectory.Value, "client.key"))) "the secret exists"
            Expect.isFalse (File.Exists(Path.Combine(htex.CertificateDirectory.Value, "server.key"))) "no CURVE keys"
            // A NULL-mechanism ZMTP 3 peer (an ordinary NetMQ socket) that registers, and one that bluffs a proof.
            use plain = new NetMQ.Sockets.DealerSocket()
            plain.Options.Identity <- Encoding.UTF8.GetBytes "plain"
            plain.Connect(sprintf "tcp://127.0.0.1:%d" port)
            NetMQ.OutgoingSocketExtensions.SendFrame(plain, register (Protocol.parslVersion ()) "plain")
            use bluff = new NetMQ.Sockets.DealerSocket()
            bluff.Options.Identity <- Encoding.UTF8.GetBytes "bluff"
            bluff.Connect(sprintf "tcp://127.0.0.1:%d" port)
            NetMQ.OutgoingSocketExtensions.SendFrame(bluff, Handshake.hello ())
            let mutable frame: byte[] = null
            Expect.isTrue (NetMQ.ReceivingSocketExtensions.TryReceiveFrameBytes(bluff, TimeSpan.FromSeconds 30.0, &frame)) "a hello is answered"
            NetMQ.OutgoingSocketExtensions.SendFrame(bluff, Array.append (Encoding.ASCII.GetBytes "PARSL.NET-PROOF-1") (Array.zeroCreate 32))
            NetMQ.OutgoingSocketExtensions.SendFrame(bluff, register (Protocol.parslVersion ()) "bluff")
            use v1 = new RawPeer(port)
            v1.Send(Array.append Zmtp.v1Greeting (Zmtp.v1Frame (register (Protocol.parslVersion ()) "v1")))
            let manager = startManager htex "real" ""
            try
                Expect.equal (await first.Task) marker.Length "the queued task ran on the real manager"
                Expect.equal (await (app (Arg.value "abc")).Task) 3 "later tasks run"
                Expect.equal ((await (htex.ConnectedManagersAsync())) |> List.map (fun m -> m.BlockId)) [ "real" ] "only the real manager registered"
                for s, name in [ plain, "the plain peer"; bluff, "the bluffing peer" ] do
                    let mutable tasks = 0
                    while NetMQ.ReceivingSocketExtensions.TryReceiveFrameBytes(s, TimeSpan.Zero, &frame) do
                        match Protocol.decodeToManager frame with
                        | Tasks _ | Accepted -> tasks <- tasks + 1
                        | _ -> ()
                    Expect.equal tasks 0 (name + " was neither accepted nor given a task")
                Expect.isFalse (v1.Contains(Encoding.UTF8.GetBytes marker)) "the ZMTP 1.0 peer got no task"
            finally
                stopManager manager
        }
        test "AllowUnauthenticatedManagers gives that up: without encryption any peer that registers gets tasks" {
            let htex, dfk, _, first = queued (fun o -> { o with SameHostSocket = false; Encrypted = false; AllowUnauthenticatedManagers = true })
            use _ = dfk
            Expect.isNone htex.CertificateDirectory "no secret at all"
            use plain = new NetMQ.Sockets.DealerSocket()
            plain.Options.Identity <- Encoding.UTF8.GetBytes "plain"
            plain.Connect(sprintf "tcp://127.0.0.1:%d" htex.WorkerPort.Value)
            NetMQ.OutgoingSocketExtensions.SendFrame(plain, register (Protocol.parslVersion ()) "plain")
            let mutable frame: byte[] = null
            let mutable tasks = 0
            let deadline = DateTime.UtcNow.AddSeconds 30.0
            while tasks = 0 && DateTime.UtcNow < deadline do
                if NetMQ.ReceivingSocketExtensions.TryReceiveFrameBytes(plain, TimeSpan.FromMilliseconds 200.0, &frame) then
                    match Protocol.decodeToManager frame with
                    | Tasks ts -> tasks <- ts.Length
                    | _ -> ()
            Expect.equal tasks 1 "the stranger got the task: this is what the option gives up"
            ignore first
        }
        test "with AllowUnauthenticatedManagers and encryption, the executor's own managers connect over CURVE without the proof" {
            let htex, dfk = withHtex (fun o -> { o with SameHostSocket = false; AllowUnauthenticatedManagers = true })
            use _ = dfk
            let app = App.func dfk (fun (x: int) -> x - 1)
            Expect.equal ([ for i in 1..10 -> app (Arg.value i) ] |> List.map (fun f -> await f.Task)) [ 0..9 ] "tasks run"
            Expect.isTrue (File.Exists(Path.Combine(htex.CertificateDirectory.Value, "server.key"))) "CURVE keys"
            Expect.isFalse (await (htex.ConnectedManagersAsync())).Head.Local "over TCP"
        }
        // Alone: it measures the whole process, which tests running beside it would change.
        testSequenced <| test "10,000 malformed messages and 1 GiB frame claims leave the client's memory and the executor's work alone" {
            let htex, dfk = withHtex (fun o -> { o with SameHostSocket = false })
            use _ = dfk
            let app = App.func dfk (fun (x: int) -> x * 2)
            Expect.equal (await (app (Arg.value 1)).Task) 2 "running"
            let before = rss ()
            let port = htex.WorkerPort.Value
            // Three peers each claiming a 1 GiB frame, held open meanwhile.
            let claims = [ for _ in 1..3 -> new RawPeer(port) ]
            for c in claims do
                c.Send(Array.append Zmtp.v2Greeting (Zmtp.v2Claim (1L <<< 30)))
            // 10,000 messages of random bytes, and some well-formed ones a manager could send (a wrong version that
            // once failed the whole executor, results for tasks it never had), then a hello: its challenge comes back
            // only once everything before it on this connection was handled.
            use fuzz = new RawPeer(port)
            let random = Random(11)
            let bodies =
                [| for i in 1..10_000 ->
                    match i % 10 with
                    | 0 -> register "0.0.1-other" "fuzz"
                    | 1 -> Protocol.encodeToInterchange (Results [ { Key = int64 i; Outcome = Value [| 1uy |] } ])
                    | 2 -> Protocol.encodeToInterchange Drain
                    | _ ->
                        let b = Array.zeroCreate<byte> (random.Next(1, 2000))
                        random.NextBytes b
                        b |]
            fuzz.Send(Zmtp.v2Greeting)
            for chunk in Array.chunkBySize 500 bodies do
                fuzz.Send(chunk |> Array.collect Zmtp.v2Frame)
            fuzz.Send(Zmtp.v2Frame (Handshake.hello ()))
            waitUntil 60.0 "the interchange to answer the hello after the flood" (fun () -> fuzz.Contains challengePrefix)
            let results = [ for i in 1..50 -> app (Arg.value i) ] |> List.map (fun f -> await f.Task)
            Expect.equal results [ for i in 1..50 -> i * 2 ] "tasks still complete"
            Expect.isNone htex.BadState "no bad state"
            Expect.equal ((await (htex.ConnectedManagersAsync())).Length) 1 "the real manager only"
            let grown = rss () - before
            for c in claims do
                (c :> IDisposable).Dispose()
            Expect.isLessThan grown (50L * 1024L * 1024L) (sprintf "the client's RSS grew %d MiB" (grown / 1048576L))
        }
        // Alone: it measures the whole process, which tests running beside it would change.
        testSequenced <| test "1,000 idle connections to the local socket make no thread each, and a real manager still connects" {
            let htex, dfk = withHtex id
            use _ = dfk
            let app = App.func dfk (fun (x: int) -> x + 1)
            Expect.equal (await (app (Arg.value 1)).Task) 2 "running"
            let before = threads ()
            let idle =
                [ for _ in 1..1000 ->
                    let s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
                    s.Connect(LocalSocket.endpoint htex.LocalSocket.Value)
                    s ]
            try
                let manager = startManager htex "second" ""
                try
                    waitUntil 60.0 "the second manager to register" (fun () -> (await (htex.ConnectedManagersAsync())).Length = 2)
                    let during = threads ()
                    Expect.isLessThan (during - before) 100 (sprintf "threads went from %d to %d" before during)
                    let results = [ for i in 1..20 -> app (Arg.value i) ] |> List.map (fun f -> await f.Task)
                    Expect.equal results [ 2..21 ] "tasks complete"
                finally
                    stopManager manager
            finally
                for s in idle do
                    s.Dispose()
        }
        test "a local connection that never shows the key is closed after the pending timeout" {
            let htex, dfk = withHtex id
            use _ = dfk
            use s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            s.Connect(LocalSocket.endpoint htex.LocalSocket.Value)
            s.ReceiveTimeout <- 60_000
            let got = try s.Receive(Array.zeroCreate<byte> 16) with :? SocketException as e when e.SocketErrorCode <> SocketError.TimedOut -> 0
            Expect.equal got 0 "the interchange closed the idle connection without sending anything"
        }
        test "a manager of another version that proves the secret fails its own block only" {
            // Block 0's manager claims another version; block 1's is right.
            let dll = HtexOptions.defaultWorkerDll ()
            let script =
                sprintf "case \"$*\" in *'--block-id 0 '*) exec dotnet %s \"$@\" --parsl-version 0.0.1-other;; *) exec dotnet %s \"$@\";; esac" dll dll
            let htex, dfk =
                withHtex (fun o ->
                    { o with
                        SameHostSocket = false
                        WorkerCommand = Some [ "/bin/sh"; "-c"; script; "sh" ]
                        Provider =
                            LocalProvider
                                { LocalProvider.Defaults with
                                    InitBlocks = 2
                                    MinBlocks = 2
                                    MaxBlocks = 2
                                    StatusPollingInterval = TimeSpan.FromMilliseconds 200.0 } })
            use _ = dfk
            let app = App.func dfk (fun (x: int) -> x * 5)
            let results = [ for i in 1..10 -> app (Arg.value i) ] |> List.map (fun f -> await f.Task)
            Expect.equal results [ for i in 1..10 -> i * 5 ] "the executor runs tasks on the other block"
            waitUntil 60.0 "block 0 to fail" (fun () ->
                await (htex.BlocksAsync()) |> List.exists (fun b -> b.BlockId = "0" && b.Status.State = JobState.Failed))
            let b0 = await (htex.BlocksAsync()) |> List.find (fun b -> b.BlockId = "0")
            Expect.stringContains (defaultArg b0.Status.Message "") "0.0.1-other" "the block's failure names the manager's version"
            Expect.isNone htex.BadState "no bad state"
            Expect.equal (await (app (Arg.value 3)).Task) 15 "still running"
        }
    ]

let tests = testList "HTEx security" [ handshake; strangers ]
