namespace Parsl.Node.HighThroughput

open System
open System.Buffers
open System.Collections.Concurrent
open System.Collections.Generic
open System.IO
open System.Reflection
open System.Runtime.CompilerServices
open System.Security.Cryptography
open MessagePack
open MessagePack.Formatters
open MessagePack.Resolvers
open Parsl

/// An assembly a function needs on the worker: its full name, where the client loaded it from, and a hash
/// of its content (the worker loads it from the path when the hash matches, else from bytes it fetched).
type AssemblyRef = { FullName: string; Path: string; Hash: string }

/// Raised while serializing a value that cannot travel to another process.
type internal Unshippable(message: string) =
    inherit Exception(message)

/// Recognises compiler-generated closure classes (F# `clo@12`, C# `<>c__DisplayClass`).
module internal ClosureTypes =
    let rec private isFSharpFunc (t: Type) =
        not (isNull t)
        && ((t.IsGenericType && t.GetGenericTypeDefinition() = typedefof<FSharpFunc<int, int>>) || isFSharpFunc t.BaseType)

    /// Is this a class whose instances are closures we rebuild field by field?
    let isClosure (t: Type) =
        t.IsClass
        && not (typeof<Delegate>.IsAssignableFrom t)
        && (t.Name.Contains '@'
            || t.Name.StartsWith "<"
            || t.IsDefined(typeof<CompilerGeneratedAttribute>, false)
            || isFSharpFunc t)

    /// Types that hold OS resources or live state: serializing them would silently send garbage.
    let isRefused (t: Type) =
        typeof<Stream>.IsAssignableFrom t
        || typeof<Runtime.InteropServices.SafeHandle>.IsAssignableFrom t
        || typeof<Threading.WaitHandle>.IsAssignableFrom t
        || typeof<Threading.Tasks.Task>.IsAssignableFrom t
        || typeof<Threading.Thread>.IsAssignableFrom t
        || typeof<Threading.CancellationTokenSource>.IsAssignableFrom t
        || typeof<MemberInfo>.IsAssignableFrom t
        || typeof<Net.Sockets.Socket>.IsAssignableFrom t
        || t = typeof<IntPtr>
        || t = typeof<UIntPtr>

    /// Every instance field, base classes included, in a stable order.
    let fields (t: Type) =
        let rec go (t: Type) acc =
            if isNull t || t = typeof<obj> then acc
            else
                let own =
                    t.GetFields(BindingFlags.Instance ||| BindingFlags.Public ||| BindingFlags.NonPublic ||| BindingFlags.DeclaredOnly)
                    |> Array.sortBy (fun f -> f.MetadataToken)
                go t.BaseType (Array.append own acc)
        go t [||]

    /// Converts a deserialized value to the type a field or parameter expects (MessagePack may widen numbers).
    let coerce (target: Type) (v: obj) =
        if isNull v || target.IsInstanceOfType v then v
        elif target.IsEnum then Enum.ToObject(target, v)
        elif target.IsPrimitive || target = typeof<decimal> then Convert.ChangeType(v, target, Globalization.CultureInfo.InvariantCulture)
        else v

/// Rebuilds a closure from its type and fields (MessagePack has no constructor to call).
type internal ClosureFormatter<'T>() =
    static let fields = ClosureTypes.fields typeof<'T>
    interface IMessagePackFormatter<'T> with
        member _.Serialize(writer: byref<MessagePackWriter>, value: 'T, options: MessagePackSerializerOptions) =
            if isNull (box value) then writer.WriteNil()
            else
                writer.WriteArrayHeader fields.Length
                for f in fields do
                    MessagePackSerializer.Serialize<obj>(&writer, f.GetValue(box value), options)

        member _.Deserialize(reader: byref<MessagePackReader>, options: MessagePackSerializerOptions) : 'T =
            if reader.TryReadNil() then Unchecked.defaultof<'T>
            else
                let n = reader.ReadArrayHeader()
                let o = RuntimeHelpers.GetUninitializedObject typeof<'T>
                for i in 0 .. n - 1 do
                    let v = MessagePackSerializer.Deserialize<obj>(&reader, options)
                    if i < fields.Length then fields[i].SetValue(o, ClosureTypes.coerce fields[i].FieldType v)
                o :?> 'T

/// Writes or reads a value whose type is known only at run time, through the formatter the options' resolver
/// gives for that type. MessagePack's typeless formatter does the same through expression trees compiled per type;
/// their first compilation took 40–60 ms of a worker's first task (measured), on the path to the first result.
type internal BoxedWriter = delegate of byref<MessagePackWriter> * obj * MessagePackSerializerOptions -> unit
type internal BoxedReader = delegate of byref<MessagePackReader> * MessagePackSerializerOptions -> obj

type internal Boxed private () =
    static let writers = ConcurrentDictionary<Type, BoxedWriter>()
    static let readers = ConcurrentDictionary<Type, BoxedReader>()
    static member Write<'T>(writer: byref<MessagePackWriter>, value: obj, options: MessagePackSerializerOptions) =
        options.Resolver.GetFormatterWithVerify<'T>().Serialize(&writer, (value :?> 'T), options)
    static member Read<'T>(reader: byref<MessagePackReader>, options: MessagePackSerializerOptions) : obj =
        box (options.Resolver.GetFormatterWithVerify<'T>().Deserialize(&reader, options))
    static member WriterFor(t: Type) =
        writers.GetOrAdd(t, fun t -> typeof<Boxed>.GetMethod("Write", BindingFlags.Static ||| BindingFlags.Public ||| BindingFlags.NonPublic).MakeGenericMethod(t).CreateDelegate<BoxedWriter>())
    static member ReaderFor(t: Type) =
        readers.GetOrAdd(t, fun t -> typeof<Boxed>.GetMethod("Read", BindingFlags.Static ||| BindingFlags.Public ||| BindingFlags.NonPublic).MakeGenericMethod(t).CreateDelegate<BoxedReader>())

/// Values typed `obj` (arguments, results, captured values) in MessagePack's typeless format, byte for byte:
/// built-in scalars and strings as they are, anything else as extension 100 holding the type's name and the value.
/// Ours because MessagePack's `TypelessFormatter` costs 30–40 ms to start (measured in a fresh process) and compiles
/// an expression tree for each new type, both on a worker's way to its first result.
type internal ObjFormatter private () =
    static let builtin =
        HashSet<Type>(
            [ typeof<bool>; typeof<sbyte>; typeof<byte>; typeof<int16>; typeof<uint16>; typeof<int>; typeof<uint32>
              typeof<int64>; typeof<uint64>; typeof<single>; typeof<double>; typeof<string>; typeof<byte[]>
              typeof<Nullable<bool>>; typeof<Nullable<sbyte>>; typeof<Nullable<byte>>; typeof<Nullable<int16>>
              typeof<Nullable<uint16>>; typeof<Nullable<int>>; typeof<Nullable<uint32>>; typeof<Nullable<int64>>
              typeof<Nullable<uint64>>; typeof<Nullable<single>>; typeof<Nullable<double>> ])
    static let names = ConcurrentDictionary<Type, string>()
    static let types = ConcurrentDictionary<string, Type>()
    static let anonymous (t: Type) =
        t.Name.Contains "AnonymousType" && t.IsDefined(typeof<CompilerGeneratedAttribute>, false)
    [<Literal>]
    static let Typeless = 100y
    static member val Instance = ObjFormatter()
    interface IMessagePackFormatter<obj> with
        member _.Serialize(writer: byref<MessagePackWriter>, value: obj, options: MessagePackSerializerOptions) =
            match value with
            | null -> writer.WriteNil()
            | v ->
                let t = v.GetType()
                if builtin.Contains t || anonymous t then DynamicObjectTypeFallbackFormatter.Instance.Serialize(&writer, v, options)
                else
                    let name = names.GetOrAdd(t, fun t -> t.AssemblyQualifiedName)
                    let scratch = ArrayBufferWriter<byte>(64)
                    let mutable inner = writer.Clone scratch
                    inner.Write name
                    Boxed.WriterFor(t).Invoke(&inner, v, options)
                    inner.Flush()
                    writer.WriteExtensionFormat(ExtensionResult(Typeless, ReadOnlySequence<byte>(scratch.WrittenMemory)))

        member _.Deserialize(reader: byref<MessagePackReader>, options: MessagePackSerializerOptions) : obj =
            if reader.TryReadNil() then null
            else
                let mutable peek = reader.CreatePeekReader()
                if reader.NextMessagePackType = MessagePackType.Extension && peek.ReadExtensionFormatHeader().TypeCode = Typeless then
                    reader <- peek
                    let name = reader.ReadString()
                    let t =
                        types.GetOrAdd(
                            name,
                            fun n ->
                                match options.LoadType n with
                                | null -> Type.GetType(n, true)
                                | t -> t)
                    options.ThrowIfDeserializingTypeIsDisallowed t
                    Boxed.ReaderFor(t).Invoke(&reader, options)
                else DynamicObjectTypeFallbackFormatter.Instance.Deserialize(&reader, options)

/// A delegate as a reference: declaring type, method token (and generic arguments), and its target.
type internal DelegateFormatter<'T>() =
    interface IMessagePackFormatter<'T> with
        member _.Serialize(writer: byref<MessagePackWriter>, value: 'T, options: MessagePackSerializerOptions) =
            match box value with
            | null -> writer.WriteNil()
            | :? MulticastDelegate as d when d.GetInvocationList().Length > 1 ->
                raise (Unshippable "a multicast delegate (several methods combined) cannot be shipped; pass one function")
            | :? Delegate as d ->
                let m = d.Method
                let asm = m.Module.Assembly
                if isNull m.DeclaringType || asm.IsDynamic || String.IsNullOrEmpty asm.Location then
                    raise (
                        Unshippable(
                            sprintf "the function %s was compiled in memory (F# Interactive or Reflection.Emit), so workers cannot load it; compile it into an assembly (a project), or run it on a ThreadPoolExecutor"
                                m.Name))
                writer.WriteArrayHeader 4
                writer.Write m.DeclaringType.AssemblyQualifiedName
                writer.Write m.MetadataToken
                let gargs = if m.IsGenericMethod then m.GetGenericArguments() else [||]
                writer.WriteArrayHeader gargs.Length
                for g in gargs do
                    writer.Write g.AssemblyQualifiedName
                // The target (the closure): its type's name, then its value through that type's formatter.
                match d.Target with
                | null -> writer.WriteNil()
                | target ->
                    let t = target.GetType()
                    writer.WriteArrayHeader 2
                    writer.Write t.AssemblyQualifiedName
                    Boxed.WriterFor(t).Invoke(&writer, target, options)
            | _ -> writer.WriteNil()

        member _.Deserialize(reader: byref<MessagePackReader>, options: MessagePackSerializerOptions) : 'T =
            if reader.TryReadNil() then Unchecked.defaultof<'T>
            else
                reader.ReadArrayHeader() |> ignore
                let declaring = Type.GetType(reader.ReadString(), true)
                let token = reader.ReadInt32()
                let n = reader.ReadArrayHeader()
                let gargs = Array.zeroCreate<Type> n
                for i in 0 .. n - 1 do
                    gargs[i] <- Type.GetType(reader.ReadString(), true)
                let target =
                    if reader.TryReadNil() then null
                    else
                        reader.ReadArrayHeader() |> ignore
                        let t = Type.GetType(reader.ReadString(), true)
                        options.ThrowIfDeserializingTypeIsDisallowed t
                        Boxed.ReaderFor(t).Invoke(&reader, options)
                let flags = BindingFlags.Instance ||| BindingFlags.Static ||| BindingFlags.Public ||| BindingFlags.NonPublic ||| BindingFlags.DeclaredOnly
                let m =
                    declaring.GetMethods flags
                    |> Array.tryFind (fun m -> m.MetadataToken = token)
                    |> Option.defaultWith (fun () -> failwithf "method %d not found on %s: the worker loaded another build of the assembly" token declaring.FullName)
                let m = if n > 0 then m.MakeGenericMethod gargs else m
                let d =
                    if m.IsStatic && isNull target then Delegate.CreateDelegate(typeof<'T>, m)
                    else Delegate.CreateDelegate(typeof<'T>, target, m)
                box d :?> 'T

/// F# unions (and options): the case tag and the case's fields (MessagePack's contractless resolver finds
/// no constructor on union case classes).
type internal UnionFormatter<'T>() =
    static let flags = BindingFlags.Public ||| BindingFlags.NonPublic
    static let unionType =
        let t = typeof<'T>
        if Microsoft.FSharp.Reflection.FSharpType.IsUnion(t, flags) && not (isNull t.BaseType)
           && Microsoft.FSharp.Reflection.FSharpType.IsUnion(t.BaseType, flags) then t.BaseType
        else t
    static let cases = Microsoft.FSharp.Reflection.FSharpType.GetUnionCases(unionType, flags)
    static let tagOf = Microsoft.FSharp.Reflection.FSharpValue.PreComputeUnionTagReader(unionType, flags)
    static let readers = cases |> Array.map (fun c -> Microsoft.FSharp.Reflection.FSharpValue.PreComputeUnionReader(c, flags))
    static let makers = cases |> Array.map (fun c -> Microsoft.FSharp.Reflection.FSharpValue.PreComputeUnionConstructor(c, flags))
    static let fieldTypes = cases |> Array.map (fun c -> c.GetFields() |> Array.map (fun f -> f.PropertyType))
    interface IMessagePackFormatter<'T> with
        member _.Serialize(writer: byref<MessagePackWriter>, value: 'T, options: MessagePackSerializerOptions) =
            // None is null at run time; the tag reader handles it.
            let tag = tagOf (box value)
            let fields = readers[tag] (box value)
            writer.WriteArrayHeader(fields.Length + 1)
            writer.Write tag
            for f in fields do
                MessagePackSerializer.Serialize<obj>(&writer, f, options)

        member _.Deserialize(reader: byref<MessagePackReader>, options: MessagePackSerializerOptions) : 'T =
            let n = reader.ReadArrayHeader()
            let tag = reader.ReadInt32()
            let types = fieldTypes[tag]
            let fields = Array.zeroCreate<obj> (n - 1)
            for i in 0 .. n - 2 do
                fields[i] <- ClosureTypes.coerce types[i] (MessagePackSerializer.Deserialize<obj>(&reader, options))
            makers[tag] fields :?> 'T

/// F# lists as arrays (a union formatter would nest one level per element).
type internal FSharpListFormatter<'E>() =
    interface IMessagePackFormatter<'E list> with
        member _.Serialize(writer: byref<MessagePackWriter>, value: 'E list, options: MessagePackSerializerOptions) =
            writer.WriteArrayHeader(List.length value)
            for x in value do
                MessagePackSerializer.Serialize<obj>(&writer, box x, options)

        member _.Deserialize(reader: byref<MessagePackReader>, options: MessagePackSerializerOptions) : 'E list =
            let n = reader.ReadArrayHeader()
            let items = Array.zeroCreate<'E> n
            for i in 0 .. n - 1 do
                items[i] <- ClosureTypes.coerce typeof<'E> (MessagePackSerializer.Deserialize<obj>(&reader, options)) :?> 'E
            List.ofArray items

/// Refuses values that hold OS resources, so the task fails with `SerializationError` instead of shipping junk.
type internal RefusedFormatter<'T>() =
    interface IMessagePackFormatter<'T> with
        member _.Serialize(_: byref<MessagePackWriter>, _: 'T, _: MessagePackSerializerOptions) =
            raise (
                Unshippable(
                    sprintf "a value of type %s holds a live resource (stream, handle, thread, task) and cannot be sent to a worker; pass what it refers to instead (a path, a string, the data)"
                        typeof<'T>.FullName))

        member _.Deserialize(_: byref<MessagePackReader>, _: MessagePackSerializerOptions) : 'T =
            raise (Unshippable(sprintf "a value of type %s cannot be received" typeof<'T>.FullName))

/// Supplies our formatters for closures, delegates and refused types; everything else falls through.
type internal ShippingResolver() =
    static let cache = ConcurrentDictionary<Type, obj>()
    static member val Instance = ShippingResolver()
    interface IFormatterResolver with
        member _.GetFormatter<'T>() : IMessagePackFormatter<'T> =
            let f =
                cache.GetOrAdd(
                    typeof<'T>,
                    fun t ->
                        if ClosureTypes.isRefused t then box (RefusedFormatter<'T>())
                        elif typeof<Delegate>.IsAssignableFrom t && t <> typeof<Delegate> && t <> typeof<MulticastDelegate> then
                            box (DelegateFormatter<'T>())
                        elif ClosureTypes.isClosure t then box (ClosureFormatter<'T>())
                        // Found here without waking the dynamic resolvers, whose start-up builds code generators.
                        elif t = typeof<obj> then box ObjFormatter.Instance
                        elif t.IsGenericType && t.GetGenericTypeDefinition() = typedefof<int list> then
                            Activator.CreateInstance(typedefof<FSharpListFormatter<int>>.MakeGenericType(t.GetGenericArguments()))
                        elif Microsoft.FSharp.Reflection.FSharpType.IsUnion(t, BindingFlags.Public ||| BindingFlags.NonPublic) then
                            box (UnionFormatter<'T>())
                        else null)
            match f with
            | null -> null
            | f -> f :?> IMessagePackFormatter<'T>

/// A resolver made when first asked: the dynamic resolvers' start-up (code generators) is paid only by a
/// process whose values need them, not by every worker for its first int.
type internal LazyResolver(make: unit -> IFormatterResolver) =
    let inner = lazy (make ())
    interface IFormatterResolver with
        member _.GetFormatter<'T>() = inner.Value.GetFormatter<'T>()

/// Typeless options that deserialize only types from the BCL, FSharp.Core, Parsl.NET and allowed assemblies.
type internal ShippingOptions =
    inherit MessagePackSerializerOptions
    val Allowed: string -> bool
    new(resolver: IFormatterResolver, allowed) = { inherit MessagePackSerializerOptions(resolver); Allowed = allowed }
    new(copyFrom: ShippingOptions) = { inherit MessagePackSerializerOptions(copyFrom); Allowed = copyFrom.Allowed }
    override this.Clone() = ShippingOptions(this) :> MessagePackSerializerOptions
    override this.ThrowIfDeserializingTypeIsDisallowed(t: Type) =
        base.ThrowIfDeserializingTypeIsDisallowed t
        let a = t.Assembly
        let name = a.GetName().Name
        let framework =
            name = "System.Private.CoreLib" || name.StartsWith "System." || name = "netstandard" || name = "mscorlib"
            || name = "FSharp.Core" || name.StartsWith "Parsl."
        if not framework && not (this.Allowed name) then
            raise (Unshippable(sprintf "type %s from assembly %s is not one of the application's assemblies; refused" t.FullName name))

/// Serialization of function references, arguments and results (DESIGN.md §5): MessagePack typeless with
/// the contractless allow-private resolver, plus our formatters for closures and delegates.
[<RequireQualifiedAccess>]
module Serialization =
    let private resolver () =
        CompositeResolver.Create(
            [| ShippingResolver.Instance :> IFormatterResolver
               NativeDateTimeResolver.Instance
               BuiltinResolver.Instance
               AttributeFormatterResolver.Instance
               CompositeResolver.Create(ExpandoObjectFormatter.Instance)
               LazyResolver(fun () -> DynamicGenericResolver.Instance)
               LazyResolver(fun () -> DynamicUnionResolver.Instance)
               LazyResolver(fun () -> DynamicObjectResolver.Instance)
               LazyResolver(fun () -> DynamicContractlessObjectResolverAllowPrivate.Instance)
               // Abstract classes and interfaces (a field typed `Delegate`) as typeless values; its start-up is the
               // costly one, paid only by a process that meets such a field.
               LazyResolver(fun () -> TypelessObjectResolver.Instance) |])

    /// Options that accept types from assemblies whose simple name passes `allowed`.
    let options (allowed: string -> bool) : MessagePackSerializerOptions =
        (new ShippingOptions(resolver (), allowed)).WithSecurity(MessagePackSecurity.UntrustedData)

    /// The error to report from a serializer failure: our own `Unshippable` if it is in the chain, else the innermost.
    let rec private rootCause (e: exn) =
        match e with
        | :? Unshippable -> e
        | _ when not (isNull e.InnerException) -> rootCause e.InnerException
        | _ -> e

    /// Serializes one value (typeless: the type travels with it). Raises `SerializationError` naming `what`.
    let serialize (opts: MessagePackSerializerOptions) (what: string) (value: obj) : byte[] =
        try
            MessagePackSerializer.Serialize<obj>(value, opts)
        with e ->
            let r = rootCause e
            raise (SerializationError(sprintf "%s cannot be serialized: %s" what r.Message, r))

    /// Serializes a call's arguments as one array.
    let serializeArgs (opts: MessagePackSerializerOptions) (args: obj[]) : byte[] =
        let buffer = ArrayBufferWriter<byte>(64)
        let mutable w = MessagePackWriter(buffer)
        w.WriteArrayHeader args.Length
        for i in 0 .. args.Length - 1 do
            try
                MessagePackSerializer.Serialize<obj>(&w, args[i], opts)
            with e ->
                let r = rootCause e
                let t = if isNull args[i] then "null" else args[i].GetType().FullName
                raise (SerializationError(sprintf "argument %d (%s) cannot be serialized: %s" i t r.Message, r))
        w.Flush()
        buffer.WrittenSpan.ToArray()

    /// Reads a call's arguments, converted to the delegate's parameter types.
    let deserializeArgs (opts: MessagePackSerializerOptions) (parameters: ParameterInfo[]) (bytes: byte[]) : obj[] =
        let mutable r = MessagePackReader(ReadOnlyMemory<byte>(bytes))
        let n = r.ReadArrayHeader()
        let result = Array.zeroCreate<obj> n
        for i in 0 .. n - 1 do
            let v = MessagePackSerializer.Deserialize<obj>(&r, opts)
            result[i] <- if i < parameters.Length then ClosureTypes.coerce parameters[i].ParameterType v else v
        result

    /// Deserializes one value.
    let deserialize (opts: MessagePackSerializerOptions) (bytes: byte[]) : obj =
        MessagePackSerializer.Deserialize<obj>(ReadOnlyMemory<byte>(bytes), opts)

    /// Whether Parsl.NET's own code was compiled ahead of time (a ReadyToRun publish). Then the warm-up below only
    /// takes CPU from the start-up it was meant to shorten (measured on 2 cores: first result 30 ms later with it;
    /// without ReadyToRun it helps).
    let private precompiledCell =
        lazy
            (try
                use file = IO.File.OpenRead(typeof<ShippingResolver>.Assembly.Location)
                use pe = new PortableExecutable.PEReader(file)
                let cor = pe.PEHeaders.CorHeader
                not (isNull cor) && cor.ManagedNativeHeaderDirectory.Size > 0
             with _ -> false)

    let precompiled () = precompiledCell.Value

    /// Runs every message and value codec once on dummy data, so their JIT compilation and MessagePack's
    /// formatter generation happen before the first real task instead of on its path. Errors are ignored:
    /// the real task meets them again and reports them.
    let warmUp (opts: MessagePackSerializerOptions) =
        try
            let args = serializeArgs opts [| box 0; box "warm"; box 1.0 |]
            let task =
                { Key = 0L
                  AppName = "warm"
                  Body = Call(0, null, args, -1L)
                  Resources = [] }
            let shell =
                { task with Body = Command("true", Some { Path = "out"; Truncate = true }, None, -1L, [ "f" ]) }
            Protocol.decodeToWorker (Protocol.encodeToWorker (Run [ task; shell ])) |> ignore
            Protocol.decodeToManager (Protocol.encodeToManager Accepted) |> ignore
            deserializeArgs opts [||] args |> ignore
            let value = serialize opts "warm" (box 0)
            deserialize opts value |> ignore
            let results =
                [ { Key = 0L; Outcome = Value value }
                  { Key = 0L; Outcome = Raised("T", "m", "s", [ "d" ]) } ]
            Protocol.decodeFromWorker (Protocol.encodeFromWorker (Done results)) |> ignore
            Protocol.decodeToInterchange (Protocol.encodeToInterchange Heartbeat) |> ignore
        with _ -> ()

    /// Is the assembly part of the runtime or of Parsl.NET's own dependencies, which every worker has?
    let isProvided (a: Assembly) =
        let name = a.GetName().Name
        let runtimeDir = Runtime.InteropServices.RuntimeEnvironment.GetRuntimeDirectory()
        a.IsDynamic
        || String.IsNullOrEmpty a.Location
        || a.Location.StartsWith(runtimeDir, StringComparison.Ordinal)
        || name = "FSharp.Core" || name = "Parsl.Core.FSharp" || name = "Parsl.Node" || name = "Parsl.Workers" || name.StartsWith "MessagePack" || name = "NetMQ"
        || name = "AsyncIO" || name = "NaCl" || name.StartsWith "Serilog" || name.StartsWith "Microsoft.NET.StringTools"
        || name = "System.Private.ServiceModel"

    /// The content hash of a file (hex SHA-256).
    let hashFile (path: string) =
        use s = File.OpenRead path
        Convert.ToHexString(SHA256.HashData s)

    /// A definition from its assemblies and the delegate's bytes (also how the manager points the paths at
    /// verified local copies).
    let rewriteDefinition (refs: AssemblyRef list) (body: byte[]) : byte[] =
        let buffer = ArrayBufferWriter<byte>(body.Length + 256)
        let mutable w = MessagePackWriter(buffer)
        w.WriteArrayHeader 2
        w.WriteArrayHeader refs.Length
        for a in refs do
            w.WriteArrayHeader 3
            w.Write a.FullName
            w.Write a.Path
            w.Write a.Hash
        w.Write(ReadOnlySpan<byte>(body))
        w.Flush()
        buffer.WrittenSpan.ToArray()

    /// The definition of a function: the assemblies it may need, then the delegate itself.
    let encodeDefinition (opts: MessagePackSerializerOptions) (assemblies: AssemblyRef list) (f: Delegate) : byte[] =
        rewriteDefinition assemblies (serialize opts ("the function of app " + f.Method.Name) (box f))

    /// Splits a definition into its assemblies and the delegate's bytes.
    let decodeDefinition (bytes: byte[]) : AssemblyRef list * byte[] =
        let mutable r = MessagePackReader(ReadOnlyMemory<byte>(bytes))
        r.ReadArrayHeader() |> ignore
        let n = r.ReadArrayHeader()
        let mutable refs = []
        for _ in 1..n do
            r.ReadArrayHeader() |> ignore
            let name = r.ReadString()
            let path = r.ReadString()
            let hash = r.ReadString()
            refs <- { FullName = name; Path = path; Hash = hash } :: refs
        let refs = List.rev refs
        let body = r.ReadBytes()
        refs, body.Value.ToArray()

