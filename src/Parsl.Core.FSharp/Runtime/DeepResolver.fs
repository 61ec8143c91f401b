namespace Parsl.Runtime

open System
open System.Collections.Concurrent
open System.Reflection
open System.Threading.Tasks
open Parsl
open Parsl.Node.Runtime

/// Results and exceptions of futures of either kind (AppFuture, Task).
module internal FutureValue =
    /// The future as a Task.
    let asTask (f: obj) : Task =
        match f with
        | :? AppFuture as a -> a.AsTask
        | :? Task as t -> t
        | _ -> invalidArg "f" "not a future"

    /// Is this object a future?
    let isFuture (f: obj) =
        match f with
        | :? AppFuture
        | :? Task -> true
        | _ -> false

    /// A completed future's result (null for a non-generic `Task`); anything else is returned as it is.
    let result (f: obj) : obj =
        match f with
        | :? AppFuture as a -> a.ResultObject
        | :? Task as t -> TaskResults.value t
        | _ -> f

    /// A completed future's exception, or null if it succeeded.
    let error (f: obj) : exn =
        match f with
        | :? AppFuture as a -> a.Exception
        | :? Task as t ->
            if t.IsCanceled then OperationCanceledException("The awaited task was cancelled") :> exn
            elif t.IsFaulted then
                if t.Exception.InnerExceptions.Count = 1 then t.Exception.InnerException else t.Exception :> exn
            else null
        | _ -> null

namespace Parsl.Runtime

open System
open System.Collections
open System.Collections.Concurrent
open System.Collections.Generic
open System.Reflection
open System.Threading.Tasks
open Microsoft.FSharp.Reflection
open Parsl
open Parsl.Node.Runtime

/// Typed readers and builders of containers, instantiated by reflection once per type and cached as delegates.
/// A builder takes the unwrapped children and the original container (whose comparer it keeps when the
/// element type did not change).
type internal DeepContainers =
    /// The original's comparer if it compares the same type (so a case-insensitive dictionary stays one when
    /// only its values were futures); null (the default comparer) otherwise.
    static member ComparerOf<'K>(original: obj) : IEqualityComparer<'K> =
        match original.GetType().GetProperty("Comparer") with
        | null -> null
        | p ->
            match p.GetValue original with
            | :? IEqualityComparer<'K> as c -> c
            | _ -> null
    static member ReadArray<'T>(v: obj) : obj[] = Array.map box (v :?> 'T[])
    static member ReadKeyValue<'K, 'V>(v: obj) : obj[] =
        let kv = unbox<KeyValuePair<'K, 'V>> v
        [| box kv.Key; box kv.Value |]
    static member BuildArray<'T>(items: obj[], _original: obj) : obj = box (Array.map unbox<'T> items)
    static member BuildList<'T>(items: obj[], _original: obj) : obj =
        let l = List<'T>(items.Length)
        for x in items do
            l.Add(unbox<'T> x)
        box l
    static member BuildHashSet<'T>(items: obj[], original: obj) : obj =
        let comparer = DeepContainers.ComparerOf<'T> original
        let s = HashSet<'T>(comparer)
        for x in items do
            s.Add(unbox<'T> x) |> ignore
        box s
    static member BuildFSharpList<'T>(items: obj[], _original: obj) : obj = box (List.ofArray (Array.map unbox<'T> items))
    static member BuildFSharpSet<'T when 'T: comparison>(items: obj[], _original: obj) : obj =
        box (Set.ofArray (Array.map unbox<'T> items))
    static member BuildDictionary<'K, 'V>(items: obj[], original: obj) : obj =
        let comparer = DeepContainers.ComparerOf<'K> original
        let d = Dictionary<'K, 'V>(items.Length, comparer)
        for x in items do
            let kv = unbox<KeyValuePair<'K, 'V>> x
            d[kv.Key] <- kv.Value
        box d
    static member BuildFSharpMap<'K, 'V when 'K: comparison>(items: obj[], _original: obj) : obj =
        items
        |> Array.map (fun x ->
            let kv = unbox<KeyValuePair<'K, 'V>> x
            kv.Key, kv.Value)
        |> Map.ofArray
        |> box
    static member BuildKeyValue<'K, 'V>(items: obj[], _original: obj) : obj =
        box (KeyValuePair<'K, 'V>(unbox<'K> items[0], unbox<'V> items[1]))

/// Finds futures inside collections and tuples, and rebuilds them with results (Parsl's DEEP_DEPENDENCY_RESOLVER).
///
/// Containers walked, at any nesting: arrays, `List<T>`, `HashSet<T>`, `Dictionary<K,V>` (keys and values),
/// F# lists, sets and maps (keys and values), tuples and struct tuples, `KeyValuePair<K,V>`. A future is an
/// `AppFuture` or a `Task`; the walk does not descend into futures. Rebuilt containers have their element
/// types substituted (`AppFuture<int>[]` becomes `int[]`, `List<Task<string>>` becomes `List<string>`);
/// a value without futures comes back as the same object. What to do with each type is worked out once and
/// cached, so a value whose type cannot hold futures (`int[]`, `string list`) costs one dictionary lookup.
[<RequireQualifiedAccess>]
module DeepResolver =
    type private Plan =
        /// Values of this type never hold futures.
        | Leaf
        | Future
        /// Children, and how to rebuild from unwrapped children; `sameType` when the rebuilt type is the original.
        | Container of read: Func<obj, obj[]> * build: Func<obj[], obj, obj> * sameType: bool

    let private isFutureType (t: Type) =
        typeof<AppFuture>.IsAssignableFrom t || typeof<Task>.IsAssignableFrom t

    let private isSzArray (t: Type) = t.IsArray && t = t.GetElementType().MakeArrayType()

    let private collections =
        [| typedefof<List<_>>; typedefof<HashSet<_>>; typedefof<list<_>>; typedefof<Set<_>> |]

    let private dictionaries = [| typedefof<Dictionary<_, _>>; typedefof<Map<_, _>> |]

    /// Generic interfaces whose type arguments are substituted in a rebuilt container's element type, so a
    /// `List<int>` built from a `List<AppFuture<int>>` still fits an `IList<AppFuture<int>>` slot's result type.
    let private interfaces =
        [| typedefof<IEnumerable<_>>; typedefof<ICollection<_>>; typedefof<IList<_>>; typedefof<IReadOnlyCollection<_>>
           typedefof<IReadOnlyList<_>>; typedefof<ISet<_>>; typedefof<IReadOnlySet<_>>; typedefof<IDictionary<_, _>>
           typedefof<IReadOnlyDictionary<_, _>> |]

    /// The static types of a container's children, or None if the type is not a container we walk.
    let rec private elements (t: Type) : Type[] option =
        if isSzArray t then Some [| t.GetElementType() |]
        elif FSharpType.IsTuple t then Some(FSharpType.GetTupleElements t)
        elif t.IsGenericType then
            let def = t.GetGenericTypeDefinition()
            let args = t.GetGenericArguments()
            if Array.contains def collections then Some args
            elif Array.contains def dictionaries then Some [| typedefof<KeyValuePair<_, _>>.MakeGenericType args |]
            elif def = typedefof<KeyValuePair<_, _>> || Array.contains def interfaces then Some args
            else None
        else None

    /// May a value in a slot of this static type hold a future? A slot typed `obj`, an interface or an abstract
    /// class may hold anything; a sealed type or a struct that is no container never does.
    let rec private mayHold (t: Type) =
        if isFutureType t then true
        else
            match elements t with
            | Some children -> Array.exists mayHold children
            | None -> t.IsInterface || t.IsAbstract || t.IsAssignableFrom typeof<Task> || t.IsAssignableFrom typeof<AppFuture>

    /// The type a slot of this static type has once its futures are replaced by their results.
    let rec private resultType (t: Type) : Type =
        if typeof<AppFuture>.IsAssignableFrom t then
            if t.IsGenericType then t.GetGenericArguments()[0] else typeof<obj>
        elif typeof<Task>.IsAssignableFrom t then
            match TaskResults.resultType t with
            | Some r -> r
            | None -> typeof<obj>
        elif isSzArray t then (resultType (t.GetElementType())).MakeArrayType()
        elif FSharpType.IsTuple t then
            let items = FSharpType.GetTupleElements t |> Array.map resultType
            if t.IsValueType then FSharpType.MakeStructTupleType(typeof<ValueTuple>.Assembly, items)
            else FSharpType.MakeTupleType items
        elif t.IsGenericType then
            let def = t.GetGenericTypeDefinition()
            if Array.contains def collections || Array.contains def dictionaries || def = typedefof<KeyValuePair<_, _>> || Array.contains def interfaces then
                def.MakeGenericType(t.GetGenericArguments() |> Array.map resultType)
            else t
        else t

    let private method (name: string) (args: Type[]) =
        typeof<DeepContainers>.GetMethod(name, BindingFlags.Static ||| BindingFlags.Public ||| BindingFlags.NonPublic).MakeGenericMethod args

    let private reader name args = (method name args).CreateDelegate<Func<obj, obj[]>>()
    let private builder name args = (method name args).CreateDelegate<Func<obj[], obj, obj>>()

    let private readSeq = Func<obj, obj[]>(fun v -> [| for x in (v :?> IEnumerable) -> x |])

    /// How to read a concrete container type and build its result type; None for anything else.
    let private containerOps (t: Type) (r: Type) : (Func<obj, obj[]> * Func<obj[], obj, obj>) option =
        if isSzArray t then Some(reader "ReadArray" [| t.GetElementType() |], builder "BuildArray" [| r.GetElementType() |])
        elif FSharpType.IsTuple t then
            let read = FSharpValue.PreComputeTupleReader t
            let make = FSharpValue.PreComputeTupleConstructor r
            Some(Func<obj, obj[]>(read), Func<obj[], obj, obj>(fun items _ -> make items))
        elif t.IsGenericType then
            let def = t.GetGenericTypeDefinition()
            let rargs = r.GetGenericArguments()
            if def = typedefof<List<_>> then Some(readSeq, builder "BuildList" rargs)
            elif def = typedefof<HashSet<_>> then Some(readSeq, builder "BuildHashSet" rargs)
            elif def = typedefof<list<_>> then Some(readSeq, builder "BuildFSharpList" rargs)
            elif def = typedefof<Set<_>> then Some(readSeq, builder "BuildFSharpSet" rargs)
            elif def = typedefof<Dictionary<_, _>> then Some(readSeq, builder "BuildDictionary" rargs)
            elif def = typedefof<Map<_, _>> then Some(readSeq, builder "BuildFSharpMap" rargs)
            elif def = typedefof<KeyValuePair<_, _>> then
                Some(reader "ReadKeyValue" (t.GetGenericArguments()), builder "BuildKeyValue" rargs)
            else None
        else None

    let private plans = ConcurrentDictionary<Type, Plan>()

    let private makePlan (t: Type) : Plan =
        if isFutureType t then Future
        else
            match elements t with
            | Some children when not t.IsInterface && Array.exists mayHold children ->
                let r = resultType t
                match containerOps t r with
                | Some(read, build) -> Container(read, build, (r = t))
                | None -> Leaf
            | _ -> Leaf

    // One delegate, not one per lookup.
    let private makePlanFunc = Func<Type, Plan>(makePlan)

    let private planOf (v: obj) = plans.GetOrAdd(v.GetType(), makePlanFunc)

    let private cycle (v: obj) =
        ArgumentException(
            sprintf "An argument contains itself (a %s inside itself): the deep dependency resolver cannot walk cycles; pass an acyclic value or use DependencyResolver.Shallow"
                (v.GetType().Name),
            "value"
        )

    let private gatherWalk (value: obj) : obj list =
        let found = List<obj>()
        let path = HashSet<obj>(ReferenceEqualityComparer.Instance)
        let rec walk (v: obj) =
            if not (isNull v) then
                match planOf v with
                | Leaf -> ()
                | Future -> found.Add v
                | Container(read, _, _) ->
                    if not (path.Add v) then raise (cycle v)
                    for child in read.Invoke v do
                        walk child
                    path.Remove v |> ignore
        walk value
        List.ofSeq found

    let private unwrapWalk (value: obj) : obj =
        let path = HashSet<obj>(ReferenceEqualityComparer.Instance)
        // Returns the value and whether it differs from the input (boxed struct children read afresh are
        // not reference-equal to anything, so "changed" cannot be judged by reference).
        let rec go (v: obj) : struct (obj * bool) =
            if isNull v then struct (v, false)
            else
                match planOf v with
                | Leaf -> struct (v, false)
                | Future -> struct (FutureValue.result v, true)
                | Container(read, build, sameType) ->
                    if not (path.Add v) then raise (cycle v)
                    let children = read.Invoke v
                    let mutable changed = false
                    let results = Array.zeroCreate children.Length
                    for i in 0 .. children.Length - 1 do
                        let struct (r, c) = go children[i]
                        results[i] <- r
                        changed <- changed || c
                    path.Remove v |> ignore
                    if not changed && sameType then struct (v, false)
                    else struct (build.Invoke(results, v), true)
        let struct (r, _) = go value
        r

    /// Every future (`AppFuture` or `Task`) inside the value, at any depth, in order; futures are not walked into.
    /// Raises `ArgumentException` if a container contains itself.
    let gather (value: obj) : obj list =
        // Most arguments are plain values: answer those without allocating a walk.
        if isNull value then []
        else
            match planOf value with
            | Leaf -> []
            | Future -> [ value ]
            | Container _ -> gatherWalk value

    /// The value with every future replaced by its result (the futures must be complete), containers rebuilt
    /// with their element types substituted. A value without futures comes back as the same object.
    let unwrap (value: obj) : obj =
        if isNull value then value
        else
            match planOf value with
            | Leaf -> value
            | Future -> FutureValue.result value
            | Container _ -> unwrapWalk value
