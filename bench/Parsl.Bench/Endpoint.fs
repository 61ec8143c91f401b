/// Endpoint figures: no-op tasks/s and round-trip latency through a real RabbitMQ broker and a real endpoint daemon
/// (thread-pool engine), plain and TLS. The broker is a private one started by tests/harness/rabbitmq.sh (its own
/// directory) and stopped at the end; the daemon is killed at the end.
module Parsl.Bench.Endpoint

open System
open System.Diagnostics
open System.IO
open Parsl
open Parsl.Executors
open Parsl.Executors.Endpoint

let private harness () =
    let rec up (d: DirectoryInfo) =
        if isNull d then failwith "tests/harness/rabbitmq.sh not found above the benchmark"
        elif File.Exists(Path.Combine(d.FullName, "tests", "harness", "rabbitmq.sh")) then Path.Combine(d.FullName, "tests", "harness", "rabbitmq.sh")
        else up d.Parent
    up (DirectoryInfo AppContext.BaseDirectory)

let private sh (args: string list) =
    let psi = ProcessStartInfo("/bin/bash", harness () :: args)
    psi.Environment["PARSL_RABBITMQ_DIR"] <- Path.Combine(Path.GetTempPath(), "parsl-harness-bench", "rabbitmq")
    psi.RedirectStandardOutput <- true
    psi.RedirectStandardError <- true
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEnd()
    p.WaitForExit()
    if p.ExitCode <> 0 then failwithf "rabbitmq.sh %A failed: %s" args err
    out.Result.Trim()

let private field (line: string) (k: string) =
    line.Split(' ') |> Array.pick (fun w -> if w.StartsWith(k + "=") then Some(w.Substring(k.Length + 1)) else None)

let private broker (ready: string) (user: string) (tls: bool) : BrokerOptions =
    { Host = "127.0.0.1"
      Port = int (field ready (if tls then "tls_port" else "port"))
      VirtualHost = field ready "vhost"
      User = user
      Password = field ready (user + "_password")
      Tls = tls
      CaFile = (if tls then Some(field ready "ca") else None)
      ServerName = (if tls then Some "localhost" else None) }

let private measure (print: string -> unit) (ready: string) (tls: bool) =
    let name = "bench-" + Guid.NewGuid().ToString("N").Substring(0, 8)
    let token = Guid.NewGuid().ToString("N")
    let home = Measure.runDir ()
    Directory.CreateDirectory(Path.Combine(home, name)) |> ignore
    let config =
        { EndpointConfig.template name (broker ready "endpoint" tls) token with
            Engine = Map [ "type", "ThreadPool"; "maxThreads", "2" ]
            Template = Map.empty
            Prefetch = 256 }
    File.WriteAllText(Path.Combine(home, name, "config.json"), EndpointConfig.render config)
    let psi = ProcessStartInfo("dotnet", [ Path.Combine(AppContext.BaseDirectory, "Parsl.Endpoint.dll"); "--home"; home; "start"; name; "--stop-on-stdin-close" ])
    psi.RedirectStandardInput <- true
    psi.RedirectStandardOutput <- true
    use daemon = Process.Start psi
    try
        let line = daemon.StandardOutput.ReadLine()
        if isNull line || not (line.StartsWith "READY") then failwithf "the endpoint did not start: %s" line
        let ex =
            EndpointExecutor(
                { EndpointOptions.defaults () with
                    Endpoint = name
                    Broker = broker ready "client" tls
                    Token = token })
        use dfk = DataFlowKernel.Load(Measure.config [ ex ])
        let noop = App.func dfk (fun (x: int) -> x)
        ex.Connected.Wait()
        noop(Arg.value 0).Task.Wait()
        let kind = if tls then "TLS" else "plain"
        let n = 2000
        let secs = Measure.time (fun () -> [| for i in 1..n -> noop (Arg.value i) |] |> Array.iter (fun f -> f.Task.Wait()))
        Measure.figure print (sprintf "endpoint (%s) no-op tasks/s, %d tasks" kind n) (float n / secs) "tasks/s"
        let hops = 200
        let sw = Stopwatch.StartNew()
        let mutable f = noop (Arg.value 0)
        for _ in 2..hops do
            f <- noop (Arg.future f)
        f.Task.Wait()
        Measure.figure print (sprintf "endpoint (%s) round trip, chain of %d" kind hops) (sw.Elapsed.TotalMilliseconds * 1000.0 / float hops) "µs"
    finally
        if not daemon.HasExited then
            Parsl.Node.Runtime.Native.kill (daemon.Id, 15) |> ignore
            if not (daemon.WaitForExit 30000) then daemon.Kill true

/// Starts the broker, measures plain then TLS, stops the broker.
let run (print: string -> unit) =
    let ready = sh []
    try
        measure print ready false
        measure print ready true
    finally
        sh [ "stop" ] |> ignore
