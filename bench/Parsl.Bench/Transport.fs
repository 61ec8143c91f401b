/// The transport's own floor: a NetMQ ROUTER in this process and a DEALER in another process echoing each
/// message back, as the interchange and a manager do. An HTEx hop crosses this round trip once (plus the
/// manager↔worker pipe and the kernel), so no hop can be faster than it.
module Parsl.Bench.Transport

open System
open System.Diagnostics
open System.IO
open System.Text
open NetMQ
open NetMQ.Sockets
open Parsl.Bench.Measure

/// The echo side, run as `Parsl.Bench.dll netmq-echo PORT [SERVER-PUBLIC CLIENT-SECRET CLIENT-PUBLIC]`.
let echo (argv: string[]) =
    // As the manager does: socket completions inline on the socket engine's thread.
    Environment.SetEnvironmentVariable("DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS", "1")
    use dealer = new DealerSocket()
    if argv.Length >= 5 then
        dealer.Options.CurveServerKey <- NetMQCertificate.FromPublicKey(argv[2]).PublicKey
        dealer.Options.CurveCertificate <- NetMQCertificate(argv[3], argv[4])
    dealer.Connect(sprintf "tcp://127.0.0.1:%s" argv[1])
    dealer.SendFrame "hello"
    let mutable go = true
    while go do
        let frame = dealer.ReceiveFrameBytes()
        if frame.Length = 0 then go <- false else dealer.SendFrame frame
    0

let private roundTrip (curve: bool) (n: int) =
    use router = new RouterSocket()
    let server = NetMQCertificate()
    let client = NetMQCertificate()
    if curve then
        router.Options.CurveServer <- true
        router.Options.CurveCertificate <- server
    let port = router.BindRandomPort "tcp://127.0.0.1"
    let self = Process.GetCurrentProcess().MainModule.FileName
    let psi = ProcessStartInfo(self)
    if Path.GetFileNameWithoutExtension self = "dotnet" then psi.ArgumentList.Add(Reflection.Assembly.GetEntryAssembly().Location)
    for a in [ "netmq-echo"; string port ] do psi.ArgumentList.Add a
    if curve then
        for a in [ server.PublicKeyZ85; client.SecretKeyZ85; client.PublicKeyZ85 ] do psi.ArgumentList.Add a
    use child = Process.Start psi
    let hello = router.ReceiveMultipartMessage()
    let identity = hello[0].ToByteArray()
    let payload = Array.create 64 1uy
    let once () =
        let m = NetMQMessage()
        m.Append identity
        m.Append payload
        router.SendMultipartMessage m
        router.ReceiveMultipartMessage() |> ignore
    for _ in 1..2000 do once ()
    let secs = time (fun () -> for _ in 1..n do once ())
    let m = NetMQMessage()
    m.Append identity
    m.Append(Array.empty<byte>)
    router.SendMultipartMessage m
    child.WaitForExit()
    secs / float n * 1e6

/// Prints the round trip with and without CURVE.
let run (print: string -> unit) =
    figure print "machine: NetMQ round trip to another process (plain)" (roundTrip false 5000) "us"
    figure print "machine: NetMQ round trip to another process (CURVE)" (roundTrip true 5000) "us"
