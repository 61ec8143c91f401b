namespace Parsl

open System
open System.Collections.Generic
open System.IO
open System.Threading
open System.Threading.Tasks
open Parsl.Core
open Parsl.Executors
open Parsl.Runtime
open Parsl.Node
open Parsl.Data

/// An argument of an app call: a value, a future whose result is the value (a dependency), or several
/// futures gathered into an array. C# converts values, `AppFuture<T>` and `Task<T>` implicitly.
[<Sealed>]
type Arg<'T> internal (slot: ArgSlot) =
    member internal _.Slot = slot
    /// A plain value.
    static member op_Implicit(value: 'T) : Arg<'T> = Arg<'T>(Plain(box value))
    /// A future: the call waits for it, and gets its result.
    static member op_Implicit(future: AppFuture<'T>) : Arg<'T> = Arg<'T>(Future future)
    /// A task: the call waits for it, and gets its result.
    static member op_Implicit(task: Task<'T>) : Arg<'T> = Arg<'T>(Future task)

/// Builds app arguments.
[<RequireQualifiedAccess; CompilationRepresentation(CompilationRepresentationFlags.ModuleSuffix)>]
module Arg =
    /// A plain value.
    let value (v: 'T) = Arg<'T>(Plain(box v))
    /// The result of a future: the call depends on it.
    let future (f: AppFuture<'T>) =
        if isNull f then nullArg "f"
        Arg<'T>(Future f)
    /// The result of a task: the call depends on it.
    let task (t: Task<'T>) =
        if isNull t then nullArg "t"
        Arg<'T>(Future t)
    /// The results of several futures, in order, as an array (Parsl's `inputs=[...]`).
    let all (futures: seq<AppFuture<'T>>) : Arg<'T[]> =
        let fs = futures |> Seq.map box |> Array.ofSeq
        Arg<'T[]>(Gather(fs, fun rs -> box (rs |> Array.map unbox<'T>)))
    /// A file the app reads: staged in first when it is remote (`http`, `ftp`, `zip`, ...); the app gets it
    /// with `LocalPath` set.
    let file (f: Parsl.Data.File) : Arg<Parsl.Data.File> =
        if isNull (box f) then nullArg "f"
        Arg<Parsl.Data.File>(Plain(box f))
    /// A file the call writes (Parsl's `outputs=[...]`): the call's future gets a `DataFuture` for it in
    /// `Outputs`, completed once the file is written and staged out. The app gets it with `LocalPath` set
    /// when it is staged (write to `Filepath`).
    let output (f: Parsl.Data.File) : Arg<Parsl.Data.File> =
        if isNull (box f) then nullArg "f"
        Arg<Parsl.Data.File>(Plain(box { Output = f }))
    /// A file another call produces: the call depends on it, and gets the file, staged in when needed.
    let data (d: DataFuture) : Arg<Parsl.Data.File> =
        if isNull d then nullArg "d"
        Arg<Parsl.Data.File>(Plain(box { Data = [| d |]; Single = true }))
    /// Several files other calls produce, in order (Parsl's `inputs=[...]` of DataFutures).
    let files (ds: seq<DataFuture>) : Arg<Parsl.Data.File[]> =
        let ds = Array.ofSeq ds
        if ds |> Array.exists isNull then invalidArg "ds" "contains a null DataFuture"
        Arg<Parsl.Data.File[]>(Plain(box { Data = ds; Single = false }))

/// Where a shell app's stdout or stderr goes.
type StdSpec =
    /// Append to this file (Parsl's plain path).
    | Path of string
    /// Open the file with this mode: "w" truncates, "a" appends (Parsl's `(path, mode)`).
    | PathMode of string * string
    /// A file named after the task under the run directory (Parsl's `AUTO_LOGNAME`):
    /// `task_logs/NNNN/task_NNNN_<app>.stdout|stderr`.
    | Auto
    /// A `File`, truncated first and staged out like an output; the future's `Stdout`/`Stderr` is its `DataFuture`.
    | Staged of Parsl.Data.File

/// Per-app options (Parsl's decorator parameters and reserved keyword arguments).
type AppOptions =
    { /// The app's name; default: the function's name.
      Name: string option
      /// Executor labels the app may run on; empty means all (Parsl's `executors='all'`).
      Executors: string list
      /// Parsl's `parsl_resource_specification`; checked by the executor.
      Resources: Map<string, obj>
      /// Shell apps: stdout and stderr.
      Stdout: StdSpec option
      Stderr: StdSpec option
      /// After this long the try fails with `AppTimeout` (Parsl's `walltime`). Shell apps: the process group is
      /// killed. Function apps: the body's CancellationToken is cancelled; on the HighThroughputExecutor the
      /// worker running it is killed and restarted, so the work really stops; on the ThreadPoolExecutor a thread
      /// cannot be stopped, so a body that ignores its token runs on in the background (its result is dropped).
      Walltime: TimeSpan option
      /// Shell apps: files that must exist afterwards (`MissingOutputs` otherwise).
      Outputs: string list
      /// Memoize calls: a call with the same app and argument values as one that completed returns its result
      /// without running (Parsl's `cache`). Needs `Config.AppCache` (on by default). Default false.
      Cache: bool
      /// Arguments left out of the memo key, by parameter name or 0-based position (Parsl's `ignore_for_cache`).
      IgnoreForCache: string list }

/// Functions over app options.
[<RequireQualifiedAccess>]
module AppOptions =
    /// No options.
    let defaults =
        { Name = None
          Executors = []
          Resources = Map.empty
          Stdout = None
          Stderr = None
          Walltime = None
          Outputs = []
          Cache = false
          IgnoreForCache = [] }

/// Creates apps. Each app is a function returning an `AppFuture` at once; its arguments may be futures.
[<RequireQualifiedAccess>]
module App =
    /// A readable name for a function value (`square` for `let square x = ...` or `fun` bound to `square`).
    let nameOf (f: obj) =
        let t = f.GetType()
        let n = t.Name
        let n = match n.IndexOf '@' with -1 -> n | i -> n.Substring(0, i)
        if n = "" || n.StartsWith "clo" then "app" else n

    let internal resources (opts: AppOptions) : IReadOnlyDictionary<string, obj> =
        if opts.Resources.IsEmpty then Resources.empty
        else Dictionary<string, obj>(opts.Resources) :> _

    /// The parameter names of a function value (an F# function or a delegate) of `arity` arguments, where the
    /// compiler kept them.
    let private parameterNames (f: obj) (arity: int) =
        let fromInvoke =
            match f with
            | :? Delegate as d -> Some(d.Method.GetParameters() |> Array.map (fun p -> p.Name) |> Array.truncate arity)
            | _ ->
                f.GetType().GetMethods()
                |> Array.tryFind (fun m -> m.Name = "Invoke" && m.GetParameters().Length = arity && m.DeclaringType = f.GetType())
                |> Option.map (fun m -> m.GetParameters() |> Array.map (fun p -> p.Name))
        match fromInvoke with
        | Some names when names.Length <> arity -> Array.init arity (sprintf "arg%d")
        | Some names when names |> Array.forall (fun n -> not (String.IsNullOrEmpty n)) -> names
        | _ -> Array.init arity (sprintf "arg%d")

    /// The app's identity beyond its name: for an F# function, its compiled closure type; for a delegate, the
    /// method's declaring type and name. Parsl uses the function's module and name, not its code.
    let private identity (f: obj) =
        match f with
        | :? Delegate as d when not (isNull d.Method.DeclaringType) ->
            Memo.stableTypeName d.Method.DeclaringType + "::" + d.Method.Name
        | _ -> Memo.stableTypeName (f.GetType())

    /// How to memoize calls of an app of `arity` arguments made from `f` (an F# function or a delegate);
    /// None unless `opts.Cache`. Raises `ConfigurationError` for an `IgnoreForCache` entry naming no parameter.
    let internal memoSpec (opts: AppOptions) (name: string) (f: obj) (arity: int) =
        if not opts.Cache then None
        else
            let names = parameterNames f arity
            let positions =
                opts.IgnoreForCache
                |> List.map (fun entry ->
                    match Array.tryFindIndex ((=) entry) names with
                    | Some i -> i
                    | None ->
                        match Int32.TryParse entry with
                        | true, i when i >= 0 && i < arity -> i
                        | _ ->
                            raise (
                                ConfigurationError(
                                    "AppOptions.IgnoreForCache",
                                    sprintf "app '%s' has no parameter '%s'; its parameters are %s (or give 0-based positions)"
                                        name entry (String.Join(", ", names)))
                            ))
            Some
                { AppName = name
                  Identity = identity f
                  ArgNames = names
                  Ignored = Array.init arity (fun i -> List.contains i positions) }

    /// A walltime must be positive; refused when the app is made, not when a try runs.
    let internal checkWalltime (name: string) (opts: AppOptions) =
        match opts.Walltime with
        | Some w when w <= TimeSpan.Zero ->
            raise (
                ConfigurationError(
                    "AppOptions.Walltime",
                    sprintf "app '%s' has a walltime of %g s; give a positive time span, or None for no limit" name w.TotalSeconds)
            )
        | _ -> ()

    let internal prepare (dfk: DataFlowKernel) (opts: AppOptions) (f: obj) (arity: int) =
        if isNull (box dfk) then nullArg "dfk"
        if isNull f then nullArg "f"
        let name = defaultArg opts.Name (nameOf f)
        dfk.CheckLabels(name, opts.Executors)
        checkWalltime name opts
        name, memoSpec opts name f arity

    let internal functionCall name (del: Delegate) takesToken (invoke: obj[] -> CancellationToken -> obj) =
        fun (_: TaskId) (args: obj[]) ->
            Function
                { AppName = name
                  Function = del
                  Args = args
                  TakesCancellation = takesToken
                  Invoke = invoke
                  Walltime = None }

    let private noJoin = fun (_: obj) -> None

    let private stdFile (spec: StdSpec option) =
        match spec with
        | Some(Staged f) -> Some f
        | _ -> None

    /// Submits a call, with its staging, memoized when `memo` is given (see `memoSpec`).
    let internal submitWith<'R> (dfk: DataFlowKernel) (name: string) (memo: MemoSpec option) kind (opts: AppOptions) slots build joinShape =
        // A function app's walltime travels with its call (a shell app's is in its ShellCall already); a join app's
        // body only returns futures, so a limit there would mean nothing.
        let build =
            match opts.Walltime, kind with
            | Some w, FunctionApp ->
                fun id args ->
                    match build id args with
                    | Function c -> Function { c with Walltime = Some w }
                    | b -> b
            | _ -> build
        Staging.submit<'R> dfk name kind opts.Executors slots build (resources opts) joinShape memo
            (stdFile opts.Stdout, stdFile opts.Stderr)

    /// Submits a call with its staging, not memoized.
    let internal submit<'R> (dfk: DataFlowKernel) (name: string) kind (opts: AppOptions) slots build joinShape =
        submitWith<'R> dfk name None kind opts slots build joinShape

    /// A function app with options.
    let funcWith (dfk: DataFlowKernel) (opts: AppOptions) (f: 'A -> 'R) : Arg<'A> -> AppFuture<'R> =
        let app = prepare dfk opts f 1
        let name = fst app
        let del = AppDelegates.func1 f
        let build = functionCall name del false (fun a _ -> box (f (unbox<'A> a[0])))
        fun (a: Arg<'A>) -> submitWith<'R> dfk name (snd app) FunctionApp opts [| a.Slot |] build noJoin

    /// A function app: `let square = App.func dfk (fun x -> x * x)` then `square (Arg.value 3)`.
    let func dfk (f: 'A -> 'R) = funcWith dfk AppOptions.defaults f

    /// A function app of two arguments, with options.
    let func2With (dfk: DataFlowKernel) (opts: AppOptions) (f: 'A -> 'B -> 'R) : Arg<'A> -> Arg<'B> -> AppFuture<'R> =
        let app = prepare dfk opts f 2
        let name = fst app
        let del = AppDelegates.func2 f
        let build = functionCall name del false (fun a _ -> box (f (unbox<'A> a[0]) (unbox<'B> a[1])))
        fun (a: Arg<'A>) (b: Arg<'B>) -> submitWith<'R> dfk name (snd app) FunctionApp opts [| a.Slot; b.Slot |] build noJoin

    /// A function app of two arguments.
    let func2 dfk (f: 'A -> 'B -> 'R) = func2With dfk AppOptions.defaults f

    /// A function app of three arguments, with options.
    let func3With (dfk: DataFlowKernel) (opts: AppOptions) (f: 'A -> 'B -> 'C -> 'R) =
        let app = prepare dfk opts f 3
        let name = fst app
        let del = AppDelegates.func3 f
        let build =
            functionCall name del false (fun a _ -> box (f (unbox<'A> a[0]) (unbox<'B> a[1]) (unbox<'C> a[2])))
        fun (a: Arg<'A>) (b: Arg<'B>) (c: Arg<'C>) ->
            submitWith<'R> dfk name (snd app) FunctionApp opts [| a.Slot; b.Slot; c.Slot |] build noJoin

    /// A function app of three arguments.
    let func3 dfk (f: 'A -> 'B -> 'C -> 'R) = func3With dfk AppOptions.defaults f

    /// An asynchronous function app: the body gets a token that is cancelled when the task is.
    let asyncWith (dfk: DataFlowKernel) (opts: AppOptions) (f: 'A -> CancellationToken -> Task<'R>) : Arg<'A> -> AppFuture<'R> =
        let app = prepare dfk opts f 1
        let name = fst app
        let del = AppDelegates.async1 f
        let build = functionCall name del true (fun a ct -> box (f (unbox<'A> a[0]) ct))
        fun (a: Arg<'A>) -> submitWith<'R> dfk name (snd app) FunctionApp opts [| a.Slot |] build noJoin

    /// An asynchronous function app.
    let async dfk (f: 'A -> CancellationToken -> Task<'R>) = asyncWith dfk AppOptions.defaults f

    let internal stdPath (dfk: DataFlowKernel) (name: string) (id: TaskId) (which: string) (spec: StdSpec) =
        match spec with
        | Path p -> Append p
        | PathMode(p, "w") -> Truncate p
        | PathMode(p, ("a" | "a+")) -> Append p
        | PathMode(p, m) ->
            raise (BadStdStreamFile(sprintf "Bad %s mode '%s' for %s: use \"w\" (truncate) or \"a\" (append)" which m p, null))
        | Auto ->
            let dir = System.IO.Path.Combine(dfk.RunDir, "task_logs", sprintf "%04d" (id.Value / 10000))
            Directory.CreateDirectory dir |> ignore
            Append(System.IO.Path.Combine(dir, sprintf "task_%04d_%s.%s" id.Value name which))
        | Staged f -> Truncate(Staging.stdPath dfk f)

    /// How a shell app's call is built: `command` makes the command line from the resolved arguments (it runs
    /// where the executor builds the call: on the client, so that only the string travels).
    let internal shellCall (dfk: DataFlowKernel) (name: string) (opts: AppOptions) (command: obj[] -> string) =
        fun (id: TaskId) (args: obj[]) ->
            Shell
                { AppName = name
                  BuildCommand = fun () -> command args
                  Stdout = opts.Stdout |> Option.map (stdPath dfk name id "stdout")
                  Stderr = opts.Stderr |> Option.map (stdPath dfk name id "stderr")
                  Walltime = opts.Walltime
                  Outputs = opts.Outputs }

    /// A shell app with options: the function returns a command line, run by `/bin/bash`. The future's
    /// result is 0; a non-zero exit fails it with `BashExitFailure` carrying the code.
    let shellWith (dfk: DataFlowKernel) (opts: AppOptions) (f: 'A -> string) : Arg<'A> -> AppFuture<int> =
        let app = prepare dfk opts f 1
        let name = fst app
        let build = shellCall dfk name opts (fun args -> f (unbox<'A> args[0]))
        fun (a: Arg<'A>) -> submitWith<int> dfk name (snd app) ShellApp opts [| a.Slot |] build noJoin

    /// A shell app.
    let shell dfk (f: 'A -> string) = shellWith dfk AppOptions.defaults f

    /// A shell app of two arguments, with options.
    let shell2With (dfk: DataFlowKernel) (opts: AppOptions) (f: 'A -> 'B -> string) : Arg<'A> -> Arg<'B> -> AppFuture<int> =
        let app = prepare dfk opts f 2
        let name = fst app
        let build = shellCall dfk name opts (fun args -> f (unbox<'A> args[0]) (unbox<'B> args[1]))
        fun (a: Arg<'A>) (b: Arg<'B>) -> submitWith<int> dfk name (snd app) ShellApp opts [| a.Slot; b.Slot |] build noJoin

    let private oneFuture (v: obj) =
        match v with
        | :? AppFuture
        | :? Task -> Some([| v |], fun (rs: obj[]) -> rs[0])
        | _ -> None

    /// A join app: the body returns a future, and the app's future completes with that future's result.
    /// A failure of the inner future fails the app with `JoinError`. Bodies run on the internal executor.
    let join (dfk: DataFlowKernel) (f: 'A -> AppFuture<'R>) : Arg<'A> -> AppFuture<'R> =
        let opts = AppOptions.defaults
        let app = prepare dfk opts f 1
        let name = fst app
        let del = Func<'A, AppFuture<'R>>(f)
        let build = functionCall name del false (fun a _ -> box (f (unbox<'A> a[0])))
        fun (a: Arg<'A>) -> submitWith<'R> dfk name (snd app) JoinApp opts [| a.Slot |] build oneFuture

    /// A join app whose body returns several futures; the app's future completes with their results, in order.
    let joinAll (dfk: DataFlowKernel) (f: 'A -> seq<AppFuture<'R>>) : Arg<'A> -> AppFuture<'R[]> =
        let opts = AppOptions.defaults
        let app = prepare dfk opts f 1
        let name = fst app
        let del = Func<'A, seq<AppFuture<'R>>>(f)
        let build = functionCall name del false (fun a _ -> box (Array.ofSeq (f (unbox<'A> a[0]))))
        let shape (v: obj) =
            match v with
            | :? (AppFuture<'R>[]) as fs -> Some(fs |> Array.map box, fun (rs: obj[]) -> box (rs |> Array.map unbox<'R>))
            | _ -> None
        fun (a: Arg<'A>) -> submitWith<'R[]> dfk name (snd app) JoinApp opts [| a.Slot |] build shape

/// Waiting on futures from F#.
[<RequireQualifiedAccess; CompilationRepresentation(CompilationRepresentationFlags.ModuleSuffix)>]
module AppFuture =
    /// Blocks for the result (raises the task's exception).
    let get (f: AppFuture<'T>) = f.Result
    /// The result as a Task.
    let toTask (f: AppFuture<'T>) = f.Task
