namespace Parsl.Node.Runtime

open System
open System.Threading
open System.Threading.Tasks
open Parsl
open Parsl.Data

/// A file to copy into the task's file system before an app runs: plain data, so it can travel to a worker.
type StageIn =
    { File: File
      /// Where the copy goes.
      Dest: string }

/// A file to copy out of the task's file system after an app ran.
type StageOut =
    { File: File
      /// Where the app wrote it.
      Source: string }

/// An app call's body with in-task staging around it (plain data apart from the user's delegate).
type InTaskCall =
    { StageIns: StageIn[]
      StageOuts: StageOut[]
      /// The user's function and its arguments (a trailing CancellationToken is supplied when it takes one).
      Inner: Delegate
      InnerArgs: obj[]
      InnerTakesCancellation: bool }

/// The transfers a staging task or an in-task wrapper performs.
[<RequireQualifiedAccess>]
module StagingTasks =
    /// Awaits a body's result when it is a Task, giving its value (null for a plain Task).
    let awaitValue (v: obj) : Task<obj> = TaskResults.await v

    /// Copies one file in; the result is the file with its local path.
    let stageIn (s: StageIn) (cancellation: CancellationToken) : Task<File> =
        task {
            match s.File.Scheme with
            | "http"
            | "https" -> do! StagingIO.httpGet s.File.Url s.Dest cancellation
            | "ftp" -> do! StagingIO.ftpGet s.File.Url s.Dest cancellation
            | "zip" ->
                match File.zipSplit s.File with
                | Ok(archive, inner) -> do! StagingIO.zipExtract s.File.Url archive inner s.Dest cancellation
                | Result.Error e -> raise e
            | other -> raise (StagingError(s.File.Url, sprintf "no transfer for the scheme '%s'" other, null))
            return s.File.WithLocalPath s.Dest
        }

    /// Copies one file out; the result is the file.
    let stageOut (s: StageOut) (cancellation: CancellationToken) : Task<File> =
        task {
            match s.File.Scheme with
            | "zip" ->
                match File.zipSplit s.File with
                | Ok(archive, inner) -> do! StagingIO.zipAdd s.File.Url archive inner s.Source cancellation
                | Result.Error e -> raise e
            | "file" -> ()
            | other -> raise (StagingError(s.File.Url, sprintf "no transfer out for the scheme '%s'" other, null))
            return s.File
        }

    /// Runs an app body with its in-task staging: inputs copied in first, outputs copied out after it returns.
    let runInTask (call: InTaskCall) (invoke: obj[] -> CancellationToken -> obj) (cancellation: CancellationToken) : Task<obj> =
        task {
            for s in call.StageIns do
                let! _ = stageIn s cancellation
                ()
            for o in call.StageOuts do
                System.IO.Directory.CreateDirectory(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath o.Source)) |> ignore
            let! v = awaitValue (invoke call.InnerArgs cancellation)
            for o in call.StageOuts do
                let! _ = stageOut o cancellation
                ()
            return v
        }

    /// The shippable entry point of an in-task staged call: the user's delegate is called with `DynamicInvoke`
    /// (executors in other processes call this; the thread pool uses the direct invoker).
    let runShipped (call: InTaskCall) (cancellation: CancellationToken) : Task<obj> =
        let invoke (args: obj[]) (ct: CancellationToken) =
            call.Inner.DynamicInvoke(if call.InnerTakesCancellation then Array.append args [| box ct |] else args)
        runInTask call invoke cancellation

    /// The delegate a separate stage-in task ships (made here, so a worker rebuilds it without the kernel).
    let stageInDelegate () = Func<StageIn, CancellationToken, Task<File>>(fun s ct -> stageIn s ct)

    /// The delegate a separate stage-out task ships.
    let stageOutDelegate () = Func<StageOut, CancellationToken, Task<File>>(fun s ct -> stageOut s ct)

    /// The delegate an in-task staged call ships.
    let runShippedDelegate () = Func<InTaskCall, CancellationToken, Task<obj>>(fun c ct -> runShipped c ct)
