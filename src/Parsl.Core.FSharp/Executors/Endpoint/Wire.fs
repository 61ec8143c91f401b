namespace Parsl.Executors.Endpoint

open System
open System.Buffers
open MessagePack
open Parsl
open Parsl.Node.HighThroughput
open Parsl.Node

/// How to reach the broker.
type BrokerOptions =
    { /// Default "127.0.0.1".
      Host: string
      /// Default 5672 (5671 with TLS).
      Port: int
      /// Default "/".
      VirtualHost: string
      User: string
      Password: string
      /// Connect with TLS. Default false.
      Tls: bool
      /// With TLS: a PEM file of the certificate authority that signed the broker's certificate (when it is not one
      /// the system trusts).
      CaFile: string option
      /// With TLS: the name the broker's certificate must carry. Default: `Host`.
      ServerName: string option }

/// The endpoint (or the broker) refused to run a try for this client: a wrong token, or no permission to
/// publish to the endpoint. Nothing of the batch ran.
type EndpointAccessDenied(endpoint: string, message: string, inner: exn) =
    inherit ExecutorError("Endpoint", sprintf "endpoint '%s' refused the task: %s" endpoint message, inner)
    /// The endpoint's name.
    member _.Endpoint = endpoint

/// A `UserEndpointConfig` the endpoint's template does not allow; nothing of the batch ran.
type UserEndpointConfigRefused(endpoint: string, message: string) =
    inherit ConfigurationError("UserEndpointConfig", sprintf "endpoint '%s': %s" endpoint message)
    /// The endpoint's name.
    member _.Endpoint = endpoint

/// What an endpoint runs for one try.
type EndpointBody =
    /// A function app: the hash of its definition (assemblies, then the delegate, as on the HTEx) and its
    /// arguments, serialized once on the client.
    | EndpointCall of definitionHash: string * args: byte[]
    /// A shell app: the command line, built on the client.
    | EndpointCommand of command: string * stdout: WireStream option * stderr: WireStream option * walltimeMs: int64 * outputs: string list

/// One try as it travels from a client to an endpoint.
type EndpointTask =
    { /// The client's task id (high 32 bits) and try id (low 32 bits).
      Key: int64
      AppName: string
      Body: EndpointBody
      /// The resource specification (values as strings), checked by the endpoint's executor.
      Resources: (string * string) list
      /// `UserEndpointConfig`: values for the endpoint's config template, per task.
      UserConfig: (string * string) list }

/// A batch of tries: the definitions its function apps use (each once, by hash) and, when the endpoint asked for
/// them, the assemblies' bytes (by hash).
type TaskBatch =
    { Definitions: (string * byte[]) list
      Assemblies: (string * byte[]) list
      Tasks: EndpointTask list }

/// Why an endpoint refused a whole batch; the client fails every try of the batch with a typed error.
type RefusalKind =
    /// The client's token is not one the endpoint accepts.
    | BadToken = 0
    /// The client speaks another protocol version.
    | BadVersion = 1
    /// A `UserEndpointConfig` key or value the endpoint's template does not allow.
    | BadUserConfig = 2
    /// The batch could not be decoded.
    | Malformed = 3

/// Endpoint → client (on the client's task-group result queue).
///
///   client ──Hello(version)──────────────▶ endpoint ──Welcome(name, version, engine)──▶ client
///   client ──Tasks(batch id, batch)──────▶ endpoint ──Results[(key, outcome)]─────────▶ client   (as tries end)
///                                                    ──Refused(batch id, kind, reason)─▶ client   (nothing run)
///                                                    ──NeedAssemblies(batch id, hashes)▶ client ──Tasks(again, with bytes)
/// The token and the protocol version travel in the message's headers and are checked before the body is decoded.
type ToClient =
    | Welcome of endpoint: string * protocol: int * parslVersion: string * engine: string
    | Results of WireResult list
    | Refused of batchId: string * kind: RefusalKind * reason: string
    | NeedAssemblies of batchId: string * hashes: string list

/// The endpoint protocol's encoding: one MessagePack array per message body, its first element a tag.
[<RequireQualifiedAccess>]
module EndpointWire =
    /// Bumped on every incompatible change; the other side's version is checked first, with a clear error.
    [<Literal>]
    let Version = 1

    /// Header names (AMQP message headers, decoded by the broker's client, not by us).
    [<Literal>]
    let ProtocolHeader = "parsl-protocol"

    [<Literal>]
    let ParslVersionHeader = "parsl-version"

    [<Literal>]
    let TokenHeader = "parsl-token"

    /// Message kinds (the AMQP `type` property).
    [<Literal>]
    let HelloKind = "hello"

    [<Literal>]
    let TasksKind = "tasks"

    [<Literal>]
    let ReplyKind = "reply"

    /// The exchange clients publish an endpoint's tasks to, and its durable task queue.
    let endpointExchange (endpoint: string) = "parsl.ep." + endpoint
    let taskQueue (endpoint: string) = "parsl.ep." + endpoint + ".tasks"
    /// A task group's durable result queue.
    let resultQueue (taskGroup: string) = "parsl.tg." + taskGroup + ".results"

    /// Endpoint names and task-group ids become queue names: letters, digits, '-' and '_' only.
    let validName (s: string) =
        not (String.IsNullOrEmpty s) && s.Length <= 100 && s |> Seq.forall (fun c -> Char.IsAsciiLetterOrDigit c || c = '-' || c = '_')

    let private readBytes (r: byref<MessagePackReader>) =
        if r.TryReadNil() then [||]
        else
            let s = r.ReadBytes()
            if s.HasValue then s.Value.ToArray() else [||]

    let private writePairs (w: byref<MessagePackWriter>) (xs: (string * string) list) =
        w.WriteArrayHeader(List.length xs * 2)
        for k, v in xs do
            w.Write k
            w.Write v

    let private readPairs (r: byref<MessagePackReader>) =
        let n = r.ReadArrayHeader()
        if n % 2 <> 0 then failwith "a key/value list has an odd length"
        let acc = ResizeArray()
        for _ in 1 .. n / 2 do
            let k = r.ReadString()
            let v = r.ReadString()
            acc.Add((k, v))
        List.ofSeq acc

    let private writeBlobs (w: byref<MessagePackWriter>) (xs: (string * byte[]) list) =
        w.WriteArrayHeader(List.length xs * 2)
        for k, v in xs do
            w.Write k
            w.Write(ReadOnlySpan<byte>(v))

    let private readBlobs (r: byref<MessagePackReader>) =
        let n = r.ReadArrayHeader()
        if n % 2 <> 0 then failwith "a hash/bytes list has an odd length"
        let acc = ResizeArray()
        for _ in 1 .. n / 2 do
            let k = r.ReadString()
            let v = readBytes &r
            acc.Add((k, v))
        List.ofSeq acc

    let private writeTask (w: byref<MessagePackWriter>) (t: EndpointTask) =
        w.WriteArrayHeader 6
        w.Write t.Key
        w.Write t.AppName
        match t.Body with
        | EndpointCall(hash, args) ->
            w.WriteArrayHeader 3
            w.Write 0
            w.Write hash
            w.Write(ReadOnlySpan<byte>(args))
        | EndpointCommand(cmd, out, err, wall, outputs) ->
            w.WriteArrayHeader 6
            w.Write 1
            w.Write cmd
            Protocol.writeStrOpt &w out
            Protocol.writeStrOpt &w err
            w.Write wall
            w.WriteArrayHeader outputs.Length
            for o in outputs do
                w.Write o
        writePairs &w t.Resources
        writePairs &w t.UserConfig
        // Room for later fields without a version bump: readers skip what they do not know.
        w.WriteNil()

    /// Reads one task; raises on malformed input (the caller fails that task only).
    let private readTask (r: byref<MessagePackReader>) : EndpointTask =
        let n = r.ReadArrayHeader()
        if n < 5 then failwithf "a task has %d fields, expected at least 5" n
        let key = r.ReadInt64()
        let app = r.ReadString()
        let bn = r.ReadArrayHeader()
        let body =
            match r.ReadInt32() with
            | 0 when bn = 3 ->
                let hash = r.ReadString()
                EndpointCall(hash, readBytes &r)
            | 1 when bn = 6 ->
                let cmd = r.ReadString()
                let out = Protocol.readStrOpt &r
                let err = Protocol.readStrOpt &r
                let wall = r.ReadInt64()
                let k = r.ReadArrayHeader()
                let outputs = ResizeArray()
                for _ in 1..k do
                    outputs.Add(r.ReadString())
                let outputs = List.ofSeq outputs
                EndpointCommand(cmd, out, err, wall, outputs)
            | tag -> failwithf "unknown task body %d with %d fields" tag bn
        let resources = readPairs &r
        let config = readPairs &r
        for _ in 6..n do
            r.Skip()
        { Key = key; AppName = app; Body = body; Resources = resources; UserConfig = config }

    let private readOne (slice: ReadOnlyMemory<byte>) : Result<EndpointTask, int64 option * string> =
        let key =
            try
                let mutable k = MessagePackReader(slice)
                k.ReadArrayHeader() |> ignore
                Some(k.ReadInt64())
            with _ -> None
        try
            let mutable one = MessagePackReader(slice)
            Ok(readTask &one)
        with e -> Error(key, e.Message)

    let private finish (buffer: ArrayBufferWriter<byte>) = buffer.WrittenSpan.ToArray()

    /// Encodes a batch.
    let encodeBatch (b: TaskBatch) : byte[] =
        let buffer = ArrayBufferWriter<byte>(256)
        let mutable w = MessagePackWriter(buffer)
        w.WriteArrayHeader 3
        writeBlobs &w b.Definitions
        writeBlobs &w b.Assemblies
        w.WriteArrayHeader b.Tasks.Length
        for t in b.Tasks do
            writeTask &w t
        w.Flush()
        finish buffer

    /// Decodes a batch, task by task: a task that cannot be read is returned as `Error(key if known, reason)` and
    /// the others still run (one malformed task fails that task only).
    let decodeBatch (bytes: ReadOnlyMemory<byte>) : (string * byte[]) list * (string * byte[]) list * Result<EndpointTask, int64 option * string> list =
        let mutable r = MessagePackReader(bytes)
        if r.ReadArrayHeader() <> 3 then failwith "a batch is an array of 3"
        let defs = readBlobs &r
        let asms = readBlobs &r
        let n = r.ReadArrayHeader()
        let tasks = ResizeArray()
        for _ in 1..n do
            // Each task is read from its own slice, so a bad one cannot derail its neighbours.
            let start = r.Consumed
            r.Skip()
            let slice = bytes.Slice(int start, int (r.Consumed - start))
            tasks.Add(readOne slice)
        defs, asms, List.ofSeq tasks

    /// Encodes a message for a client.
    let encodeToClient (m: ToClient) : byte[] =
        let buffer = ArrayBufferWriter<byte>(256)
        let mutable w = MessagePackWriter(buffer)
        match m with
        | Welcome(name, protocol, version, engine) ->
            w.WriteArrayHeader 5
            w.Write 0
            w.Write name
            w.Write protocol
            w.Write version
            w.Write engine
        | Results rs ->
            w.WriteArrayHeader 2
            w.Write 1
            w.WriteArrayHeader rs.Length
            for x in rs do
                Protocol.writeResult &w x
        | Refused(batch, kind, reason) ->
            w.WriteArrayHeader 4
            w.Write 2
            w.Write batch
            w.Write(int kind)
            w.Write reason
        | NeedAssemblies(batch, hashes) ->
            w.WriteArrayHeader 3
            w.Write 3
            w.Write batch
            w.WriteArrayHeader hashes.Length
            for h in hashes do
                w.Write h
        w.Flush()
        finish buffer

    /// Decodes a message for a client; raises on malformed input.
    let decodeToClient (bytes: ReadOnlyMemory<byte>) : ToClient =
        let mutable r = MessagePackReader(bytes)
        r.ReadArrayHeader() |> ignore
        match r.ReadInt32() with
        | 0 ->
            let name = r.ReadString()
            let protocol = r.ReadInt32()
            let version = r.ReadString()
            let engine = r.ReadString()
            Welcome(name, protocol, version, engine)
        | 1 ->
            let n = r.ReadArrayHeader()
            let acc = ResizeArray()
            for _ in 1..n do
                acc.Add(Protocol.readResult &r)
            Results(List.ofSeq acc)
        | 2 ->
            let batch = r.ReadString()
            let kind = enum<RefusalKind> (r.ReadInt32())
            let reason = r.ReadString()
            Refused(batch, kind, reason)
        | 3 ->
            let batch = r.ReadString()
            let n = r.ReadArrayHeader()
            let acc = ResizeArray()
            for _ in 1..n do
                acc.Add(r.ReadString())
            NeedAssemblies(batch, List.ofSeq acc)
        | t -> failwithf "unknown message tag %d" t

    /// Compares two tokens in time that does not depend on where they differ.
    let tokensEqual (a: string) (b: string) =
        not (isNull a) && not (isNull b)
        && Security.Cryptography.CryptographicOperations.FixedTimeEquals(
            ReadOnlySpan(Text.Encoding.UTF8.GetBytes a), ReadOnlySpan(Text.Encoding.UTF8.GetBytes b))
