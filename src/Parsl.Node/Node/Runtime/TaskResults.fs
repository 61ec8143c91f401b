namespace Parsl.Node.Runtime

open System
open System.Collections.Concurrent
open System.Reflection
open System.Threading.Tasks

/// What a finished `Task` (an async app body's result, a future's task) holds, and the exception a user raised
/// once reflection and task machinery have wrapped it. One place for the executors, the staging wrapper, the
/// endpoint daemon and the future resolver. It uses nothing but the base library, so that node-side code may
/// share it wherever it lives.
[<RequireQualifiedAccess>]
module internal TaskResults =
    /// The exception the body raised: `MethodInfo.Invoke` wraps it in a `TargetInvocationException`, a faulted Task
    /// in an `AggregateException` of one.
    let rec unwrap (e: exn) : exn =
        match e with
        | :? TargetInvocationException as t when not (isNull t.InnerException) -> unwrap t.InnerException
        | :? AggregateException as a when a.InnerExceptions.Count = 1 -> unwrap a.InnerException
        | e -> e

    /// Reads `Task<'T>.Result` without reflection once instantiated for a type.
    type private Reader =
        static member Read<'T>(t: Task) : obj = box (t :?> Task<'T>).Result

    let private readers = ConcurrentDictionary<Type, Func<Task, obj>>()

    /// The `T` of the `Task<T>` this type is or derives from (async methods return subclasses of `Task<T>`).
    let rec resultType (t: Type) : Type option =
        if isNull t then None
        elif t.IsGenericType && t.GetGenericTypeDefinition() = typedefof<Task<_>> then Some(t.GetGenericArguments()[0])
        else resultType t.BaseType

    let private makeReader (ty: Type) =
        match resultType ty with
        // A non-generic `Task` from an async method is a `Task<VoidTaskResult>` underneath: its result is nothing.
        | Some r when r.FullName <> "System.Threading.Tasks.VoidTaskResult" ->
            typeof<Reader>.GetMethod("Read", BindingFlags.Static ||| BindingFlags.Public ||| BindingFlags.NonPublic).MakeGenericMethod(r).CreateDelegate<Func<Task, obj>>()
        | _ -> Func<Task, obj>(fun _ -> null)

    let private makeReaderFunc = Func<Type, Func<Task, obj>>(makeReader)

    /// The value of a task that completed successfully: its `Result`, or null for a plain `Task`. Raises the task's
    /// exception (wrapped) if it failed.
    let value (t: Task) : obj = readers.GetOrAdd(t.GetType(), makeReaderFunc).Invoke t

    /// Awaits a body's result when it is a Task, giving its value (null for a plain Task); any other value as it is.
    let await (v: obj) : Task<obj> =
        match v with
        | :? Task as t ->
            task {
                do! t
                return value t
            }
        | v -> Task.FromResult v
