namespace Parsl

open System
open System.Collections
open System.Collections.Generic
open System.IO
open System.Text
open Microsoft.FSharp.Reflection
open Parsl.Data

/// An argument of a cached app has a type with no memo encoding (Parsl's `id_for_memo` failure). Only that
/// task fails. Register a hasher for the type in `Config.MemoHashers`, or list the argument in
/// `AppOptions.IgnoreForCache`.
type MemoizationError(appName: string, argument: string, typeName: string) =
    inherit ParslException(
        sprintf
            "Cannot memoize a call of app '%s': %s has type %s, which has no memo encoding. Register a hasher for it in Config.MemoHashers (Parsl's id_for_memo.register), or add the argument to AppOptions.IgnoreForCache"
            appName argument typeName)
    /// The app.
    member _.AppName = appName
    /// The argument, as `argument 1 ('x')`.
    member _.Argument = argument
    /// The type that could not be encoded.
    member _.TypeName = typeName

/// A user's memo encoding for one of their types (Parsl's `id_for_memo.register`): the bytes must be equal
/// exactly when two values are to be treated as the same argument, in any process.
type MemoHasher = obj -> byte[]

/// What the kernel needs to memoize the calls of one app (from its `AppOptions`).
type MemoSpec =
    { /// The app's name.
      AppName: string
      /// The app's identity beyond its name: the function's declaring type and method (not its code, as Parsl).
      Identity: string
      /// Each argument's name, for error messages.
      ArgNames: string[]
      /// Arguments left out of the key (Parsl's `ignore_for_cache`), by position.
      Ignored: bool[] }

/// A memo key: SHA-256 over a canonical encoding of an app's identity and argument values. Unlike
/// `GetHashCode`, it is the same in every process, so checkpoints written by one run are found by the next.
[<Struct; CustomEquality; NoComparison>]
type MemoKey =
    /// The 32 bytes of the hash.
    val Bytes: byte[]
    /// Wraps 32 bytes.
    new(bytes: byte[]) = { Bytes = bytes }
    override this.ToString() = Convert.ToHexString(this.Bytes).ToLowerInvariant()
    override this.GetHashCode() = BitConverter.ToInt32(this.Bytes, 0)
    override this.Equals(o: obj) =
        match o with
        | :? MemoKey as k -> ReadOnlySpan(this.Bytes).SequenceEqual(ReadOnlySpan k.Bytes)
        | _ -> false
    interface IEquatable<MemoKey> with
        member this.Equals(k: MemoKey) = ReadOnlySpan(this.Bytes).SequenceEqual(ReadOnlySpan k.Bytes)

/// The canonical encoding of argument values and the memo key (Parsl's `id_for_memo` and `make_hash`). Pure.
///
/// Encoded structurally: null/unit/None, bool, every integer and floating type (with its type: 1 and 1L and
/// 1.0 differ), decimal, char, string, BigInteger, DateTime, DateTimeOffset, TimeSpan, Guid, enums, byte
/// arrays, sequences (arrays, lists, any `IEnumerable`), tuples, F# records and unions, maps and
/// dictionaries (entries sorted, so insertion order does not matter), sets (sorted), and `File` (by URL, not
/// by where it was staged). Anything else needs a hasher, and so do lazy sequences (they may be infinite:
/// pass a list or an array) and structures nested more than 512 deep (taken for cycles).
[<RequireQualifiedAccess>]
module Memo =
    /// The version of the encoding, part of every key: a change of encoding never matches old checkpoints.
    [<Literal>]
    let EncodingVersion = "parsl.net/memo/1"

    /// A value had no encoding: its type.
    exception internal Unencodable of Type

    /// A name for a type that is the same in every process and runtime version (no assembly versions).
    let rec stableTypeName (t: Type) : string =
        if t.IsArray then stableTypeName (t.GetElementType()) + "[]"
        elif t.IsGenericType && not t.IsGenericTypeDefinition then
            let def = t.GetGenericTypeDefinition()
            sprintf "%s[%s]" def.FullName (t.GetGenericArguments() |> Array.map stableTypeName |> String.concat ",")
        else
            match t.FullName with
            | null -> t.Name
            | n -> n

    let private isGenericOf (def: Type) (t: Type) =
        t.IsGenericType && t.GetGenericTypeDefinition() = def

    let private findInterface (def: Type) (t: Type) =
        if isGenericOf def t then Some t else t.GetInterfaces() |> Array.tryFind (isGenericOf def)

    let private writeLen (w: BinaryWriter) (n: int) = w.Write n

    let private writeString (w: BinaryWriter) (s: string) =
        let b = Encoding.UTF8.GetBytes s
        writeLen w b.Length
        w.Write b

    let private lexCompare (a: byte[]) (b: byte[]) = ReadOnlySpan(a).SequenceCompareTo(ReadOnlySpan b)

    /// Deeper than this is taken for a cycle (a mutable structure that contains itself).
    [<Literal>]
    let private MaxDepth = 512

    /// Collections whose items are all in memory; a lazy sequence may be infinite, so it has no encoding.
    let private isMaterialized (t: Type) =
        t.IsArray || typeof<ICollection>.IsAssignableFrom t
        || (findInterface typedefof<ICollection<int>> t).IsSome
        || (findInterface typedefof<IReadOnlyCollection<int>> t).IsSome

    let rec private encodeInto (hashers: (Type * MemoHasher) list) (depth: int) (w: BinaryWriter) (v: obj) : unit =
        let tag (b: byte) = w.Write b
        if depth > MaxDepth then raise (Unencodable(if isNull v then typeof<obj> else v.GetType()))
        let encodeInto hashers w v = encodeInto hashers (depth + 1) w v
        let nested (x: obj) =
            use ms = new MemoryStream()
            use w2 = new BinaryWriter(ms)
            encodeInto hashers w2 x
            w2.Flush()
            ms.ToArray()
        let writeSorted (parts: byte[] seq) =
            let arr = parts |> Array.ofSeq
            Array.sortInPlaceWith lexCompare arr
            writeLen w arr.Length
            for p in arr do
                writeLen w p.Length
                w.Write p
        let primitives (a: 'T[]) (item: 'T -> unit) =
            tag 30uy
            writeLen w a.Length
            for x in a do
                item x
        let t = if isNull v then null else v.GetType()
        let hasher =
            if isNull t then None
            else
                hashers
                |> List.tryFind (fun (ht, _) -> ht = t)
                |> Option.orElse (hashers |> List.tryFind (fun (ht, _) -> ht.IsAssignableFrom t))
        match v, hasher with
        | null, _ -> tag 0uy
        | _, Some(ht, h) ->
            tag 50uy
            writeString w (stableTypeName ht)
            let b = h v
            if isNull b then raise (Unencodable t)
            writeLen w b.Length
            w.Write b
        // Arrays of common primitives, without boxing each item: the same bytes as the general case below.
        | (:? (int[]) as a), None when hashers.IsEmpty -> primitives a (fun x -> w.Write 6uy; w.Write x)
        | (:? (int64[]) as a), None when hashers.IsEmpty -> primitives a (fun x -> w.Write 8uy; w.Write x)
        | (:? (double[]) as a), None when hashers.IsEmpty ->
            primitives a (fun x -> w.Write 11uy; w.Write(BitConverter.DoubleToInt64Bits x))
        | (:? (string[]) as a), None when hashers.IsEmpty ->
            primitives a (fun x -> if isNull x then w.Write 0uy else (w.Write 14uy; writeString w x))
        | _, None ->
            match v with
            | :? bool as x -> tag 1uy; w.Write x
            | :? sbyte as x -> tag 2uy; w.Write x
            | :? byte as x -> tag 3uy; w.Write x
            | :? int16 as x -> tag 4uy; w.Write x
            | :? uint16 as x -> tag 5uy; w.Write x
            | :? int32 as x -> tag 6uy; w.Write x
            | :? uint32 as x -> tag 7uy; w.Write x
            | :? int64 as x -> tag 8uy; w.Write x
            | :? uint64 as x -> tag 9uy; w.Write x
            | :? single as x -> tag 10uy; w.Write(BitConverter.SingleToInt32Bits x)
            | :? double as x -> tag 11uy; w.Write(BitConverter.DoubleToInt64Bits x)
            | :? decimal as x -> tag 12uy; w.Write x
            | :? char as x -> tag 13uy; w.Write(uint16 x)
            | :? string as x -> tag 14uy; writeString w x
            | :? Numerics.BigInteger as x ->
                tag 15uy
                let b = x.ToByteArray()
                writeLen w b.Length
                w.Write b
            | :? DateTime as x -> tag 16uy; w.Write x.Ticks; w.Write(byte x.Kind)
            | :? DateTimeOffset as x -> tag 17uy; w.Write x.Ticks; w.Write(int16 x.Offset.TotalMinutes)
            | :? TimeSpan as x -> tag 18uy; w.Write x.Ticks
            | :? Guid as x -> tag 19uy; w.Write(x.ToByteArray())
            | :? (byte[]) as x -> tag 20uy; writeLen w x.Length; w.Write x
            | :? Parsl.Data.File as f -> tag 40uy; writeString w f.Url
            | _ when t.IsEnum ->
                tag 21uy
                writeString w (stableTypeName t)
                encodeInto hashers w (Convert.ChangeType(v, Enum.GetUnderlyingType t))
            | _ when FSharpType.IsTuple t ->
                tag 31uy
                let fields = FSharpValue.GetTupleFields v
                writeLen w fields.Length
                for f in fields do
                    encodeInto hashers w f
            | _ when isGenericOf typedefof<Set<int>> t || (findInterface typedefof<ISet<int>> t).IsSome
                     || (findInterface typedefof<IReadOnlySet<int>> t).IsSome ->
                tag 33uy
                writeSorted (seq { for x in (v :?> IEnumerable) -> nested x })
            | _ when (findInterface typedefof<IDictionary<int, int>> t).IsSome
                     || (findInterface typedefof<IReadOnlyDictionary<int, int>> t).IsSome ->
                tag 32uy
                let mutable props: Reflection.PropertyInfo * Reflection.PropertyInfo = null, null
                let entries =
                    seq {
                        for kv in (v :?> IEnumerable) do
                            if isNull (fst props) then
                                let kt = kv.GetType()
                                props <- kt.GetProperty "Key", kt.GetProperty "Value"
                            let k = (fst props).GetValue kv
                            let x = (snd props).GetValue kv
                            let kb = nested k
                            yield kb, nested x
                    }
                    |> Array.ofSeq
                Array.sortInPlaceWith (fun (a, _) (b, _) -> lexCompare a b) entries
                writeLen w entries.Length
                for kb, xb in entries do
                    writeLen w kb.Length
                    w.Write kb
                    writeLen w xb.Length
                    w.Write xb
            | :? IDictionary as d ->
                tag 32uy
                let entries =
                    [| for e in d |> Seq.cast<DictionaryEntry> -> nested e.Key, nested e.Value |]
                Array.sortInPlaceWith (fun (a, _) (b, _) -> lexCompare a b) entries
                writeLen w entries.Length
                for kb, xb in entries do
                    writeLen w kb.Length
                    w.Write kb
                    writeLen w xb.Length
                    w.Write xb
            | _ when FSharpType.IsRecord(t, true) ->
                tag 34uy
                writeString w (stableTypeName t)
                let fields = FSharpValue.GetRecordFields(v, true)
                writeLen w fields.Length
                for f in fields do
                    encodeInto hashers w f
            | _ when FSharpType.IsUnion(t, true) && not (isGenericOf typedefof<list<int>> t) ->
                tag 35uy
                let case, fields = FSharpValue.GetUnionFields(v, t, true)
                writeString w (stableTypeName case.DeclaringType)
                writeLen w case.Tag
                writeLen w fields.Length
                for f in fields do
                    encodeInto hashers w f
            | :? IEnumerable as xs when isMaterialized t ->
                tag 30uy
                let items = [| for x in xs -> x |]
                writeLen w items.Length
                for x in items do
                    encodeInto hashers w x
            | _ -> raise (Unencodable t)

    /// The canonical bytes of a value, or the type that has no encoding.
    let encode (hashers: (Type * MemoHasher) list) (value: obj) : Result<byte[], Type> =
        use ms = new MemoryStream()
        use w = new BinaryWriter(ms)
        try
            encodeInto hashers 0 w value
            w.Flush()
            Ok(ms.ToArray())
        with Unencodable t ->
            Result.Error t

    /// The memo key of a call (Parsl's `make_hash`): the encoding version, the app's name and identity, and
    /// every argument not ignored (ignored positions are marked, so positions still line up). Errors name
    /// the argument that has no encoding.
    let key (hashers: (Type * MemoHasher) list) (spec: MemoSpec) (args: obj[]) : Result<MemoKey, MemoizationError> =
        use ms = new MemoryStream()
        use w = new BinaryWriter(ms)
        writeString w EncodingVersion
        writeString w spec.AppName
        writeString w spec.Identity
        writeLen w args.Length
        let mutable failure = None
        for i in 0 .. args.Length - 1 do
            if failure.IsNone then
                if i < spec.Ignored.Length && spec.Ignored[i] then w.Write 255uy
                else
                    match encode hashers args[i] with
                    | Ok b ->
                        writeLen w b.Length
                        w.Write b
                    | Result.Error t ->
                        let name = if i < spec.ArgNames.Length then sprintf " ('%s')" spec.ArgNames[i] else ""
                        failure <-
                            Some(
                                MemoizationError(
                                    spec.AppName,
                                    sprintf "argument %d%s" (i + 1) name,
                                    (if t = args[i].GetType() then stableTypeName t
                                     else sprintf "%s (inside a %s)" (stableTypeName t) (stableTypeName (args[i].GetType()))))
                            )
        match failure with
        | Some e -> Result.Error e
        | None ->
            w.Flush()
            Ok(MemoKey(Security.Cryptography.SHA256.HashData(ms.ToArray())))
