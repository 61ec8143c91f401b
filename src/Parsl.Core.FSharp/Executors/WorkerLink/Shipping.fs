namespace Parsl.Executors.WorkerLink

open System
open System.Collections.Concurrent
open System.IO
open System.Text.Json
open System.Threading
open Parsl
open Parsl.Executors
open Parsl.Executors.HighThroughput
open Parsl.Node.HighThroughput
open Parsl.Node

/// A file the .NET task runner needs on a CCTools worker, cached there by content: `CacheName` carries the hash.
type ShippedFile =
    { CacheName: string
      SandboxName: string
      LocalPath: string }

/// How a function app reaches a CCTools worker (Work Queue and TaskVine ship it the same way): the runner
/// (`Parsl.Workers.dll` and what it needs) and the user's assemblies as files cached by hash, the function's
/// definition pointing at the sandbox's copies (or at the client's paths with a shared file system), and the
/// result file read back into the app's value or its own exception.
[<Sealed>]
type RunnerShipping(executorKind: string, label: string, runnerDirectory: string, sharedFs: bool) =
    let functions = ConcurrentDictionary<Delegate, struct (int * byte[] * ShippedFile list)>(HashIdentity.Reference)
    let hashes = ConcurrentDictionary<string, string>()
    let shipped = ConcurrentDictionary<string, bool>()
    let mutable nextFunction = 0
    let opts = lazy (Serialization.options (fun n -> shipped.ContainsKey n))
    let short (h: string) = h.Substring(0, 16).ToLowerInvariant()

    /// The serializer options: the user's assemblies seen so far, FSharp.Core and the BCL.
    member _.SerializerOptions = opts.Value

    /// A file's content hash (computed once per path).
    member _.Hash(path: string) = hashes.GetOrAdd(path, Serialization.hashFile)

    /// The runner's files: Parsl.Workers.dll, its runtime config and every assembly its deps.json names.
    member this.RunnerFiles() : ShippedFile list =
        let dir = runnerDirectory
        let deps = Path.Combine(dir, "Parsl.Workers.deps.json")
        let names =
            [ "Parsl.Workers.dll"; "Parsl.Workers.runtimeconfig.json"; "Parsl.Workers.deps.json"
              if File.Exists deps then
                  use doc = JsonDocument.Parse(File.ReadAllText deps)
                  for target in doc.RootElement.GetProperty("targets").EnumerateObject() do
                      for lib in target.Value.EnumerateObject() do
                          match lib.Value.TryGetProperty "runtime" with
                          | true, rt ->
                              for asset in rt.EnumerateObject() do
                                  Path.GetFileName asset.Name
                          | _ -> ()
              else
                  // A published application has no deps file of the worker's own (only the application's): send
                  // every assembly beside it, so that FSharp.Core and the rest are on the worker (cached once).
                  for f in Directory.GetFiles(dir, "*.dll") do
                      Path.GetFileName f ]
            |> List.distinct
            |> List.filter (fun n -> File.Exists(Path.Combine(dir, n)))
        [ for n in names ->
            let p = Path.Combine(dir, n)
            { CacheName = sprintf "parsl-runner-%s-%s" (short (this.Hash p)) n; SandboxName = n; LocalPath = p } ]

    /// The function's id, its definition (assembly paths pointed at the sandbox's copies unless shared) and the
    /// assemblies to send with it. Raises `SerializationError` for code compiled in memory.
    member this.Define(appName: string, f: Delegate) : struct (int * byte[] * ShippedFile list) =
        match functions.TryGetValue f with
        | true, d -> d
        | _ ->
            if HighThroughputExecutor.CompiledInMemory 3 (box f) then
                raise (
                    SerializationError(
                        sprintf "app %s cannot run on %s '%s': its function was compiled in memory (a dotnet fsi script or Reflection.Emit), so workers cannot load it; define it in a compiled project, or run the app on a ThreadPoolExecutor" appName executorKind label,
                        null))
            let asms =
                AppDomain.CurrentDomain.GetAssemblies()
                |> Seq.filter (fun a -> not (Serialization.isProvided a))
                |> Seq.map (fun a ->
                    let h = this.Hash a.Location
                    shipped[a.GetName().Name] <- true
                    a, h)
                |> List.ofSeq
            let refs =
                [ for a, h in asms ->
                    { FullName = a.FullName
                      Path = (if sharedFs then a.Location else sprintf "parsl-asm-%s.dll" (short h))
                      Hash = h } ]
            let inputs =
                if sharedFs then []
                else
                    // One file per content: an assembly loaded twice (two load contexts) is sent once.
                    [ for a, h in List.distinctBy snd asms ->
                        let n = sprintf "parsl-asm-%s.dll" (short h)
                        { CacheName = n; SandboxName = n; LocalPath = a.Location } ]
            let def = Serialization.encodeDefinition opts.Value refs f
            let d = struct (Interlocked.Increment &nextFunction, def, inputs)
            functions.GetOrAdd(f, d)

    /// Writes the call file the runner reads (`wq-run CALL RESULT`, or the library's sandbox).
    member _.WriteCall(path: string, key: int64, appName: string, fid: int, def: byte[], args: obj[], walltime: TimeSpan option) =
        let wire =
            { Key = key
              AppName = appName
              Body = Call(fid, def, Serialization.serializeArgs opts.Value args, (match walltime with Some w -> max 1L (int64 w.TotalMilliseconds) | None -> -1L))
              Resources = [] }
        use f = File.Create path
        Frames.write f (Protocol.encodeToWorker (Run [ wire ]))

    /// The app's exception as itself when its type loads here (Parsl #1703: not a wrapper), else `RemoteException`.
    static member Rebuild(typeName: string, message: string, stack: string, data: string list) : exn =
        match typeName, data with
        | "Parsl.BashExitFailure", [ app; code ] -> BashExitFailure(app, int code)
        | "Parsl.AppTimeout", _ -> AppTimeout(message)
        | "Parsl.MissingOutputs", outputs -> MissingOutputs("the files were not created", outputs)
        | _ ->
            let t =
                AppDomain.CurrentDomain.GetAssemblies()
                |> Seq.tryPick (fun a -> match a.GetType(typeName, false) with null -> None | t -> Some t)
            let made =
                match t with
                | Some t when typeof<exn>.IsAssignableFrom t ->
                    match t.GetConstructor [| typeof<string> |] with
                    | null -> None
                    | c -> (try Some(c.Invoke [| box message |] :?> exn) with _ -> None)
                | _ -> None
            match made with
            | Some e ->
                e.Data["RemoteStackTrace"] <- stack
                e
            | None -> RemoteException(typeName, message, stack) :> exn

    /// Reads a runner's result file: the app's value or its own exception; None when the file is not there.
    member _.ReadResult(appName: string, resultPath: string) : Result<obj, exn> option =
        if not (File.Exists resultPath) then None
        else
            let frame =
                use f = File.OpenRead resultPath
                Frames.read f
            match frame |> Option.map Protocol.decodeFromWorker with
            | Some(Done [ r ]) ->
                match r.Outcome with
                | Value bytes ->
                    try Some(Ok(Serialization.deserialize opts.Value bytes))
                    with ex -> Some(Error(SerializationError(sprintf "the result of app %s could not be deserialized on the client: %s" appName ex.Message, ex)))
                | Raised(t, m, st, data) -> Some(Error(RunnerShipping.Rebuild(t, m, st, data)))
                | Unserializable m -> Some(Error(SerializationError(m, null)))
                | WorkerDied(w, h) -> Some(Error(WorkerLost(w, h)))
            | _ -> Some(Error(SerializationError(sprintf "the result file of app %s is not a runner's result" appName, null)))
