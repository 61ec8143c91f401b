namespace Parsl.Node.HighThroughput

open System
open System.Buffers
open MessagePack

/// A shell app's standard stream on the wire: the path and whether to truncate it first.
type WireStream = { Path: string; Truncate: bool }

/// What a worker runs for one try.
type WireBody =
    /// A function app: the function's id (its definition travels once per manager, then once per worker)
    /// and its arguments, serialized once on the client and forwarded as bytes.
    /// `walltimeMs` (-1: none): at the deadline the worker reports `AppTimeout` and ends itself, so the work
    /// really stops (a thread cannot be stopped; its process can), and the manager starts a new worker.
    | Call of funcId: int * definition: byte[] * args: byte[] * walltimeMs: int64
    /// A shell app: the command line was built on the client.
    | Command of command: string * stdout: WireStream option * stderr: WireStream option * walltimeMs: int64 * outputs: string list

/// One try as it travels from the interchange to a manager and on to a worker.
type WireTask =
    { /// The task id (high 32 bits) and try id (low 32 bits).
      Key: int64
      AppName: string
      Body: WireBody
      /// MPI: the task's resource specification as text (empty for most tasks, and then absent on the wire); the worker
      /// exports each as `PARSL_<KEY>` while the try runs, as Parsl does.
      Resources: (string * string) list }

/// How a try ended, on the wire.
type WireOutcome =
    /// The serialized result.
    | Value of byte[]
    /// The app raised: the exception's type, message and stack trace on the worker, and for Parsl's own
    /// errors the values to rebuild them with (a shell app's name and exit code, ...).
    | Raised of typeName: string * message: string * stackTrace: string * data: string list
    /// The worker could not deserialize the arguments or serialize the result.
    | Unserializable of message: string
    /// The worker process died running this try.
    | WorkerDied of workerId: int * hostname: string

/// One try's outcome.
type WireResult = { Key: int64; Outcome: WireOutcome }

/// What a manager tells the interchange at registration.
type Registration =
    { ProtocolVersion: int
      ParslVersion: string
      RuntimeVersion: string
      ManagerId: string
      BlockId: string
      Hostname: string
      WorkerCount: int
      PrefetchCapacity: int
      Pid: int }

/// Manager → interchange.
///
///   manager ──Hello──▶ interchange ──Challenge──▶ manager ──Proof──▶   (over TCP, first: see `Handshake`)
///   manager ──Register──▶ interchange ──Accepted | Refused──▶ manager
///   manager ──Heartbeat─▶ interchange ──HeartbeatReply──────▶ manager   (every heartbeat period)
///   interchange ──Tasks[batch ≤ free capacity + prefetch]──▶ manager ──Results[batch]──▶ interchange
///   manager ──NeedAssembly(hash)──▶ interchange ──Assembly(hash, bytes)──▶ manager   (once per node)
///   manager ──Drain──▶ interchange (no new tasks) … ──Drained──▶ manager (exits)
///   interchange ──Shutdown──▶ manager (the executor is stopping: stop workers, exit)
///   interchange ──CancelTry(key)──▶ manager (a cancelled try: dropped, or its worker killed and restarted)
type ToInterchange =
    | Register of Registration
    | Heartbeat
    | Results of WireResult list
    | NeedAssembly of hash: string
    | Drain

/// Interchange → manager.
type ToManager =
    | Accepted
    | Refused of reason: string
    | HeartbeatReply
    | Tasks of WireTask list
    | Assembly of hash: string * bytes: byte[]
    | Drained
    | Shutdown
    /// Stop this try: drop it if queued, kill its worker if running (the worker is restarted).
    | CancelTry of key: int64
    /// The interchange's answer to a TCP manager's hello: prove you hold the run's secret (see `Handshake`).
    | Challenge of nonce: byte[]

/// Manager → worker process (over the worker's stdin, length-prefixed).
type ToWorker =
    | Run of WireTask list

/// Worker process → manager (over the worker's stdout, length-prefixed).
type FromWorker =
    | Done of WireResult list
    /// A shell app's process group was started for this try: should the worker die, the manager kills the group
    /// (the command runs in a group of its own, so nothing else would stop it).
    | GroupStarted of key: int64 * pgid: int

/// The protocol's encoding: one MessagePack array per message, its first element a tag.
[<RequireQualifiedAccess>]
module Protocol =
    /// Bumped on every incompatible change; a manager with another version is refused.
    [<Literal>]
    let Version = 1

    /// The version of Parsl.NET both sides must share.
    let parslVersion () =
        let a = typeof<WireTask>.Assembly
        match a.GetCustomAttributes(typeof<Reflection.AssemblyInformationalVersionAttribute>, false) with
        | [| :? Reflection.AssemblyInformationalVersionAttribute as v |] ->
            // Drop the source-revision suffix so that builds of one version from two commits agree.
            match v.InformationalVersion.IndexOf '+' with
            | -1 -> v.InformationalVersion
            | i -> v.InformationalVersion.Substring(0, i)
        | _ -> string (a.GetName().Version)

    /// The .NET runtime's major.minor, compared at registration as Parsl compares Python's.
    let runtimeVersion () =
        let v = Environment.Version
        sprintf "%d.%d" v.Major v.Minor

    /// A command's stdout/stderr redirect on the wire (also the endpoint wire's: one encoding of it).
    let internal writeStrOpt (w: byref<MessagePackWriter>) (s: WireStream option) =
        match s with
        | None -> w.WriteNil()
        | Some s ->
            w.WriteArrayHeader 2
            w.Write s.Path
            w.Write s.Truncate

    let internal readStrOpt (r: byref<MessagePackReader>) =
        if r.TryReadNil() then None
        else
            r.ReadArrayHeader() |> ignore
            let p = r.ReadString()
            let t = r.ReadBoolean()
            Some { Path = p; Truncate = t }

    let private readBytes (r: byref<MessagePackReader>) =
        if r.TryReadNil() then null
        else
            let s = r.ReadBytes()
            if s.HasValue then s.Value.ToArray() else null

    let private writeBytes (w: byref<MessagePackWriter>) (b: byte[]) =
        if isNull b then w.WriteNil() else w.Write(ReadOnlySpan<byte>(b))

    // MPI: the resource values, as a map after the body's fields (only when there are some).
    let private writeResources (w: byref<MessagePackWriter>) (rs: (string * string) list) =
        w.WriteMapHeader rs.Length
        for k, v in rs do
            w.Write k
            w.Write v

    let private readResources (r: byref<MessagePackReader>) =
        let n = r.ReadMapHeader()
        let mutable acc = []
        for _ in 1..n do
            let k = r.ReadString()
            let v = r.ReadString()
            acc <- (k, v) :: acc
        List.rev acc

    /// Writes one task.
    let writeTask (w: byref<MessagePackWriter>) (t: WireTask) =
        match t.Body with
        | Call(id, def, args, wall) ->
            // The walltime only when there is one (or resources follow): the common task stays as it was on the wire.
            let more = not t.Resources.IsEmpty
            w.WriteArrayHeader(if more then 8 elif wall >= 0L then 7 else 6)
            w.Write t.Key
            w.Write t.AppName
            w.Write 0
            w.Write id
            writeBytes &w def
            writeBytes &w args
            if wall >= 0L || more then w.Write wall
            if more then writeResources &w t.Resources
        | Command(cmd, out, err, wall, outputs) ->
            w.WriteArrayHeader(if t.Resources.IsEmpty then 8 else 9)
            w.Write t.Key
            w.Write t.AppName
            w.Write 1
            w.Write cmd
            writeStrOpt &w out
            writeStrOpt &w err
            w.Write wall
            w.WriteArrayHeader outputs.Length
            for o in outputs do
                w.Write o
            if not t.Resources.IsEmpty then writeResources &w t.Resources

    /// Reads one task.
    let readTask (r: byref<MessagePackReader>) : WireTask =
        let fields = r.ReadArrayHeader()
        let key = r.ReadInt64()
        let app = r.ReadString()
        match r.ReadInt32() with
        | 0 ->
            let id = r.ReadInt32()
            let def = readBytes &r
            let args = readBytes &r
            let wall = if fields > 6 then r.ReadInt64() else -1L
            let resources = if fields > 7 then readResources &r else []
            { Key = key; AppName = app; Body = Call(id, def, args, wall); Resources = resources }
        | _ ->
            let cmd = r.ReadString()
            let out = readStrOpt &r
            let err = readStrOpt &r
            let wall = r.ReadInt64()
            let n = r.ReadArrayHeader()
            let mutable outputs = []
            for _ in 1..n do
                outputs <- r.ReadString() :: outputs
            let outputs = List.rev outputs
            let resources = if fields > 8 then readResources &r else []
            { Key = key; AppName = app; Body = Command(cmd, out, err, wall, outputs); Resources = resources }

    /// Writes one result.
    let writeResult (w: byref<MessagePackWriter>) (x: WireResult) =
        match x.Outcome with
        | Value b ->
            w.WriteArrayHeader 3
            w.Write x.Key
            w.Write 0
            writeBytes &w b
        | Raised(t, m, s, data) ->
            w.WriteArrayHeader 6
            w.Write x.Key
            w.Write 1
            w.Write t
            w.Write m
            w.Write s
            w.WriteArrayHeader data.Length
            for d in data do
                w.Write d
        | Unserializable m ->
            w.WriteArrayHeader 3
            w.Write x.Key
            w.Write 2
            w.Write m
        | WorkerDied(id, host) ->
            w.WriteArrayHeader 4
            w.Write x.Key
            w.Write 3
            w.Write id
            w.Write host

    /// Reads one result.
    let readResult (r: byref<MessagePackReader>) : WireResult =
        r.ReadArrayHeader() |> ignore
        let key = r.ReadInt64()
        let outcome =
            match r.ReadInt32() with
            | 0 -> Value(readBytes &r)
            | 1 ->
                let t = r.ReadString()
                let m = r.ReadString()
                let s = r.ReadString()
                let n = r.ReadArrayHeader()
                let mutable data = []
                for _ in 1..n do
                    data <- r.ReadString() :: data
                Raised(t, m, s, List.rev data)
            | 2 -> Unserializable(r.ReadString())
            | _ ->
                let id = r.ReadInt32()
                let host = r.ReadString()
                WorkerDied(id, host)
        { Key = key; Outcome = outcome }

    let private finish (buffer: ArrayBufferWriter<byte>) = buffer.WrittenSpan.ToArray()

    /// Encodes a manager's message.
    let encodeToInterchange (m: ToInterchange) : byte[] =
        let buffer = ArrayBufferWriter<byte>(256)
        let mutable w = MessagePackWriter(buffer)
        match m with
        | Register g ->
            w.WriteArrayHeader 10
            w.Write 0
            w.Write g.ProtocolVersion
            w.Write g.ParslVersion
            w.Write g.RuntimeVersion
            w.Write g.ManagerId
            w.Write g.BlockId
            w.Write g.Hostname
            w.Write g.WorkerCount
            w.Write g.PrefetchCapacity
            w.Write g.Pid
        | Heartbeat ->
            w.WriteArrayHeader 1
            w.Write 1
        | Results rs ->
            w.WriteArrayHeader 2
            w.Write 2
            w.WriteArrayHeader rs.Length
            for x in rs do
                writeResult &w x
        | NeedAssembly h ->
            w.WriteArrayHeader 2
            w.Write 3
            w.Write h
        | Drain ->
            w.WriteArrayHeader 1
            w.Write 4
        w.Flush()
        finish buffer

    /// Decodes a manager's message; raises on malformed input (the interchange logs and ignores it).
    let decodeToInterchange (bytes: byte[]) : ToInterchange =
        let mutable r = MessagePackReader(ReadOnlyMemory<byte>(bytes))
        let n = r.ReadArrayHeader()
        match r.ReadInt32() with
        | 0 when n = 10 ->
            let pv = r.ReadInt32()
            let parsl = r.ReadString()
            let rt = r.ReadString()
            let mid = r.ReadString()
            let bid = r.ReadString()
            let host = r.ReadString()
            let wc = r.ReadInt32()
            let pf = r.ReadInt32()
            let pid = r.ReadInt32()
            Register
                { ProtocolVersion = pv
                  ParslVersion = parsl
                  RuntimeVersion = rt
                  ManagerId = mid
                  BlockId = bid
                  Hostname = host
                  WorkerCount = wc
                  PrefetchCapacity = pf
                  Pid = pid }
        | 0 ->
            // An older or newer manager: keep what identifies it so that the refusal can name its version.
            let pv = r.ReadInt32()
            let parsl = if n > 2 then r.ReadString() else "unknown"
            Register
                { ProtocolVersion = pv
                  ParslVersion = parsl
                  RuntimeVersion = "unknown"
                  ManagerId = "unknown"
                  BlockId = ""
                  Hostname = "unknown"
                  WorkerCount = 0
                  PrefetchCapacity = 0
                  Pid = 0 }
        | 1 -> Heartbeat
        | 2 ->
            let k = r.ReadArrayHeader()
            let mutable acc = []
            for _ in 1..k do
                acc <- readResult &r :: acc
            Results(List.rev acc)
        | 3 -> NeedAssembly(r.ReadString())
        | 4 -> Drain
        | t -> failwithf "unknown message tag %d" t

    /// Encodes an interchange message.
    let encodeToManager (m: ToManager) : byte[] =
        let buffer = ArrayBufferWriter<byte>(256)
        let mutable w = MessagePackWriter(buffer)
        match m with
        | Accepted ->
            w.WriteArrayHeader 1
            w.Write 0
        | Refused reason ->
            w.WriteArrayHeader 2
            w.Write 1
            w.Write reason
        | HeartbeatReply ->
            w.WriteArrayHeader 1
            w.Write 2
        | Tasks ts ->
            w.WriteArrayHeader 2
            w.Write 3
            w.WriteArrayHeader ts.Length
            for t in ts do
                writeTask &w t
        | Assembly(h, b) ->
            w.WriteArrayHeader 3
            w.Write 4
            w.Write h
            writeBytes &w b
        | Drained ->
            w.WriteArrayHeader 1
            w.Write 5
        | Shutdown ->
            w.WriteArrayHeader 1
            w.Write 6
        | CancelTry k ->
            w.WriteArrayHeader 2
            w.Write 7
            w.Write k
        | Challenge nonce ->
            w.WriteArrayHeader 2
            w.Write 8
            writeBytes &w nonce
        w.Flush()
        finish buffer

    /// Decodes an interchange message.
    let decodeToManager (bytes: byte[]) : ToManager =
        let mutable r = MessagePackReader(ReadOnlyMemory<byte>(bytes))
        r.ReadArrayHeader() |> ignore
        match r.ReadInt32() with
        | 0 -> Accepted
        | 1 -> Refused(r.ReadString())
        | 2 -> HeartbeatReply
        | 3 ->
            let k = r.ReadArrayHeader()
            let mutable acc = []
            for _ in 1..k do
                acc <- readTask &r :: acc
            Tasks(List.rev acc)
        | 4 ->
            let h = r.ReadString()
            Assembly(h, readBytes &r)
        | 5 -> Drained
        | 6 -> Shutdown
        | 7 -> CancelTry(r.ReadInt64())
        | 8 -> Challenge(readBytes &r)
        | t -> failwithf "unknown message tag %d" t

    /// Encodes a batch for a worker.
    let encodeToWorker (Run ts) : byte[] = encodeToManager (Tasks ts)

    /// Decodes a worker's batch.
    let decodeToWorker (bytes: byte[]) =
        match decodeToManager bytes with
        | Tasks ts -> Run ts
        | _ -> failwith "a worker only receives task batches"

    /// Encodes a worker's message.
    let encodeFromWorker (m: FromWorker) : byte[] =
        match m with
        | Done rs -> encodeToInterchange (Results rs)
        | GroupStarted(k, pgid) ->
            let buffer = ArrayBufferWriter<byte>(32)
            let mutable w = MessagePackWriter(buffer)
            w.WriteArrayHeader 3
            w.Write 10
            w.Write k
            w.Write pgid
            w.Flush()
            finish buffer

    /// Decodes a worker's message.
    let decodeFromWorker (bytes: byte[]) =
        let mutable r = MessagePackReader(ReadOnlyMemory<byte>(bytes))
        let n = r.ReadArrayHeader()
        if n = 3 && r.ReadInt32() = 10 then
            let k = r.ReadInt64()
            GroupStarted(k, r.ReadInt32())
        else
            match decodeToInterchange bytes with
            | Results rs -> Done rs
            | _ -> failwith "a worker only sends results and process groups"

    /// The key of a try: task id in the high 32 bits, try id in the low.
    let key (taskId: int) (tryId: int) = (int64 taskId <<< 32) ||| int64 (uint32 tryId)

    /// The task and try ids of a key.
    let ofKey (k: int64) = int (k >>> 32), int (k &&& 0xFFFFFFFFL)


/// The challenge and response by which a manager on TCP proves that it holds the run's secret (the client's secret
/// key, in `client.key`, mode 0600, in the run directory) before the interchange decodes anything it sends:
///
///   manager ──Hello (fixed bytes)──────────────────────▶ interchange   (anything else from it: dropped)
///   manager ◀──Challenge(32 random bytes, new for each hello)── interchange
///   manager ──Proof = HMAC-SHA256(key, label ‖ nonce ‖ identity)──▶ interchange ──▶ Register as before
///
/// The secret itself never travels; a proof is good for one nonce and one ROUTER identity only. The handshake does
/// not rely on CURVE (NetMQ lets ZMTP 1.0 and 2.0 peers past a CURVE server without any handshake), so it holds
/// whatever ZMTP version the peer speaks. Frames before the proof are compared byte for byte, never decoded.
[<RequireQualifiedAccess>]
module Handshake =
    let private helloBytes = Text.Encoding.ASCII.GetBytes "PARSL.NET-HELLO-1"
    let private proofTag = Text.Encoding.ASCII.GetBytes "PARSL.NET-PROOF-1"
    let private label = Text.Encoding.ASCII.GetBytes "parsl.net htex manager proof v1\000"

    /// The size of a challenge's nonce.
    [<Literal>]
    let NonceSize = 32

    /// The largest handshake frame: nothing longer from an unproven peer is even looked at.
    let MaxFrame = proofTag.Length + 32

    /// The hello a manager sends first.
    let hello () = Array.copy helloBytes

    /// Whether a frame is exactly the hello.
    let isHello (frame: ReadOnlySpan<byte>) = frame.SequenceEqual(ReadOnlySpan helloBytes)

    /// The HMAC key made from the run's secret (the secret is not used as a key directly: it is also the CURVE key).
    let key (secret: string) =
        Security.Cryptography.HMACSHA256.HashData(Text.Encoding.UTF8.GetBytes secret, Text.Encoding.ASCII.GetBytes "parsl.net htex manager key v1")

    let private mac (key: byte[]) (nonce: byte[]) (identity: byte[]) =
        let data = Array.concat [ label; nonce; identity ]
        Security.Cryptography.HMACSHA256.HashData(key, data)

    /// The proof frame a manager answers a challenge with.
    let proof (key: byte[]) (nonce: byte[]) (identity: byte[]) = Array.append proofTag (mac key nonce identity)

    /// Whether a frame proves the key for this nonce and identity (constant time in the MAC).
    let verify (key: byte[]) (nonce: byte[]) (identity: byte[]) (frame: ReadOnlySpan<byte>) =
        frame.Length = MaxFrame
        && frame.Slice(0, proofTag.Length).SequenceEqual(ReadOnlySpan proofTag)
        && Security.Cryptography.CryptographicOperations.FixedTimeEquals(frame.Slice proofTag.Length, ReadOnlySpan(mac key nonce identity))
