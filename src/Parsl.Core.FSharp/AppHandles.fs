namespace Parsl

open System
open System.Collections.Generic
open System.Threading
open System.Threading.Tasks
open Parsl.Core
open Parsl.Executors
open Parsl.Data

/// A Task returned by a join body, boxed so that the executor hands it to the kernel as the join's inner
/// future instead of awaiting it on its own thread (the executor awaits any Task a body returns).
[<Sealed>]
type internal JoinTask(task: Task) =
    member _.Task = task

/// One app, defined once and called many times with argument slots: what the C# façade and `parsl { }`
/// are built on. Arguments arrive boxed in slots, so one type serves every arity.
[<Sealed>]
type internal AppHandle<'R>
    (dfk: DataFlowKernel, name: string, kind: AppKind, opts: AppOptions, build: TaskId -> obj[] -> TaskBody,
     joinShape: obj -> (obj[] * (obj[] -> obj)) option, memo: MemoSpec option, remake: AppOptions -> AppHandle<'R>) =
    /// The app's name.
    member _.Name = name
    /// The kernel the app submits to.
    member _.Kernel = dfk
    /// The app's options.
    member _.Options = opts
    /// Submits one call; the slots are the arguments in order.
    member _.Call(slots: ArgSlot[]) : AppFuture<'R> = App.submitWith<'R> dfk name memo kind opts slots build joinShape

    /// The same app with the options that `overrides` sets (a name, executors, resources, streams, walltime,
    /// outputs) replacing its own: Parsl's per-call keyword arguments, for the calls made through the copy.
    member _.With(overrides: AppOptions) : AppHandle<'R> =
        let pick (o: 'a option) (d: 'a option) = match o with Some _ -> o | None -> d
        let merged =
            { opts with
                Name = pick overrides.Name opts.Name
                Executors = if overrides.Executors.IsEmpty then opts.Executors else overrides.Executors
                Resources = if overrides.Resources.IsEmpty then opts.Resources else overrides.Resources
                Stdout = pick overrides.Stdout opts.Stdout
                Stderr = pick overrides.Stderr opts.Stderr
                Walltime = pick overrides.Walltime opts.Walltime
                Outputs = if overrides.Outputs.IsEmpty then opts.Outputs else overrides.Outputs
                Cache = overrides.Cache || opts.Cache
                IgnoreForCache = if overrides.IgnoreForCache.IsEmpty then opts.IgnoreForCache else overrides.IgnoreForCache }
        dfk.CheckLabels(defaultArg merged.Name name, merged.Executors)
        remake merged

/// Builds `AppHandle`s from delegates over boxed argument arrays.
[<AbstractClass; Sealed>]
type internal AppHandles private () =
    /// A name for a delegate: the method's name for a method group or a local function, else "app"
    /// (compiler-generated lambda names such as `<Main>b__0_0` mean nothing to a user).
    static member NameOf(del: Delegate) =
        let m = del.Method.Name
        let local = m.IndexOf "g__"
        if local >= 0 then
            let rest = m.Substring(local + 3)
            match rest.IndexOf '|' with
            | -1 -> rest
            | i -> rest.Substring(0, i)
        elif m.Contains "<" || m.Contains "@" || m = "Invoke" then "app"
        else m

    /// Options from parts a caller without F# types can supply; null/empty means "not given".
    static member Options
        (name: string, executors: string[], resources: IReadOnlyDictionary<string, obj>, stdout: StdSpec,
         stderr: StdSpec, walltime: Nullable<TimeSpan>, outputs: string[], cache: bool, ignoreForCache: string[])
        : AppOptions =
        { AppOptions.defaults with
            Name = Option.ofObj name
            Executors = if isNull executors then [] else List.ofArray executors
            Resources =
              if isNull resources then Map.empty
              else resources |> Seq.map (fun (KeyValue(k, v)) -> k, v) |> Map.ofSeq
            Stdout = Option.ofObj stdout
            Stderr = Option.ofObj stderr
            Walltime = Option.ofNullable walltime
            Outputs = if isNull outputs then [] else List.ofArray outputs
            Cache = cache
            IgnoreForCache = if isNull ignoreForCache then [] else List.ofArray ignoreForCache }

    /// How to memoize an app's calls: its parameters, less the trailing CancellationToken the executor supplies.
    static member private Memo(o: AppOptions, name: string, del: Delegate, takesToken: bool) =
        let arity = del.Method.GetParameters().Length - (if takesToken then 1 else 0)
        App.memoSpec o name del arity

    static member private Prepare(dfk: DataFlowKernel, opts: AppOptions, del: Delegate) =
        if isNull (box dfk) then nullArg "dfk"
        if isNull del then nullArg "function"
        let name = defaultArg opts.Name (AppHandles.NameOf del)
        dfk.CheckLabels(name, opts.Executors)
        App.checkWalltime name opts
        { opts with Name = Some name }, name

    /// A function app. `invoke` calls the delegate with the resolved arguments (and the try's token when
    /// `takesToken`); it may return a Task, which the executor awaits.
    static member Function<'R>
        (dfk: DataFlowKernel, opts: AppOptions, del: Delegate, takesToken: bool, invoke: Func<obj[], CancellationToken, obj>)
        : AppHandle<'R> =
        if isNull invoke then nullArg "invoke"
        let opts, _ = AppHandles.Prepare(dfk, opts, del)
        let rec make (o: AppOptions) =
            let name = o.Name.Value
            let build = App.functionCall name del takesToken (fun a ct -> invoke.Invoke(a, ct))
            AppHandle<'R>(dfk, name, FunctionApp, o, build, (fun _ -> None), AppHandles.Memo(o, name, del, takesToken), make)
        make opts

    /// A shell app: `command` builds the command line from the resolved arguments, on the client.
    static member Shell(dfk: DataFlowKernel, opts: AppOptions, del: Delegate, command: Func<obj[], string>) : AppHandle<int> =
        if isNull command then nullArg "command"
        let opts, _ = AppHandles.Prepare(dfk, opts, del)
        let rec make (o: AppOptions) =
            let name = o.Name.Value
            let build = App.shellCall dfk name o (fun args -> command.Invoke args)
            AppHandle<int>(dfk, name, ShellApp, o, build, (fun _ -> None), AppHandles.Memo(o, name, del, false), make)
        make opts

    static member private JoinBody(name, del, invoke: Func<obj[], obj>) =
        App.functionCall name del false (fun a _ ->
            match invoke.Invoke a with
            | :? AppFuture as f -> box f
            | :? Task as t -> box (JoinTask t)
            | v -> v)

    static member private Inner(v: obj) : obj option =
        match v with
        | :? AppFuture -> Some v
        | :? JoinTask as j -> Some(box j.Task)
        | _ -> None

    /// A join app whose body returns one future: an `AppFuture<'R>` or a `Task<'R>`. The app's future completes
    /// with its result; if it fails, the app fails with `JoinError`.
    static member Join<'R>(dfk: DataFlowKernel, opts: AppOptions, del: Delegate, invoke: Func<obj[], obj>) : AppHandle<'R> =
        if isNull invoke then nullArg "invoke"
        let opts, _ = AppHandles.Prepare(dfk, { opts with Executors = [] }, del)
        let shape (v: obj) =
            AppHandles.Inner v |> Option.map (fun f -> [| f |], fun (rs: obj[]) -> rs[0])
        let rec make (o: AppOptions) =
            // Join bodies always run on the internal executor.
            let o = { o with Executors = [] }
            AppHandle<'R>(dfk, o.Name.Value, JoinApp, o, AppHandles.JoinBody(o.Name.Value, del, invoke), shape, AppHandles.Memo(o, o.Name.Value, del, false), make)
        make opts

    /// A join app whose body returns several futures (`AppFuture<'R>` or `Task<'R>`); the app's future
    /// completes with their results, in order.
    static member JoinMany<'R>(dfk: DataFlowKernel, opts: AppOptions, del: Delegate, invoke: Func<obj[], seq<obj>>) : AppHandle<'R[]> =
        if isNull invoke then nullArg "invoke"
        let opts, _ = AppHandles.Prepare(dfk, { opts with Executors = [] }, del)
        let body name =
            App.functionCall name del false (fun a _ ->
                match invoke.Invoke a with
                | null -> null
                | fs -> box (fs |> Seq.map (fun f -> match f with :? Task as t -> box (JoinTask t) | f -> f) |> Array.ofSeq))
        let shape (v: obj) =
            match v with
            | :? (obj[]) as fs ->
                let inner = fs |> Array.map AppHandles.Inner
                if inner |> Array.forall Option.isSome then
                    Some(inner |> Array.map Option.get, fun (rs: obj[]) -> box (rs |> Array.map unbox<'R>))
                else None
            | _ -> None
        let rec make (o: AppOptions) =
            let o = { o with Executors = [] }
            AppHandle<'R[]>(dfk, o.Name.Value, JoinApp, o, body o.Name.Value, shape, AppHandles.Memo(o, o.Name.Value, del, false), make)
        make opts

/// Builds a `Config` from parts a caller without F# types can supply (the C# façade's options).
[<AbstractClass; Sealed>]
type internal ConfigParts private () =
    /// `exitMode`: 0 cleanup, 1 wait, 2 skip. A null `retryHandler` means the default cost of 1 per failure.
    static member Create
        (executors: IExecutor[], retries: int, retryHandler: Func<exn, TaskInfo, float>, runDir: string, exitMode: int,
         deepResolver: bool, initializeLogging: bool, logLevel: Serilog.Events.LogEventLevel, internalTasksMaxThreads: int,
         maxTasksInFlight: int)
        : Config =
        // From the defaults, so that options the façade does not know yet keep their default values.
        { Config.defaults with
            Executors = List.ofArray executors
            Retries = retries
            RetryHandler =
              if isNull retryHandler then None
              else Some(fun e info -> retryHandler.Invoke(e, info))
            RunDir = runDir
            ExitMode = ConfigParts.ExitMode exitMode
            DependencyResolver = if deepResolver then Deep else Shallow
            InitializeLogging = initializeLogging
            LogLevel = logLevel
            InternalTasksMaxThreads = internalTasksMaxThreads
            MaxTasksInFlight = maxTasksInFlight }

    /// The configuration with `HandleSignals` set.
    static member WithHandleSignals(config: Config, handle: bool) : Config = { config with HandleSignals = handle }

    /// An exit mode from its number (0 cleanup, 1 wait, 2 skip).
    static member ExitMode(mode: int) =
        match mode with
        | 1 -> Wait
        | 2 -> Skip
        | _ -> Cleanup

    /// The rest of a configuration from parts a caller without F# types can supply: `checkpointMode` 0 for none, then
    /// 1 task exit, 2 periodic, 3 DFK exit, 4 manual;
    /// `checkpointFiles` null for the default, `staging` null or empty for Parsl's default providers, `stagingDir`
    /// null for `data/` in the run directory.
    static member Extend
        (c: Config, appCache: bool, checkpointMode: int, checkpointPeriod: Nullable<TimeSpan>,
         checkpointFiles: string[], memoHashers: KeyValuePair<Type, Func<obj, byte[]>>[], staging: StagingProvider[],
         stagingDir: string, logSinks: Serilog.Core.ILogEventSink[])
        : Config =
        { c with
            AppCache = appCache
            CheckpointMode =
              match checkpointMode with
              | 1 -> Some TaskExit
              | 2 -> Some Periodic
              | 3 -> Some DfkExit
              | 4 -> Some Manual
              | _ -> None
            CheckpointPeriod = Option.ofNullable checkpointPeriod
            CheckpointFiles = if isNull checkpointFiles then None else Some(List.ofArray checkpointFiles)
            MemoHashers =
              if isNull memoHashers then []
              else
                  [ for kv in memoHashers ->
                        kv.Key, (if isNull kv.Value then Unchecked.defaultof<MemoHasher> else (fun v -> kv.Value.Invoke v)) ]
            Staging = if isNull staging || staging.Length = 0 then StagingProvider.defaults else List.ofArray staging
            StagingDir = Option.ofObj stagingDir
            LogSinks = if isNull logSinks then [] else List.ofArray logSinks }
