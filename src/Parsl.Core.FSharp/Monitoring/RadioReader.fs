namespace Parsl.Monitoring

open System
open System.Globalization
open System.IO
open Parsl.Node.Monitoring

/// The client's side of the filesystem radio: reads the files workers wrote, oldest first, and deletes them.
[<RequireQualifiedAccess>]
module RadioReader =
    let private inv = CultureInfo.InvariantCulture

    let private ofKey (k: int64) = int (k >>> 32), int (k &&& 0xFFFFFFFFL)

    /// The record a line stands for; None for a line that is not one (a torn or foreign file is skipped).
    let parse (line: string) : MonitoringRecord option =
        let f = line.Split '\t'
        let num (s: string) = Double.Parse(s, inv)
        try
            match f with
            | [| "R"; key; host; block; ticks |] ->
                let task, tryId = ofKey (int64 key)
                Some(TryRunning(task, tryId, host, (if block = "" then null else block), DateTime(int64 ticks, DateTimeKind.Utc)))
            | [| "E"; key; ticks |] ->
                let task, tryId = ofKey (int64 key)
                Some(TryRunningEnded(task, tryId, DateTime(int64 ticks, DateTimeKind.Utc)))
            | _ when f.Length = 16 && f[0] = "S" ->
                let task, tryId = ofKey (int64 f[1])
                Some(
                    Resources
                        [ { Task = task; Try = tryId; TimestampUtc = DateTime(int64 f[2], DateTimeKind.Utc); Pid = int f[3]
                            MemoryPercent = num f[4]; ChildrenCount = int f[5]; TimeUser = num f[6]; TimeSystem = num f[7]
                            MemoryVirtual = num f[8]; MemoryResident = num f[9]; DiskRead = num f[10]; DiskWrite = num f[11]
                            Status = f[12]; CpuNum = num f[13]; CtxSwitchesVoluntary = num f[14]; CtxSwitchesInvoluntary = num f[15] } ]
                )
            | _ -> None
        with _ ->
            None

    /// Creates the radio's directories (private to the user).
    let create (dir: string) =
        for d in [ dir; Path.Combine(dir, "tmp"); Path.Combine(dir, "new") ] do
            Directory.CreateDirectory(d, UnixFileMode.UserRead ||| UnixFileMode.UserWrite ||| UnixFileMode.UserExecute) |> ignore

    /// The records in the files written so far.
    let drain (dir: string) : MonitoringRecord list =
        let folder = Path.Combine(dir, "new")
        if not (Directory.Exists folder) then []
        else
            [ for f in Directory.GetFiles folder |> Array.sort do
                  let text = try Some(File.ReadAllLines f) with _ -> None
                  match text with
                  | Some ls ->
                      (try File.Delete f with _ -> ())
                      yield! ls |> Seq.choose parse
                  | None -> () ]
