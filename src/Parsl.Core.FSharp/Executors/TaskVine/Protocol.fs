namespace Parsl.Executors.TaskVine

open System
open System.Globalization
open System.Text
open Parsl

/// What a `vine_worker` says, one line at a time (protocol 13, CCTools 7.17.1). Lines with a payload are followed
/// by exactly that many raw bytes.
type VineLine =
    /// `taskvine <protocol> <host> <os> <arch> <version>`: the first line after authentication.
    | Hello of protocol: int * host: string * os: string * arch: string * version: string
    /// `info <key> <value>`.
    | Info of key: string * value: string
    /// `transfer-port <p>` or `transfer-hostport <host> <p>`: the worker's peer-transfer server.
    | TransferPort of host: string option * port: int
    /// `resources`: a block of `<name> <total>` lines follows, ended by `end`.
    | ResourcesBegin
    /// `cores|memory|disk|gpus|workers <total>` inside a resources block (`tag <n>` too).
    | Resource of name: string * total: int64
    /// `alive`: the answer to `check`, and the worker's own keepalive.
    | Alive
    /// `end`: ends a resources block or a directory in a reply to `get`.
    | End
    /// `cache-update <name> <type> <level> <size> <mtime> <transfer_usec> <start_usec> <transfer_id>`: a file is in
    /// the worker's cache now (an input that arrived, or a task's output).
    | CacheUpdate of name: string * size: int64 * transferId: string
    /// `cache-invalid <name> <len> [<transfer_id>]` + len bytes of message: a file could not be cached.
    | CacheInvalid of name: string * length: int
    /// `complete <result> <exit> <stdout_len> <bytes_sent> <start_us> <end_us> <sandbox_MB> <task>` + bytes_sent
    /// bytes of stdout (sent inline when it is 1 to 1024 bytes).
    | Complete of result: int * exitCode: int * outputLength: int64 * sent: int64 * startUsec: int64 * endUsec: int64 * taskId: int64
    /// `file <name> <size> 0<mode> <mtime>` + size bytes: a reply to `get`.
    | FileData of name: string * size: int64
    /// `dir <name> 0<mode> <mtime>`: a directory in a reply to `get`; its entries follow, then `end`.
    | DirData of name: string
    /// `error <name> <errno>`: a `get` of something the worker does not have.
    | ErrorReply of name: string * errno: int
    /// `feature <name>`.
    | Feature of string
    /// Anything else (kept so that a newer worker's extra lines are ignored, not fatal).
    | Other of string

/// How long a file stays in a worker's cache (`VINE_CACHE_LEVEL_*`).
type CacheLevel =
    /// Removed when the task that used it ends.
    | TaskLevel = 0
    /// Kept until the workflow (this manager) ends: the runner, the user's assemblies, shared inputs.
    | Workflow = 1
    /// Kept until the worker ends.
    | Worker = 2

/// A file in a task's description: the worker's cache name and the name in the task's sandbox.
type VineFile =
    { CacheName: string
      SandboxName: string
      Level: CacheLevel }

/// One task as the worker is told it (`task` … `end`).
type VineTaskSpec =
    { TaskId: int64
      Command: string
      /// Served by the library of this name on the worker (`needs_library`): `Command` is then the function's name.
      NeedsLibrary: string option
      /// This task is the library of this name (`provides_library`), with this many function slots.
      ProvidesLibrary: (string * int) option
      Category: string
      Cores: float
      /// MB.
      Memory: int64
      /// MB.
      Disk: int64
      Gpus: int64
      /// Seconds; 0 = none.
      WallTime: int64
      Env: (string * string) list
      Inputs: VineFile list
      Outputs: VineFile list }

/// The TaskVine dialect, pure: parsing the worker's lines, rendering the manager's messages and the meaning of each
/// result code. Authentication, resource requests and placement are Work Queue's (`WqProtocol`, `LinkAuth`): the
/// two speak the same there.
[<RequireQualifiedAccess>]
module VineProtocol =
    /// The protocol this manager speaks (`VINE_PROTOCOL_VERSION`).
    let version = 13

    /// The longest line either side may send (`VINE_LINE_MAX`).
    let lineMax = 4096

    /// The library our serverless runner registers as on each worker.
    let libraryName = "parsl-dotnet-library"

    let private int64' (s: string) = Int64.Parse(s, CultureInfo.InvariantCulture)

    let private resourceNames = set [ "cores"; "memory"; "disk"; "gpus"; "workers"; "tag" ]

    /// Parses one line from a worker. Raises `FormatException` for a known keyword with bad fields.
    let parse (line: string) : VineLine =
        let w = line.Split(' ', StringSplitOptions.RemoveEmptyEntries)
        let n = w.Length
        let name (s: string) = Uri.UnescapeDataString s
        try
            match (if n = 0 then "" else w[0]) with
            | "taskvine" when n >= 6 -> Hello(int w[1], w[2], w[3], w[4], w[5])
            | "taskvine" when n >= 2 -> Hello(int w[1], (if n > 2 then w[2] else ""), "", "", "")
            | "info" when n >= 2 -> Info(w[1], (if n > 2 then String.Join(" ", w, 2, n - 2) else ""))
            | "transfer-port" when n >= 2 -> TransferPort(None, int w[1])
            | "transfer-hostport" when n >= 3 -> TransferPort(Some w[1], int w[2])
            | "resources" -> ResourcesBegin
            | r when n >= 2 && resourceNames.Contains r -> Resource(r, int64 (Double.Parse(w[1], CultureInfo.InvariantCulture)))
            | "alive" -> Alive
            | "end" -> End
            | "cache-update" when n >= 4 -> CacheUpdate(name w[1], (if n >= 5 then int64' w[4] else 0L), (if n >= 9 then w[8] else "X"))
            | "cache-invalid" when n >= 3 -> CacheInvalid(name w[1], int w[2])
            | "complete" when n >= 9 ->
                Complete(int w[1], int w[2], int64' w[3], int64' w[4], int64' w[5], int64' w[6], int64' w[8])
            | "file" when n >= 3 -> FileData(name w[1], int64' w[2])
            | "dir" when n >= 2 -> DirData(name w[1])
            | "error" when n >= 3 -> ErrorReply(name w[1], int w[2])
            | "feature" when n >= 2 -> Feature(name w[1])
            | _ -> Other line
        with :? OverflowException | :? FormatException ->
            raise (FormatException(sprintf "malformed worker line '%s'" (if line.Length > 80 then line.Substring(0, 80) + "…" else line)))

    /// The number of raw bytes that follow this line.
    let payloadLength (l: VineLine) =
        match l with
        | Complete(_, _, _, sent, _, _, _) -> sent
        | FileData(_, size) -> size
        | CacheInvalid(_, len) -> int64 len
        | _ -> 0L

    /// Names go on the wire URL-encoded, so spaces cannot split a line.
    let encodeName (s: string) = Uri.EscapeDataString s

    /// The task's description, `task <id>` to `end`, as the bytes to send.
    let renderTask (t: VineTaskSpec) : byte[] =
        let sb = StringBuilder()
        let line (s: string) = sb.Append(s).Append('\n') |> ignore
        line (sprintf "task %d" t.TaskId)
        line (sprintf "cmd %d" (Encoding.UTF8.GetByteCount t.Command))
        // The command's bytes follow with no terminator: the next line starts right after them.
        sb.Append(t.Command) |> ignore
        match t.NeedsLibrary with
        | Some l -> line ("needs_library " + encodeName l)
        | None -> ()
        match t.ProvidesLibrary with
        | Some(l, slots) ->
            line ("provides_library " + encodeName l)
            line (sprintf "function_slots %d" slots)
            // 1 = direct: the library runs each call itself (no fork per call, which a .NET process cannot do).
            line "func_exec_mode 1"
        | None -> ()
        Parsl.Executors.WorkQueue.WqProtocol.describe line t.Category t.Cores t.Gpus t.Memory t.Disk t.WallTime t.Env
        for f in t.Inputs do
            line (sprintf "infile %s %s 0" (encodeName f.CacheName) (encodeName f.SandboxName))
        for f in t.Outputs do
            line (sprintf "outfile %s %s 0" (encodeName f.CacheName) (encodeName f.SandboxName))
        line "end"
        Encoding.UTF8.GetBytes(sb.ToString())

    /// The header of a file sent into the worker's cache (`put` then `file`); the file's bytes follow.
    let putHeader (cacheName: string) (level: CacheLevel) (size: int64) (mode: int) =
        let n = encodeName cacheName
        sprintf "put %s %d %d\nfile %s %d 0%s 0\n" n (int level) size n size (Convert.ToString(mode, 8))

    /// What a result code means, in Parsl's words (`_explain_taskvine_result`).
    // Codes up to 56 mean what they mean in Work Queue, in the same words; from 64 on TaskVine's differ.
    let explain (code: int) =
        match code with
        | c when c <= 56 -> Parsl.Executors.WorkQueue.WqProtocol.explain c
        | 64 -> "task failed because the monitor did not produce a summary report"
        | 72 -> "task failed because an output could not be transferred to the manager"
        | 80 -> "task failed because no worker could satisfy the fixed location input file requirements"
        | 88 -> "task was cancelled"
        | 96 -> "the library serving the task ended"
        | 104 -> "task used more disk than its sandbox allows"
        | 112 -> "the task needs a library the worker does not have"
        | c -> sprintf "unknown result code %d" c

    /// Every code the worker may send other than success, with the type of error it becomes.
    let codes = [ 1; 2; 4; 8; 16; 24; 32; 40; 48; 56; 64; 72; 80; 88; 96; 104; 112 ]

    /// The typed error for a result code other than success. The low bits (1 input, 2 output, 4 stdout missing) may
    /// be or-ed with a cause in the high bits; the cause wins.
    let failure (code: int) (exitCode: int) (detail: string) : exn =
        let reason = explain (if code &&& ~~~7 <> 0 then code &&& ~~~7 else code) + (if String.IsNullOrEmpty detail then "" else ": " + detail)
        match code &&& ~~~7 with
        | 8 -> TaskVineSignal(sprintf "%s (exit status %d)" reason exitCode) :> exn
        | 16 | 104 -> TaskVineResourceExhaustion(code &&& ~~~7, reason)
        | 24 | 56 -> TaskVineMaxRunTime(code &&& ~~~7, reason)
        | 32 -> TaskVineUnknownResult(reason)
        | 40 | 48 -> TaskVineForsaken(code &&& ~~~7, reason)
        | 64 -> TaskVineMonitorError(reason)
        | 72 -> TaskVineOutputTransferError(reason)
        | 80 -> TaskVineFixedLocationMissing(reason)
        | 88 -> TaskVineCancelled(reason)
        | 96 | 112 -> TaskVineLibraryFailure(code &&& ~~~7, reason)
        | 0 when code &&& 1 <> 0 -> TaskVineInputMissing(reason)
        | 0 when code &&& 2 <> 0 -> TaskVineOutputMissing(reason)
        | 0 when code &&& 4 <> 0 -> TaskVineStdoutMissing(reason)
        | _ -> TaskVineTaskFailure(code, reason)
