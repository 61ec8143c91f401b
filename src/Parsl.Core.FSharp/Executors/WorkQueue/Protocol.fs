namespace Parsl.Executors.WorkQueue

open System
open System.Collections.Generic
open System.Globalization
open System.Security.Cryptography
open System.Text
open Parsl

/// What a worker says, one line at a time (protocol 9 as observed, 11 from CCTools 7.17.1). Lines marked with a
/// payload are followed by exactly that many raw bytes.
type WorkerLine =
    /// `workqueue <protocol> <host> <os> <arch> <version>`: the first line after authentication.
    | Hello of protocol: int * host: string * os: string * arch: string * version: string
    /// `info <key> <value>`.
    | Info of key: string * value: string
    /// `resource <name> <total> <smallest> <largest>` (`resource tag <n>` has only a total).
    | Resource of name: string * total: int64
    /// `alive`: the answer to `check`, and the worker's own keepalive.
    | Alive
    /// `available_results`: a task finished; the manager asks with `send_results -1`.
    | AvailableResults
    /// `result <code> <exit> <stdout_len> <exec_usec> <task>` + stdout_len bytes of the task's output.
    | Result of code: int * exitCode: int * outputLength: int64 * execUsec: int64 * taskId: int64
    /// `file <name> <size>` + size bytes: a reply to `get`.
    | FileData of name: string * size: int64
    /// `dir <name> 0`: a directory in a reply to `get`; its files follow as `file <name>/<rel>`.
    | DirData of name: string
    /// `missing <name> <errno>`: a `get` of something the worker does not have.
    | Missing of name: string * errno: int
    /// `end`: ends a result batch or a reply to `get`.
    | End
    /// `cache-update <name> <size> <usec>` (protocol 11): a file reached the worker's cache.
    | CacheUpdate of name: string
    /// `cache-invalid <name> <len>` + len bytes of message (protocol 11): a file could not be cached.
    | CacheInvalid of name: string * length: int
    /// `feature <name>`.
    | Feature of string
    /// Anything else (kept so that a newer worker's extra lines are ignored, not fatal).
    | Other of string

/// A file in a task's description: the worker's cache name and the name in the task's sandbox.
type TaskFile =
    { CacheName: string
      SandboxName: string
      /// Kept in the worker's cache for later tasks (the runner, the user's assemblies).
      Cached: bool }

/// One task as the worker is told it (`task` … `end`).
type TaskSpec =
    { TaskId: int64
      Command: string
      /// Run by the worker's coprocess of this name (protocol 10+): `Command` is then the function's name.
      Coprocess: string option
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
      Inputs: TaskFile list
      Outputs: TaskFile list }

/// A worker's resources, as its `resource` lines report them.
type WorkerResources =
    { Cores: int64
      Memory: int64
      Disk: int64
      Gpus: int64 }

/// What a task asks for, from Parsl's resource specification (None = not given).
type ResourceRequest =
    { Cores: float option
      MemoryMB: int64 option
      DiskMB: int64 option
      Gpus: int64 option
      Priority: float
      RunningTimeMin: float option }

/// The Work Queue dialect, pure: parsing the worker's lines, rendering the manager's messages, the password
/// exchange, resource requests and the meaning of each result code. No IO here: the link layer and the manager do it.
[<RequireQualifiedAccess>]
module WqProtocol =
    /// The protocols this manager speaks: 9 (Debian's worker), 10 and 11 (CCTools 7.x).
    let supported = [ 9; 10; 11 ]

    /// The name our .NET runner service announces to its worker (`wq-serve`); the worker advertises it as a feature.
    let coprocessName = "parsl-dotnet"

    /// The feature a worker with our runner service advertises.
    let coprocessFeature = "wq_worker_coprocess:" + coprocessName

    /// The line that starts password authentication, both ways.
    let authIdent = "auth password sha1"

    /// The longest line either side may send (`WORK_QUEUE_LINE_MAX`): longer is a broken or hostile peer.
    let lineMax = 4096

    let private int64' (s: string) = Int64.Parse(s, CultureInfo.InvariantCulture)

    /// Parses one line from a worker. Raises `FormatException` for a known keyword with bad fields.
    let parse (line: string) : WorkerLine =
        let w = line.Split(' ', StringSplitOptions.RemoveEmptyEntries)
        let n = w.Length
        try
            match (if n = 0 then "" else w[0]) with
            | "workqueue" when n >= 6 -> Hello(int w[1], w[2], w[3], w[4], w[5])
            | "workqueue" when n >= 2 -> Hello(int w[1], (if n > 2 then w[2] else ""), "", "", "")
            | "info" when n >= 2 -> Info(w[1], (if n > 2 then String.Join(" ", w, 2, n - 2) else ""))
            | "resource" when n >= 3 -> Resource(w[1], int64' w[2])
            | "alive" -> Alive
            | "available_results" -> AvailableResults
            | "result" when n >= 6 -> Result(int w[1], int w[2], int64' w[3], int64' w[4], int64' w[5])
            | "file" when n >= 3 -> FileData(Uri.UnescapeDataString w[1], int64' w[2])
            | "dir" when n >= 2 -> DirData(Uri.UnescapeDataString w[1])
            | "missing" when n >= 3 -> Missing(Uri.UnescapeDataString w[1], int w[2])
            | "end" -> End
            | "cache-update" when n >= 2 -> CacheUpdate w[1]
            | "cache-invalid" when n >= 3 -> CacheInvalid(w[1], int w[2])
            | "feature" when n >= 2 -> Feature(Uri.UnescapeDataString w[1])
            | _ -> Other line
        with :? OverflowException | :? FormatException ->
            raise (FormatException(sprintf "malformed worker line '%s'" (if line.Length > 80 then line.Substring(0, 80) + "…" else line)))

    /// The number of raw bytes that follow this line.
    let payloadLength (l: WorkerLine) =
        match l with
        | Result(_, _, len, _, _) -> len
        | FileData(_, size) -> size
        | CacheInvalid(_, len) -> int64 len
        | _ -> 0L

    /// Names go on the wire URL-encoded (protocol 9's "filename encoding"), so spaces cannot split a line.
    let encodeName (s: string) = Uri.EscapeDataString s

    /// `SHA1(password + " " + nonce)` in lower-case hex: what each side proves it holds the password with.
    let authResponse (password: string) (nonce: string) =
        Convert.ToHexString(SHA1.HashData(Encoding.UTF8.GetBytes(password + " " + nonce))).ToLowerInvariant()

    let private f3 (x: float) = x.ToString("0.000", CultureInfo.InvariantCulture)

    /// The lines of a task description that Work Queue and TaskVine workers read alike: category, resources, wall
    /// time (when there is one) and environment, each written with `line`.
    let internal describe
        (line: string -> unit)
        (category: string)
        (cores: float)
        (gpus: int64)
        (memory: int64)
        (disk: int64)
        (wallTime: int64)
        (env: (string * string) list)
        =
        line ("category " + encodeName category)
        line ("cores " + f3 cores)
        line (sprintf "gpus %d" gpus)
        line (sprintf "memory %d" memory)
        line (sprintf "disk %d" disk)
        if wallTime > 0L then line (sprintf "wall_time %d" wallTime)
        for k, v in env do
            let kv = k + "=" + v
            line (sprintf "env %d" (Encoding.UTF8.GetByteCount kv))
            line kv

    /// The task's description, `task <id>` to `end`, as the bytes to send.
    let renderTask (t: TaskSpec) : byte[] =
        let sb = StringBuilder()
        let line (s: string) = sb.Append(s).Append('\n') |> ignore
        line (sprintf "task %d" t.TaskId)
        let cmd = Encoding.UTF8.GetByteCount t.Command
        line (sprintf "cmd %d" cmd)
        // The command's bytes follow with no terminator: the next line starts right after them.
        sb.Append(t.Command) |> ignore
        match t.Coprocess with
        | Some name ->
            line (sprintf "coprocess %d" (Encoding.UTF8.GetByteCount name))
            sb.Append(name) |> ignore
        | None -> ()
        describe line t.Category t.Cores t.Gpus t.Memory t.Disk t.WallTime t.Env
        for f in t.Inputs do
            line (sprintf "infile %s %s %d" (encodeName f.CacheName) (encodeName f.SandboxName) (if f.Cached then 1 else 0))
        for f in t.Outputs do
            line (sprintf "outfile %s %s %d" (encodeName f.CacheName) (encodeName f.SandboxName) (if f.Cached then 1 else 0))
        line "end"
        Encoding.UTF8.GetBytes(sb.ToString())

    /// The header of a file sent into the worker's cache (`put`); the file's bytes follow.
    let putHeader (cacheName: string) (size: int64) (mode: int) =
        sprintf "put %s %d %s\n" (encodeName cacheName) size (Convert.ToString(mode, 8))

    /// Parses the resources a worker announced into totals (lines it did not send count as 0).
    let resources (lines: (string * int64) list) : WorkerResources =
        let get k = lines |> List.tryFindBack (fun (n, _) -> n = k) |> Option.map snd |> Option.defaultValue 0L
        { Cores = get "cores"; Memory = get "memory"; Disk = get "disk"; Gpus = get "gpus" }

    /// The resource keys a Work Queue task accepts (Parsl's `WorkQueueExecutor`).
    let resourceKeys = [ "cores"; "memory"; "disk"; "gpus"; "priority"; "running_time_min" ]

    let private number (v: obj) : float option =
        match v with
        | :? int as i -> Some(float i)
        | :? int64 as i -> Some(float i)
        | :? float as f -> Some f
        | :? float32 as f -> Some(float f)
        | :? decimal as d -> Some(float d)
        | :? string as s ->
            match Double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture) with
            | true, f -> Some f
            | _ -> None
        | _ -> None

    /// Reads and checks a resource specification: unknown keys, non-numbers, negatives, and Parsl's all-or-none
    /// rule (cores, memory and disk together or none of them).
    let request (label: string) (spec: IReadOnlyDictionary<string, obj>) : Result<ResourceRequest, exn> =
        match Parsl.Executors.Resources.check label resourceKeys spec with
        | Some e -> Error e
        | None ->
            let values = spec |> Seq.map (fun kv -> kv.Key, number kv.Value) |> List.ofSeq
            match values |> List.tryFind (fun (_, v) -> match v with Some x -> x < 0.0 || Double.IsNaN x | None -> true) with
            | Some(k, _) ->
                Error(InvalidResourceSpecification([ k ], sprintf "Executor %s: resource '%s' must be a number of 0 or more (got %O)" label k spec[k]) :> exn)
            | None ->
                let get k = values |> List.tryPick (fun (n, v) -> if n = k then v else None)
                let core = [ "cores"; "memory"; "disk" ]
                let given = core |> List.filter (fun k -> spec.ContainsKey k)
                if not given.IsEmpty && given.Length < 3 then
                    let missing = core |> List.except given
                    Error(
                        InvalidResourceSpecification(
                            missing,
                            sprintf "Executor %s: cores, memory and disk must be given together or not at all (given: %s; missing: %s)"
                                label (String.Join(", ", given)) (String.Join(", ", missing)))
                        :> exn)
                else
                    Ok
                        { Cores = get "cores"
                          MemoryMB = get "memory" |> Option.map (fun m -> int64 (Math.Ceiling m))
                          DiskMB = get "disk" |> Option.map (fun m -> int64 (Math.Ceiling m))
                          Gpus = get "gpus" |> Option.map (fun g -> int64 (Math.Ceiling g))
                          Priority = get "priority" |> Option.defaultValue 0.0
                          RunningTimeMin = get "running_time_min" }

    /// What a task takes of a worker: what it asked for, else the whole worker (Work Queue's rule for a task that
    /// declares nothing). GPUs default to none.
    let allocation (r: ResourceRequest) (w: WorkerResources) : WorkerResources =
        match r.Cores with
        | Some c ->
            { Cores = int64 (Math.Ceiling c)
              Memory = defaultArg r.MemoryMB 0L
              Disk = defaultArg r.DiskMB 0L
              Gpus = defaultArg r.Gpus 0L }
        | None -> { w with Gpus = defaultArg r.Gpus 0L }

    /// Whether a worker with these totals could ever run the task.
    let fitsEver (need: WorkerResources) (total: WorkerResources) =
        need.Cores <= total.Cores && need.Memory <= total.Memory && need.Disk <= total.Disk && need.Gpus <= total.Gpus

    /// Whether it fits in what is free now.
    let fitsNow (need: WorkerResources) (total: WorkerResources) (used: WorkerResources) =
        need.Cores + used.Cores <= total.Cores
        && need.Memory + used.Memory <= total.Memory
        && need.Disk + used.Disk <= total.Disk
        && need.Gpus + used.Gpus <= total.Gpus

    /// Adds (sign 1) or removes (sign -1) an allocation.
    let add (sign: int64) (a: WorkerResources) (b: WorkerResources) =
        { Cores = a.Cores + sign * b.Cores
          Memory = a.Memory + sign * b.Memory
          Disk = a.Disk + sign * b.Disk
          Gpus = a.Gpus + sign * b.Gpus }

    /// What a result code means, in Parsl's words (`_explain_work_queue_result`).
    let explain (code: int) =
        match code with
        | 0 -> "success"
        | 1 -> "missing input file"
        | 2 -> "unable to generate output file"
        | 4 -> "stdout has been truncated"
        | 8 -> "task terminated with a signal"
        | 16 -> "task used more resources than requested"
        | 24 -> "task ran past the specified end time"
        | 32 -> "result could not be classified"
        | 40 -> "task failed, but not a task error"
        | 48 -> "unable to complete after specified number of retries"
        | 56 -> "task ran for more than the specified time"
        | 64 -> "task needed more space to complete task"
        | 72 -> "task failed because the monitor did not produce an output"
        | 80 -> "task failed because an output could not be transferred to the manager"
        | c -> sprintf "unknown result code %d" c

    /// The typed error for a result code other than success (codes can be or-ed: 1 and 2 with others).
    let failure (code: int) (exitCode: int) (detail: string) : exn =
        let reason = explain code + (if String.IsNullOrEmpty detail then "" else ": " + detail)
        match code with
        | 56 | 24 -> WorkQueueMaxRunTime(code, reason) :> exn
        | 16 | 64 -> WorkQueueResourceExhaustion(reason) :> exn
        | 8 -> WorkQueueSignal(sprintf "%s (exit status %d)" reason exitCode) :> exn
        | c when c &&& 1 <> 0 -> WorkQueueInputMissing(reason) :> exn
        | c when c &&& 2 <> 0 -> WorkQueueOutputMissing(reason) :> exn
        | c -> WorkQueueTaskFailure(c, reason)
