namespace Parsl.Node.Monitoring

open System
open System.Collections.Generic
open System.Globalization
open System.IO
open System.Threading

/// The lines a worker writes about its tries (pure; the client's `RadioReader.parse` reads them). One line per fact,
/// tab-separated:
///   R key host block ticks        the try's body started (`running`)
///   E key ticks                   it ended (`running_ended`)
///   S key ticks pid mem% children user system vms rss read write status cpu voluntary involuntary
[<RequireQualifiedAccess>]
module RadioLine =
    let private inv = CultureInfo.InvariantCulture
    let private g (x: float) = x.ToString("R", inv)

    /// A `running` line.
    let running (key: int64) (host: string) (block: string) (utc: DateTime) =
        sprintf "R\t%d\t%s\t%s\t%d" key host block utc.Ticks

    /// A `running_ended` line.
    let ended (key: int64) (utc: DateTime) = sprintf "E\t%d\t%d" key utc.Ticks

    /// A sample line.
    let sample (key: int64) (s: ResourceSample) =
        String.Join(
            "\t",
            [| "S"; string key; string s.TimestampUtc.Ticks; string s.Pid; g s.MemoryPercent; string s.ChildrenCount; g s.TimeUser
               g s.TimeSystem; g s.MemoryVirtual; g s.MemoryResident; g s.DiskRead; g s.DiskWrite; s.Status; g s.CpuNum
               g s.CtxSwitchesVoluntary; g s.CtxSwitchesInvoluntary |])

/// One process's counters from /proc.
type internal ProcSample =
    { UserTicks: float; SystemTicks: float; Vms: float; Rss: float; Read: float; Write: float; State: string; Cpu: float
      Voluntary: float; Involuntary: float }

/// Reads a process tree from /proc (Linux).
[<RequireQualifiedAccess>]
module internal ProcTree =
    let private ticksPerSecond = 100.0

    /// The process and its descendants (through `/proc/PID/task/TID/children`).
    let rec pids (pid: int) : int list =
        let children =
            try
                Directory.GetDirectories(sprintf "/proc/%d/task" pid)
                |> Seq.collect (fun t ->
                    try
                        File.ReadAllText(Path.Combine(t, "children")).Split(' ', StringSplitOptions.RemoveEmptyEntries) |> Array.map int
                    with _ ->
                        [||])
                |> List.ofSeq
            with _ ->
                []
        pid :: (children |> List.collect pids)

    let read (pid: int) : ProcSample option =
        try
            let stat = File.ReadAllText(sprintf "/proc/%d/stat" pid)
            let f = stat.Substring(stat.LastIndexOf ')' + 2).Split ' '
            // Fields from 3 on: state(3) ... utime(14) stime(15) ... vsize(23) rss(24 pages) ... processor(39).
            let field n = f[n - 3]
            let status = File.ReadAllLines(sprintf "/proc/%d/status" pid)
            let line (name: string) =
                status |> Array.tryFind (fun l -> l.StartsWith(name + ":")) |> Option.map (fun l -> float (l.Substring(name.Length + 1).Trim()))
                |> Option.defaultValue 0.0
            let io =
                try
                    File.ReadAllLines(sprintf "/proc/%d/io" pid)
                    |> Array.choose (fun l -> match l.Split(": ") with [| k; v |] -> Some(k, float v) | _ -> None)
                    |> dict
                with _ ->
                    dict []
            let get k = match io.TryGetValue k with | true, v -> v | _ -> 0.0
            Some
                { UserTicks = float (field 14); SystemTicks = float (field 15); Vms = float (field 23)
                  Rss = float (field 24) * float Environment.SystemPageSize; Read = get "read_bytes"; Write = get "write_bytes"
                  State = field 3; Cpu = float (field 39); Voluntary = line "voluntary_ctxt_switches"; Involuntary = line "nonvoluntary_ctxt_switches" }
        with _ ->
            None

    let memTotal =
        lazy
            (try
                File.ReadAllLines "/proc/meminfo"
                |> Array.find (fun l -> l.StartsWith "MemTotal:")
                |> fun l -> float (l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024.0
             with _ ->
                 0.0)

    let stateName (s: string) =
        match s with
        | "R" -> "running" | "S" -> "sleeping" | "D" -> "disk-sleep" | "Z" -> "zombie" | "T" -> "stopped"
        | "t" -> "tracing-stop" | "I" -> "idle" | "X" -> "dead" | s -> s

    /// The tree's totals: CPU and I/O since `baseline` (the tree's totals when the try began).
    let sample (root: int) (baseline: ProcSample option) (utc: DateTime) : ResourceSample * ProcSample =
        let all = pids root |> List.choose read
        let sum f = all |> List.sumBy f
        let total =
            { UserTicks = sum (fun p -> p.UserTicks); SystemTicks = sum (fun p -> p.SystemTicks); Vms = sum (fun p -> p.Vms)
              Rss = sum (fun p -> p.Rss); Read = sum (fun p -> p.Read); Write = sum (fun p -> p.Write)
              State = (match all with p :: _ -> p.State | [] -> "X"); Cpu = (match all with p :: _ -> p.Cpu | [] -> 0.0)
              Voluntary = sum (fun p -> p.Voluntary); Involuntary = sum (fun p -> p.Involuntary) }
        let b = defaultArg baseline { total with UserTicks = 0.0; SystemTicks = 0.0; Read = 0.0; Write = 0.0; Voluntary = 0.0; Involuntary = 0.0 }
        { Task = 0; Try = 0; TimestampUtc = utc; Pid = root
          MemoryPercent = (if memTotal.Value > 0.0 then 100.0 * total.Rss / memTotal.Value else 0.0)
          ChildrenCount = max 0 (all.Length - 1)
          TimeUser = (total.UserTicks - b.UserTicks) / ticksPerSecond; TimeSystem = (total.SystemTicks - b.SystemTicks) / ticksPerSecond
          MemoryVirtual = total.Vms; MemoryResident = total.Rss; DiskRead = total.Read - b.Read; DiskWrite = total.Write - b.Write
          Status = stateName total.State; CpuNum = total.Cpu
          CtxSwitchesVoluntary = total.Voluntary - b.Voluntary; CtxSwitchesInvoluntary = total.Involuntary - b.Involuntary },
        total

/// Requests to a worker's radio.
type internal RadioRequest =
    | Begin of key: int64
    | End of key: int64 * written: ManualResetEventSlim

/// Parsl's filesystem radio, on the worker: while a try runs, samples the worker's process tree every interval
/// (a first sample at the start, a last one at the end, as Parsl) and writes `running`, `running_ended` and the
/// samples as files in `<rundir>/monitor-fs-radio/new/` (written in `tmp/`, then renamed, so a reader never sees
/// half a file). The client's monitoring reads and deletes them. One thread; the worker only posts.
[<Sealed; AllowNullLiteral>]
type ResourceRadio internal (dir: string, interval: TimeSpan, block: string) =
    let requests = new Collections.Concurrent.BlockingCollection<RadioRequest>()
    let host = Environment.MachineName
    let pid = Environment.ProcessId
    let lines = List<string>()
    let mutable files = 0
    let write () =
        if lines.Count > 0 then
            try
                files <- files + 1
                let name = sprintf "%s-%d-%d-%d" host pid DateTime.UtcNow.Ticks files
                let tmp = Path.Combine(dir, "tmp", name)
                File.WriteAllLines(tmp, lines)
                File.Move(tmp, Path.Combine(dir, "new", name))
            with _ ->
                // The client may have gone (and its run directory with it): monitoring never fails a task.
                ()
            lines.Clear()
    let loop () =
        let mutable current: (int64 * ProcSample option) option = None
        let mutable nextSample = DateTime.MaxValue
        let mutable go = true
        while go do
            let wait =
                match current with
                | Some _ when interval > TimeSpan.Zero -> max TimeSpan.Zero (nextSample - DateTime.UtcNow)
                | _ -> Timeout.InfiniteTimeSpan
            let mutable r = Unchecked.defaultof<RadioRequest>
            let got = try requests.TryTake(&r, wait) with _ -> false
            if got then
                let now = DateTime.UtcNow
                match r with
                | Begin key ->
                    let s, total = ProcTree.sample pid None now
                    lines.Add(RadioLine.running key host block now)
                    lines.Add(RadioLine.sample key s)
                    current <- Some(key, Some total)
                    nextSample <- now + interval
                | End(key, written) ->
                    match current with
                    | Some(k, baseline) when k = key ->
                        let s, _ = ProcTree.sample pid baseline now
                        lines.Add(RadioLine.sample key s)
                    | _ -> ()
                    lines.Add(RadioLine.ended key now)
                    current <- None
                    // The try's lines are on disk before its result leaves the worker, so the client's last read
                    // of the radio (at shutdown) finds them.
                    write ()
                    written.Set()
            elif requests.IsCompleted then go <- false
            else
                match current with
                | Some(key, baseline) ->
                    let now = DateTime.UtcNow
                    let s, _ = ProcTree.sample pid baseline now
                    lines.Add(RadioLine.sample key s)
                    nextSample <- now + interval
                    write ()
                | None -> ()
        write ()
    let thread = Thread(loop, IsBackground = true, Name = "resource-radio")
    do thread.Start()

    /// The environment variables that turn the radio on in the workers a launch command starts.
    static member Variables(dir: string, interval: TimeSpan, block: string) =
        [ "PARSL_MONITORING_RADIO", dir
          "PARSL_MONITORING_INTERVAL", interval.TotalSeconds.ToString("R", CultureInfo.InvariantCulture)
          "PARSL_MONITORING_BLOCK", block ]

    /// The radio the launch command asked for, or None when monitoring is off.
    static member FromEnvironment() : ResourceRadio option =
        match Environment.GetEnvironmentVariable "PARSL_MONITORING_RADIO" with
        | null | "" -> None
        | dir when Directory.Exists(Path.Combine(dir, "new")) ->
            let interval =
                match Double.TryParse(Environment.GetEnvironmentVariable "PARSL_MONITORING_INTERVAL", NumberStyles.Float, CultureInfo.InvariantCulture) with
                | true, s when s >= 0.0 -> TimeSpan.FromSeconds s
                | _ -> TimeSpan.FromSeconds 30.0
            Some(new ResourceRadio(dir, interval, Environment.GetEnvironmentVariable "PARSL_MONITORING_BLOCK"))
        | _ -> None

    /// A try's body starts.
    member _.Begin(key: int64) = requests.Add(Begin key)
    /// A try's body ended.
    member _.End(key: int64) =
        // Not disposed: after a timed-out wait the radio thread may still set it.
        let written = new ManualResetEventSlim(false)
        requests.Add(End(key, written))
        // Bounded: a slow disk delays the result by at most this, and the lines still follow.
        written.Wait(TimeSpan.FromSeconds 2.0) |> ignore

    interface IDisposable with
        member _.Dispose() =
            requests.CompleteAdding()
            thread.Join()
            requests.Dispose()
