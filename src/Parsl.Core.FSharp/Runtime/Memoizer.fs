namespace Parsl.Runtime

open System
open System.Collections.Generic
open System.IO
open System.Threading
open System.Threading.Channels
open System.Threading.Tasks
open MessagePack
open MessagePack.Resolvers
open Parsl
open Parsl.Core
open Parsl.Data

/// Finding and reading checkpoints (Parsl's `get_all_checkpoints` / `get_last_checkpoint`).
[<RequireQualifiedAccess>]
module Checkpoints =
    /// The checkpoint directory of a run directory.
    let directoryOf (runDir: string) = Path.Combine(runDir, "checkpoint")

    /// Every checkpoint directory under a base run directory (`runinfo/NNN/checkpoint`), oldest run first,
    /// ordered numerically (run 1000 comes after run 999).
    let all (baseRunDir: string) : string list =
        RunDir.existing baseRunDir
        |> Array.map (fun n -> Path.GetFullPath(directoryOf (Path.Combine(baseRunDir, sprintf "%03d" n))))
        |> Array.filter Directory.Exists
        |> List.ofArray

    /// The newest run's checkpoint directory, as a list of zero or one (Parsl's `get_last_checkpoint`).
    let last (baseRunDir: string) : string list =
        match all baseRunDir with
        | [] -> []
        | xs -> [ List.last xs ]

    /// The file behind a checkpoint path: the path itself, or `tasks.ckpt` inside a directory.
    let fileOf (path: string) =
        if Directory.Exists path then Path.Combine(path, Checkpoint.FileName) else path

/// Turns checkpointed values into bytes and back: MessagePack 2.x, contractless (private members allowed),
/// for the value's exact runtime type, whose name is stored beside the bytes.
[<RequireQualifiedAccess>]
module internal CheckpointValue =
    let private options () = TypelessContractlessStandardResolver.Options

    /// The type name and bytes of a value.
    let serialize (v: obj) : string * byte[] =
        if isNull v then "", [||]
        else
            let t = v.GetType()
            t.AssemblyQualifiedName, MessagePackSerializer.Serialize(t, v, options ())

    /// The value back; raises when its type cannot be found or its bytes do not fit it.
    let deserialize (typeName: string) (bytes: byte[]) : obj =
        if typeName = "" then null
        else
            match Type.GetType(typeName, false) with
            | null -> failwithf "the type %s cannot be found (is its assembly loaded?)" typeName
            | t -> MessagePackSerializer.Deserialize(t, ReadOnlyMemory bytes, options().WithSecurity MessagePackSecurity.UntrustedData)

/// What the memo table knows about a call about to launch.
type internal MemoDecision =
    /// Not memoized (or not cached): run it.
    | Miss
    /// A completed call with the same key returned this.
    | HitValue of obj
    /// A completed call with the same key failed with this (in this run only: exceptions are not checkpointed).
    | HitError of exn
    /// The arguments cannot be encoded: the task fails with this.
    | KeyFailed of exn

type private PendingRecord =
    { Key: MemoKey
      AppName: string
      Value: obj }

type private WriterMessage =
    | Add of PendingRecord
    | Flush of TaskCompletionSource<int>
    | Tick

/// The memo table (used only on the kernel's loop) and the checkpoint writer (its own loop). Parsl's
/// `BasicMemoizer`: `Check` is its `check_memo`, `Record` its `update_memo_*`, `CheckpointAsync` its
/// `checkpoint`, `CloseAsync` its `close`.
[<Sealed>]
type internal Memoizer(config: Config, runDir: string, log: Serilog.ILogger) =
    let table = Dictionary<MemoKey, Result<obj, exn>>()
    let pending = Dictionary<int, MemoKey * string>()
    let checkpointFile = Path.Combine(Checkpoints.directoryOf runDir, Checkpoint.FileName)
    let channel = Channel.CreateUnbounded<WriterMessage>(UnboundedChannelOptions(SingleReader = true))
    let stopTimer = new CancellationTokenSource()
    let mutable written = 0
    let mutable loops: Task list = []

    let load () =
        let paths =
            match config.CheckpointFiles with
            | Some files -> files |> List.map (fun p -> p, true)
            | None when config.CheckpointMode.IsSome ->
                Checkpoints.all config.RunDir
                |> List.filter (fun d -> Path.GetFullPath d <> Path.GetFullPath(Checkpoints.directoryOf runDir))
                |> List.map (fun p -> p, false)
            | None -> []
        for path, explicitlyGiven in paths do
            let file = Checkpoints.fileOf path
            if not (System.IO.File.Exists file) then
                if explicitlyGiven then
                    raise (BadCheckpoint(path, sprintf "no checkpoint file (%s); list runinfo/NNN/checkpoint directories or their %s files" file Checkpoint.FileName, null))
            else
                let bytes =
                    try
                        System.IO.File.ReadAllBytes file
                    with e ->
                        raise (BadCheckpoint(file, "cannot be read: " + e.Message, e))
                match Checkpoint.decode bytes with
                | Result.Error reason -> raise (BadCheckpoint(file, reason, null))
                | Ok contents ->
                    if contents.TornBytes > 0 then
                        log.Warning("Checkpoint {File}: skipped {Bytes} bytes of an incomplete last record", file, contents.TornBytes)
                    for r in contents.Records do
                        let v =
                            try
                                CheckpointValue.deserialize r.TypeName r.Value
                            with e ->
                                raise (BadCheckpoint(file, sprintf "the result of app '%s' cannot be rebuilt: %s" r.AppName e.Message, e))
                        table[r.Key] <- Ok v
                    log.Information("Loaded {Count} results from checkpoint {File}", contents.Records.Length, file)

    let write (batch: List<PendingRecord>) =
        if batch.Count > 0 then
            let records =
                [| for r in batch do
                       match (try Ok(CheckpointValue.serialize r.Value) with e -> Result.Error e) with
                       | Ok(typeName, bytes) ->
                           Checkpoint.encodeRecord { Key = r.Key; AppName = r.AppName; TypeName = typeName; Value = bytes }
                       | Result.Error e ->
                           log.Warning("The result of app {App} cannot be checkpointed: {Error}", r.AppName, e.Message) |]
            batch.Clear()
            if records.Length > 0 then
                try
                    Directory.CreateDirectory(Path.GetDirectoryName checkpointFile) |> ignore
                    use fs = new FileStream(checkpointFile, FileMode.Append, FileAccess.Write, FileShare.Read)
                    if fs.Length = 0L then fs.Write(Checkpoint.header ())
                    for r in records do
                        fs.Write r
                    fs.Flush true
                    written <- written + records.Length
                with e ->
                    log.Error(e, "Writing checkpoint {File} failed", checkpointFile)

    let writerLoop () =
        task {
            let buffer = List<PendingRecord>()
            let replies = List<TaskCompletionSource<int>>()
            let reader = channel.Reader
            let mutable go = true
            while go do
                let! more = reader.WaitToReadAsync()
                if not more then go <- false
                let mutable flush = not more || config.CheckpointMode = Some TaskExit
                let mutable m = Unchecked.defaultof<WriterMessage>
                while reader.TryRead(&m) do
                    match m with
                    | Add r -> buffer.Add r
                    | Flush t ->
                        flush <- true
                        replies.Add t
                    | Tick -> flush <- true
                if flush then
                    let before = written
                    write buffer
                    for t in replies do
                        t.TrySetResult(written - before) |> ignore
                    replies.Clear()
        }

    let timerLoop (period: TimeSpan) =
        task {
            use timer = new PeriodicTimer(period)
            try
                while! timer.WaitForNextTickAsync stopTimer.Token do
                    channel.Writer.TryWrite Tick |> ignore
            with :? OperationCanceledException -> ()
        }

    do load ()

    /// Starts the writer (and the periodic timer), when checkpoints are on.
    member _.Start() =
        match config.CheckpointMode with
        | None -> ()
        | Some mode ->
            let w = Task.Run(fun () -> writerLoop () :> Task)
            loops <-
                match mode, config.CheckpointPeriod with
                | Periodic, Some p -> [ w; Task.Run(fun () -> timerLoop p :> Task) ]
                | _ -> [ w ]

    /// Results loaded from checkpoints or recorded so far.
    member _.Count = table.Count
    /// Records written to this run's checkpoint file so far.
    member _.Written = Volatile.Read &written
    /// This run's checkpoint file.
    member _.CheckpointFile = checkpointFile

    /// Looks the call up before it launches (on the kernel's loop).
    member _.Check(id: TaskId, spec: MemoSpec option, args: obj[]) : MemoDecision =
        match spec with
        | Some spec when config.AppCache ->
            match Memo.key config.MemoHashers spec args with
            | Result.Error e -> KeyFailed e
            | Ok key ->
                match table.TryGetValue key with
                | true, Ok v -> HitValue v
                | true, Result.Error e -> HitError e
                | _ ->
                    pending[id.Value] <- (key, spec.AppName)
                    Miss
        | _ -> Miss

    /// Records a launched call's end (on the kernel's loop). `result` reads a join task's combined result.
    member _.Record(id: TaskId, final: TaskState, completion: Completion, result: unit -> obj) =
        match pending.TryGetValue id.Value with
        | true, (key, appName) ->
            pending.Remove id.Value |> ignore
            let value =
                match final, completion with
                | ExecDone, Value v -> Some(Ok v)
                | ExecDone, JoinResults -> (try Some(Ok(result ())) with _ -> None)
                | Failed, Error(:? OperationCanceledException)
                | Failed, Error(:? KernelShutdownError) -> None
                | Failed, Error e -> Some(Result.Error e)
                | _ -> None
            match value with
            | Some(Ok v as r) ->
                table[key] <- r
                if config.CheckpointMode.IsSome then
                    channel.Writer.TryWrite(Add { Key = key; AppName = appName; Value = v }) |> ignore
            | Some r -> table[key] <- r
            | None -> ()
        | _ -> ()

    /// Writes the results gathered since the last checkpoint; returns how many records were written.
    member _.CheckpointAsync() : Task<int> =
        if config.CheckpointMode.IsNone then Task.FromResult 0
        else
            let t = TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously)
            if channel.Writer.TryWrite(Flush t) then t.Task else Task.FromResult 0

    /// Writes what is left and stops the writer and the timer.
    member _.CloseAsync() : Task =
        task {
            stopTimer.Cancel()
            channel.Writer.TryComplete() |> ignore
            for l in loops do
                do! l
            stopTimer.Dispose()
        }
