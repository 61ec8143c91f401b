/// Simulated HTEx managers: many manager connections from one process over the real protocol (CURVE, the HMAC proof of
/// the run's secret, registration, heartbeats), each advertising N worker slots and answering every task at once with
/// a valid result. What a real manager does between receiving a batch and returning it (workers, processes) is left
/// out, so the interchange and the client are all that is measured.
///
///   one thread (a NetMQ poller) ── M DEALER sockets ──tcp──▶ the interchange's ROUTER
///        ▲ commands (stdin lines, through a NetMQ queue)      │ Tasks[batch] ──▶ Results[same keys] at once
///        └─ a reader thread on stdin (its end: stop)          │ Heartbeat every period, spread over the period
///
/// NetMQ gives every socket its own mailbox with a signaler (a few file descriptors each), so one process holds a
/// bounded number of managers: the benchmark runs a few processes of ~1,000 each.
module Parsl.ManagerSim.Sim

open System
open System.Collections.Generic
open System.IO
open System.Runtime.InteropServices
open System.Text
open System.Threading
open NetMQ
open NetMQ.Sockets
open Parsl.Executors.HighThroughput
open Parsl.Node.HighThroughput

/// How a simulator process is set up.
type Settings =
    { /// The interchange, as `tcp://host:port` or `tcp://host:p1,p2,...` (its sockets' ports): each manager connects to
      /// the one its id picks, as a real manager does (`InterchangePorts.pick`).
      Address: string
      /// The run's certificate directory (`server.key`, `client.key`); None: plain TCP, no proof.
      CertDir: string option
      /// CURVE on every connection (needs `server.key`).
      Curve: bool
      /// Prove the run's secret before registering (needs `client.key`).
      Authenticate: bool
      Managers: int
      /// Worker slots each manager advertises.
      Slots: int
      Prefetch: int
      HeartbeatPeriod: TimeSpan
      /// Manager ids are this prefix and a number: unique across the simulator processes of one run.
      Prefix: string
      BlockId: string
      /// Take tasks and never answer them (a node whose workers hang).
      Hold: bool
      /// Where the status lines go (`registered N`, `stats ...`).
      Out: TextWriter }

/// The process's file limit.
module Limits =
    [<Struct; StructLayout(LayoutKind.Sequential)>]
    type private RLimit =
        val mutable Cur: uint64
        val mutable Max: uint64

    [<DllImport("libc", SetLastError = true)>]
    extern int private getrlimit(int resource, RLimit& limit)

    [<DllImport("libc", SetLastError = true)>]
    extern int private setrlimit(int resource, RLimit& limit)

    let private nofile = 7

    /// Raises RLIMIT_NOFILE's soft limit to the hard one (and, for root, both to `wanted` when that is higher);
    /// returns the soft limit now in force. Every socket the interchange or a simulator holds is a descriptor.
    let raiseFiles (wanted: uint64) : uint64 =
        let mutable l = RLimit()
        if not (OperatingSystem.IsLinux()) || getrlimit (nofile, &l) <> 0 then 0UL
        else
            if l.Max < wanted then
                let mutable up = RLimit(Cur = wanted, Max = wanted)
                // Only root may raise the hard limit; otherwise the soft one goes up to the hard one below.
                if setrlimit (nofile, &up) = 0 then l <- up
            if l.Cur < l.Max then
                let mutable up = RLimit(Cur = l.Max, Max = l.Max)
                if setrlimit (nofile, &up) = 0 then l <- up
            l.Cur

type private Simulated =
    { Index: int
      /// Which of the interchange's ports it connected to.
      Port: int
      Socket: DealerSocket
      Identity: byte[]
      mutable Registered: bool
      mutable Gone: bool }

/// A valid result for a try without running it: a one-argument function app's argument as its value (the bytes of
/// `serializeArgs` are an array of the arguments; a no-op `fun x -> x` returns exactly that element), else nil.
let echo (body: WireBody) : WireOutcome =
    match body with
    | Call(_, _, args, _) when not (isNull args) && args.Length > 1 && args[0] = 0x91uy -> Value(args[1..])
    | Call _ -> Value [| 0xC0uy |]
    // A shell app's result is its exit code: 0.
    | Command _ -> Value [| 0x00uy |]

/// Managers per poller thread: NetMQ's poller checks every socket it holds on each wake, so one poller's cost per
/// event grows with its sockets (measured: 1,000 managers on one poller took 61 s to register, 500 took 7 s).
let managersPerPoller = 100

/// Runs the managers until every one was told to shut down (or drained), or `commands` says `stop` or ends.
/// Commands (one a line): `stats` prints `stats tasks=T answered=A duplicates=D heartbeats=H live=L ports=P:T,...`
/// (the tries received through each of the interchange's ports); `stop`.
let run (s: Settings) (commands: TextReader) : int =
    Limits.raiseFiles 1_048_576UL |> ignore
    // NetMQ refuses a context's 1,025th socket by default.
    NetMQConfig.MaxSockets <- max NetMQConfig.MaxSockets (s.Managers + 64)
    let say (line: string) =
        lock s.Out (fun () ->
            s.Out.WriteLine line
            s.Out.Flush())
    let readKey name =
        s.CertDir |> Option.map (fun d -> File.ReadAllLines(Path.Combine(d, name)))
    let clientKey = if s.Authenticate || s.Curve then readKey "client.key" else None
    let serverKey = if s.Curve then readKey "server.key" |> Option.map (fun l -> l[0].Trim()) else None
    let hmac = if s.Authenticate then clientKey |> Option.map (fun k -> Handshake.key (k[1].Trim())) else None
    let clientCert = clientKey |> Option.map (fun k -> NetMQCertificate(k[1].Trim(), k[0].Trim()))
    let registration (i: int) =
        Protocol.encodeToInterchange (
            Register
                { ProtocolVersion = Protocol.Version
                  ParslVersion = Protocol.parslVersion ()
                  RuntimeVersion = Protocol.runtimeVersion ()
                  ManagerId = s.Prefix + string i
                  BlockId = s.BlockId
                  Hostname = "sim-" + s.Prefix + string i
                  WorkerCount = s.Slots
                  PrefetchCapacity = s.Prefetch
                  Pid = Environment.ProcessId })
    let heartbeat = Protocol.encodeToInterchange Heartbeat
    let host, ports =
        match InterchangePorts.parse s.Address with
        | Ok(h, ps) -> h, Array.ofList ps
        | Error e -> failwith e
    let byPort = Array.zeroCreate<int64> ports.Length
    // Counters shared by the poller threads.
    let mutable registered = 0
    let mutable live = s.Managers
    let mutable tasks = 0L
    let mutable answered = 0L
    let mutable duplicates = 0L
    let mutable heartbeats = 0L
    let stats (what: string) =
        let perPort = String.Join(",", ports |> Array.mapi (fun i p -> sprintf "%d:%d" p (Volatile.Read &byPort[i])))
        say (sprintf "%s tasks=%d answered=%d duplicates=%d heartbeats=%d live=%d ports=%s" what (Volatile.Read &tasks) (Volatile.Read &answered)
                 (Volatile.Read &duplicates) (Volatile.Read &heartbeats) (Volatile.Read &live) perPort)
    let groups = (s.Managers + managersPerPoller - 1) / managersPerPoller
    let pollers = Array.init groups (fun _ -> new NetMQPoller())
    /// One poller thread's managers, from `first`, and everything they touch.
    let group (g: int) () =
        let poller = pollers[g]
        let first = g * managersPerPoller
        let count = min managersPerPoller (s.Managers - first)
        let mutable groupLive = count
        // Every key this thread's managers were given, to tell a try sent twice (the interchange sends each once).
        let seen = HashSet<int64>()
        let managers = Array.zeroCreate<Simulated> count
        let gone (m: Simulated) =
            if not m.Gone then
                m.Gone <- true
                Interlocked.Decrement &live |> ignore
                groupLive <- groupLive - 1
                if groupLive = 0 then poller.StopAsync()
        let onFrame (m: Simulated) (frame: byte[]) =
            match (try Some(Protocol.decodeToManager frame) with _ -> None) with
            | None -> ()
            | Some(Challenge nonce) ->
                match hmac with
                | Some key when not (isNull nonce) ->
                    m.Socket.TrySendFrame(Handshake.proof key nonce m.Identity) |> ignore
                    m.Socket.TrySendFrame(registration m.Index) |> ignore
                | _ -> ()
            | Some Accepted ->
                if not m.Registered then
                    m.Registered <- true
                    if Interlocked.Increment &registered = s.Managers then say (sprintf "registered %d" s.Managers)
            | Some(Refused reason) ->
                say ("refused " + reason)
                gone m
            | Some HeartbeatReply -> Interlocked.Increment &heartbeats |> ignore
            | Some(Tasks ts) ->
                let results = List<WireResult>(ts.Length)
                for t in ts do
                    if not (seen.Add t.Key) then Interlocked.Increment &duplicates |> ignore
                    if not s.Hold then results.Add { Key = t.Key; Outcome = echo t.Body }
                Interlocked.Add(&tasks, int64 ts.Length) |> ignore
                Interlocked.Add(&byPort[m.Port], int64 ts.Length) |> ignore
                if results.Count > 0 then
                    Interlocked.Add(&answered, int64 results.Count) |> ignore
                    m.Socket.TrySendFrame(Protocol.encodeToInterchange (Results(List.ofSeq results))) |> ignore
            | Some(Assembly _) | Some(CancelTry _) -> ()
            | Some Drained
            | Some Shutdown -> gone m
        for j in 0 .. count - 1 do
            let i = first + j
            let d = new DealerSocket()
            let identity = Encoding.UTF8.GetBytes(s.Prefix + string i)
            d.Options.Identity <- identity
            d.Options.Linger <- TimeSpan.Zero
            d.Options.SendHighWatermark <- 0
            d.Options.ReceiveHighWatermark <- 0
            match serverKey, clientCert with
            | Some server, Some cert ->
                d.Options.CurveServerKey <- NetMQCertificate.FromPublicKey(server).PublicKey
                d.Options.CurveCertificate <- cert
            | _ -> ()
            let port = InterchangePorts.choose (s.Prefix + string i) ports.Length
            let m = { Index = i; Port = port; Socket = d; Identity = identity; Registered = false; Gone = false }
            managers[j] <- m
            d.ReceiveReady.Add(fun _ ->
                let mutable frame: byte[] = null
                while not m.Gone && d.TryReceiveFrameBytes(&frame) do
                    onFrame m frame)
            poller.Add d
            d.Connect(InterchangePorts.format host [ ports[port] ])
            d.TrySendFrame(if hmac.IsSome then Handshake.hello () else registration i) |> ignore
        // Heartbeats spread over the period: each tick sends those of the next slice of managers.
        let slices = 20
        let tick = new NetMQTimer(TimeSpan.FromMilliseconds(max 5.0 (s.HeartbeatPeriod.TotalMilliseconds / float slices)))
        let mutable cursor = 0
        let perTick = (count + slices - 1) / slices
        tick.Elapsed.Add(fun _ ->
            for _ in 1..perTick do
                let m = managers[cursor]
                if m.Registered && not m.Gone then m.Socket.TrySendFrame heartbeat |> ignore
                cursor <- (cursor + 1) % count)
        poller.Add tick
        try
            poller.Run()
        finally
            for m in managers do
                m.Socket.Dispose()
    let finished = new ManualResetEventSlim(false)
    let threads = Array.init groups (fun g -> Thread(group g, IsBackground = true, Name = "sim-poller-" + string g))
    for t in threads do
        t.Start()
    // Reads the commands; its end (the parent closed our stdin, or died) stops the simulator. It blocks in a read that
    // nothing can interrupt, so it is a background thread that ends with the process.
    let reader =
        Thread(
            (fun () ->
                let mutable go = true
                while go do
                    match (try commands.ReadLine() with _ -> null) with
                    | "stats" -> stats "stats"
                    | _ ->
                        go <- false
                        for p in pollers do
                            try p.StopAsync() with _ -> ()
                        // Whatever state the pollers are in, the simulator does not outlive its parent for long.
                        if not (finished.Wait(TimeSpan.FromSeconds 30.0)) then exit 3),
            IsBackground = true,
            Name = "sim-commands")
    reader.Start()
    for t in threads do
        t.Join()
    finished.Set()
    stats "final"
    for p in pollers do
        p.Dispose()
    NetMQConfig.Cleanup(false)
    0

/// A simulator process started by a benchmark or a test, by its pid: its status lines are read by a thread of its
/// own (joined by `Dispose`), and `Dispose` closes its stdin (it stops), waits, and kills it if it has not.
[<Sealed>]
type SimProcess(args: string list) =
    let dll = typeof<Settings>.Assembly.Location
    let psi = Diagnostics.ProcessStartInfo("dotnet")
    do
        psi.ArgumentList.Add dll
        for a in args do
            psi.ArgumentList.Add a
        psi.UseShellExecute <- false
        psi.RedirectStandardInput <- true
        psi.RedirectStandardOutput <- true
        // No debugger or diagnostics pipes left in /tmp by a killed simulator.
        psi.Environment["DOTNET_EnableDiagnostics"] <- "0"
        psi.Environment["DOTNET_gcServer"] <- "0"
    let proc = Diagnostics.Process.Start psi
    let lines = List<string>()
    let changed = obj ()
    let reader =
        Thread(
            (fun () ->
                let mutable line = proc.StandardOutput.ReadLine()
                while not (isNull line) do
                    lock changed (fun () ->
                        lines.Add line
                        Monitor.PulseAll changed)
                    line <- proc.StandardOutput.ReadLine()
                lock changed (fun () -> Monitor.PulseAll changed)),
            IsBackground = true,
            Name = "sim-output")
    do reader.Start()

    /// The process id.
    member _.Pid = proc.Id

    /// Waits for the first line (after the first `skip`) starting with `prefix`; raises after `timeout`, saying so.
    member _.WaitFor(prefix: string, timeout: TimeSpan, ?skip: int) : string =
        let deadline = DateTime.UtcNow + timeout
        let skip = defaultArg skip 0
        lock changed (fun () ->
            let find () = lines |> Seq.skip (min skip lines.Count) |> Seq.tryFind (fun l -> l.StartsWith prefix)
            let mutable found = find ()
            while found.IsNone && DateTime.UtcNow < deadline && not proc.HasExited do
                Monitor.Wait(changed, TimeSpan.FromMilliseconds 200.0) |> ignore
                found <- find ()
            match found with
            | Some l -> l
            | None ->
                failwithf "simulator %d: no '%s' line within %.0f s (exited: %b; its lines: %s)" proc.Id prefix timeout.TotalSeconds
                    proc.HasExited (String.Join(" | ", lines)))

    /// Asks for its counters: (tasks received, answered, duplicates, heartbeats answered, live managers).
    member this.Stats(timeout: TimeSpan) =
        let before = lock changed (fun () -> lines.Count)
        proc.StandardInput.WriteLine "stats"
        proc.StandardInput.Flush()
        this.WaitFor("stats ", timeout, before) |> SimProcess.Parse

    /// Asks for the tries received through each port of the interchange: (port, tries).
    member this.ByPort(timeout: TimeSpan) : (int * int64) list =
        let before = lock changed (fun () -> lines.Count)
        proc.StandardInput.WriteLine "stats"
        proc.StandardInput.Flush()
        let line = this.WaitFor("stats ", timeout, before)
        let w = line.Split ' ' |> Array.find (fun w -> w.StartsWith "ports=")
        w.Substring("ports=".Length).Split(',', StringSplitOptions.RemoveEmptyEntries)
        |> Array.map (fun pt -> let a = pt.Split ':' in int a[0], int64 a[1])
        |> List.ofArray

    /// Parses a `stats`/`final` line.
    static member Parse(line: string) =
        let v (name: string) =
            line.Split ' ' |> Array.find (fun w -> w.StartsWith(name + "=")) |> fun w -> int64 (w.Substring(name.Length + 1))
        v "tasks", v "answered", v "duplicates", v "heartbeats", v "live"

    /// Kills it at once (SIGKILL): its connections close without a word, as a lost node's do.
    member _.Kill() =
        try proc.Kill true with _ -> ()
        proc.WaitForExit()

    /// Whether it has exited.
    member _.HasExited = proc.HasExited

    /// Waits until it exits by itself (every manager was told to shut down); true if it did within `timeout`.
    member _.WaitForExit(timeout: TimeSpan) = proc.WaitForExit timeout

    interface IDisposable with
        member _.Dispose() =
            (try proc.StandardInput.Close() with _ -> ())
            if not (proc.WaitForExit(TimeSpan.FromSeconds 20.0)) then
                try proc.Kill true with _ -> ()
                proc.WaitForExit()
            reader.Join()
            proc.Dispose()
