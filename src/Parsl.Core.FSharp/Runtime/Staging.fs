namespace Parsl.Runtime

open System
open System.Threading
open System.Threading.Tasks
open Parsl
open Parsl.Core
open Parsl.Executors
open Parsl.Runtime
open Parsl.Node.Runtime
open Parsl.Data

/// An argument declared as an output of the call (`Arg.output`): the app writes it, and it is staged out.
type internal OutputArg = { Output: File }

/// Arguments that are files other calls produce (`Arg.data`, `Arg.files`): dependencies, staged in.
type internal DataArg = { Data: DataFuture[]; Single: bool }

/// Staging at submit time (Parsl's `DataManager`): files among an app's arguments are staged in, declared
/// outputs (and `File` stdout/stderr) staged out, by separate kernel tasks or inside the app's own task.
module internal Staging =
    /// Where staged files go: `Config.StagingDir`, or `data/` in the run directory.
    let directory (dfk: DataFlowKernel) =
        match dfk.Config.StagingDir with
        | Some d -> System.IO.Path.GetFullPath d
        | None -> System.IO.Path.Combine(dfk.RunDir, "data")

    let private provider (dfk: DataFlowKernel) (file: File) (input: bool) =
        let can = if input then StagingProvider.canStageIn file else StagingProvider.canStageOut file
        match dfk.Config.Staging |> List.tryFind can with
        | Some p -> p
        | None ->
            raise (
                StagingError(
                    file.Url,
                    sprintf "no staging provider in Config.Staging can stage %s a '%s' file (configured: %s)"
                        (if input then "in" else "out") file.Scheme
                        (String.Join(", ", dfk.Config.Staging |> List.map (sprintf "%A"))),
                    null)
            )

    let private modeOf p =
        match p with
        | NoOpFileStaging -> None
        | HttpStaging m
        | FtpStaging m
        | ZipStaging m -> Some m

    /// The local copy's path: the member's path inside the staging directory for zip files, else the file name.
    let localPath (dfk: DataFlowKernel) (file: File) =
        match file.Scheme with
        | "zip" ->
            match File.zipSplit file with
            | Ok(_, inner) -> System.IO.Path.Combine(directory dfk, inner)
            | Result.Error e -> raise e
        | _ -> System.IO.Path.Combine(directory dfk, file.FileName)

    let private stagingCall name (del: Delegate) (invoke: obj -> CancellationToken -> Task<File>) =
        fun (_: TaskId) (args: obj[]) ->
            Function
                { AppName = name
                  Function = del
                  Args = args
                  TakesCancellation = true
                  Invoke = fun a ct -> box (invoke a[0] ct)
                  Walltime = None }

    let private noJoin = fun (_: obj) -> None

    /// A separate stage-in task (Parsl's `_http_stage_in` and friends) on the app's executor.
    let private stageInTask (dfk: DataFlowKernel) (label: string) (s: StageIn) (after: AppFuture option) : AppFuture<File> =
        let name = sprintf "_%s_stage_in" (if s.File.Scheme = "https" then "http" else s.File.Scheme)
        let del = StagingTasks.stageInDelegate ()
        let slot =
            match after with
            | None -> Plain(box s)
            | Some parent -> Gather([| box parent |], fun _ -> box s)
        dfk.SubmitWith<File>(name, FunctionApp, [ label ], [| slot |], stagingCall name del (fun a ct -> StagingTasks.stageIn (unbox a) ct),
                             Resources.empty, noJoin, None)

    /// A separate stage-out task, after the app.
    let private stageOutTask (dfk: DataFlowKernel) (label: string) (s: StageOut) (after: AppFuture) : AppFuture<File> =
        let name = sprintf "_%s_stage_out" s.File.Scheme
        let del = StagingTasks.stageOutDelegate ()
        dfk.SubmitWith<File>(name, FunctionApp, [ label ], [| Gather([| box after |], fun _ -> box s) |],
                             stagingCall name del (fun a ct -> StagingTasks.stageOut (unbox a) ct), Resources.empty, noJoin, None)

    /// One staged argument: the futures it waits on and how to build its value from their results.
    type private Piece = { Futures: obj[]; Make: obj[] -> obj }

    let private submitStaged<'R>
        (dfk: DataFlowKernel) (name: string) (kind: AppKind) (labels: string list) (slots: ArgSlot[])
        (build: TaskId -> obj[] -> TaskBody) resources joinShape (memo: MemoSpec option) (stdFiles: File option * File option)
        : AppFuture<'R> =
        let label = dfk.ChooseExecutor(kind, labels)
        let isShell = kind = ShellApp
        let inTaskIns = ResizeArray<StageIn>()
        let inTaskOuts = ResizeArray<StageOut>()
        let outputs = ResizeArray<File>()
        let separateOuts = ResizeArray<File * StageOut>()

        let stageFile (file: File) (after: AppFuture option) : Piece =
            let p = provider dfk file true
            let waitOn = after |> Option.map box |> Option.toArray
            match modeOf p with
            | None -> { Futures = waitOn; Make = fun _ -> box file }
            | Some mode ->
                let s = { StageIn.File = file.CleanCopy(); Dest = localPath dfk file }
                if mode = InTask && not isShell then
                    inTaskIns.Add s
                    { Futures = waitOn; Make = fun _ -> box (file.WithLocalPath s.Dest) }
                else
                    { Futures = [| box (stageInTask dfk label s after) |]; Make = fun rs -> rs[0] }

        let stageItem (item: obj) : Piece option =
            match item with
            | :? File as f -> Some(stageFile f None)
            | :? DataFuture as d -> Some(stageFile d.File (Some d.Parent))
            | _ -> None

        let combine (pieces: Piece[]) (shape: File[] -> obj) =
            let futures = pieces |> Array.collect (fun p -> p.Futures)
            let make (rs: obj[]) =
                let mutable at = 0
                let files =
                    pieces
                    |> Array.map (fun p ->
                        let mine = Array.sub rs at p.Futures.Length
                        at <- at + p.Futures.Length
                        p.Make mine :?> File)
                shape files
            if futures.Length = 0 then Plain(make [||]) else Gather(futures, make)

        let stageSlot (slot: ArgSlot) =
            match slot with
            | Plain(:? OutputArg as o) ->
                let file = o.Output
                match modeOf (provider dfk file false) with
                | None ->
                    outputs.Add file
                    Plain(box file)
                | Some mode ->
                    let local = localPath dfk file
                    System.IO.Directory.CreateDirectory(System.IO.Path.GetDirectoryName local) |> ignore
                    let staged = file.WithLocalPath local
                    let s = { StageOut.File = staged; Source = local }
                    outputs.Add staged
                    if mode = InTask && not isShell then inTaskOuts.Add s else separateOuts.Add((staged, s))
                    Plain(box staged)
            | Plain(:? DataArg as d) ->
                let pieces = d.Data |> Array.map (fun df -> (stageItem (box df)).Value)
                combine pieces (fun fs -> if d.Single then box fs[0] else box fs)
            | Plain(:? File as f) -> combine [| stageFile f None |] (fun fs -> box fs[0])
            | Plain(:? (File[]) as fs) when fs.Length > 0 -> combine (fs |> Array.map (fun f -> stageFile f None)) box
            | Plain(:? (File list) as fs) when not fs.IsEmpty ->
                combine (fs |> List.map (fun f -> stageFile f None) |> Array.ofList) (fun xs -> box (List.ofArray xs))
            | s -> s

        let slots = slots |> Array.map stageSlot
        let stdOut (f: File option) =
            f
            |> Option.map (fun file ->
                match modeOf (provider dfk file false) with
                | None -> file, None
                | Some _ ->
                    let local = localPath dfk file
                    System.IO.Directory.CreateDirectory(System.IO.Path.GetDirectoryName local) |> ignore
                    let staged = file.WithLocalPath local
                    staged, Some { StageOut.File = staged; Source = local })
        let stdout = stdOut (fst stdFiles)
        let stderr = stdOut (snd stdFiles)

        let build =
            if inTaskIns.Count = 0 && inTaskOuts.Count = 0 then build
            else
                let ins = inTaskIns.ToArray()
                let outs = inTaskOuts.ToArray()
                fun id args ->
                    match build id args with
                    | Function call ->
                        let wrapped =
                            { StageIns = ins
                              StageOuts = outs
                              Inner = call.Function
                              InnerArgs = call.Args
                              InnerTakesCancellation = call.TakesCancellation }
                        Function
                            { call with
                                Function = StagingTasks.runShippedDelegate ()
                                Args = [| box wrapped |]
                                TakesCancellation = true
                                Invoke = fun _ ct -> box (StagingTasks.runInTask wrapped call.Invoke ct) }
                    | body -> body

        let future = dfk.SubmitWith<'R>(name, kind, [ label ], slots, build, resources, joinShape, memo)
        let dataFuture (file: File) (out: StageOut option) =
            match out with
            | None -> DataFuture(file, future)
            | Some s -> DataFuture(file, stageOutTask dfk label s future)
        let outs =
            [ for f in outputs ->
                  match separateOuts |> Seq.tryFind (fun (staged, _) -> obj.ReferenceEquals(staged, f)) with
                  | Some(_, s) -> dataFuture f (Some s)
                  | None -> DataFuture(f, future) ]
        future.SetFiles(
            outs,
            stdout |> Option.map (fun (f, s) -> dataFuture f s),
            stderr |> Option.map (fun (f, s) -> dataFuture f s))
        future

    /// Submits an app call with its staging. `stdFiles` are a shell app's `File` stdout and stderr.
    let submit<'R>
        (dfk: DataFlowKernel) (name: string) (kind: AppKind) (labels: string list) (slots: ArgSlot[])
        (build: TaskId -> obj[] -> TaskBody) resources joinShape (memo: MemoSpec option) (stdFiles: File option * File option)
        : AppFuture<'R> =
        let involvesFiles (slot: ArgSlot) =
            match slot with
            | Plain(:? OutputArg | :? DataArg | :? File | :? (File[]) | :? (File list)) -> true
            | _ -> false
        if Option.isNone (fst stdFiles) && Option.isNone (snd stdFiles) && not (Array.exists involvesFiles slots) then
            // Most calls involve no file: no staging bookkeeping at all.
            dfk.SubmitWith<'R>(name, kind, labels, slots, build, resources, joinShape, memo)
        else
            submitStaged<'R> dfk name kind labels slots build resources joinShape memo stdFiles

    /// The local path a shell app writes a `File` stdout/stderr to (the same one `submit` stages out).
    let stdPath (dfk: DataFlowKernel) (file: File) =
        match modeOf (provider dfk file false) with
        | None -> file.Filepath
        | Some _ -> localPath dfk file
