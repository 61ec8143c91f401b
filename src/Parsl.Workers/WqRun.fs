/// `Parsl.Workers wq-run CALL RESULT`: the .NET task runner a Work Queue worker starts for one function app, in the
/// task's sandbox. It reads the serialized call, runs it as an HTEx worker runs a task (the same code), and writes
/// the result or the app's exception to RESULT; the executor fetches that file. The user's assemblies arrive
/// beside it as cached files named by their hash; the call names them relative to the sandbox.
module Parsl.Workers.WqRun

open System.IO
open Parsl.Executors.HighThroughput

/// Runs one call file; returns the process exit code (0 once a result is written, even for an app's exception).
let main (argv: string[]) : int =
    match argv with
    | [| _; callPath; resultPath |] ->
        let frame =
            use f = File.OpenRead callPath
            Frames.read f
        match frame with
        | None ->
            eprintfn "wq-run: %s holds no call" callPath
            65
        | Some bytes ->
            let (Run tasks) = Protocol.decodeToWorker bytes
            // Assembly paths in the call are relative to the sandbox; the loader needs them absolute.
            let absolute (t: WireTask) =
                match t.Body with
                | Call(fid, def, args) when not (isNull def) ->
                    let refs, body = Serialization.decodeDefinition def
                    let refs = refs |> List.map (fun r -> { r with Path = Path.GetFullPath r.Path })
                    { t with Body = Call(fid, Serialization.rewriteDefinition refs body, args) }
                | _ -> t
            use input = new MemoryStream(Frames.encode (Protocol.encodeToWorker (Run(List.map absolute tasks))))
            use output = File.Create resultPath
            Worker.run input output
    | _ ->
        eprintfn "usage: Parsl.Workers wq-run CALL RESULT"
        64
